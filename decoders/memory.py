"""Inputs and outputs of the PaDT decoder, and helpers for the grid positions of high-res tokens.

Coordinates follow :mod:`padt.vision.geometry`: a "patch" is one vision-tower token on an image grid of H x W
patches (H, W = ``grid_thw[1:]``); a merged cell is ``m x m`` patches (m = ``spatial_merge_size``). Mask logits
come out on a grid of ``H*s x W*s`` mask pixels, ``s x s`` per patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import RotaryPE


@dataclass
class DecoderMemory:
    """Vision-side inputs for a batch of I images, each image's rows packed one image after another.

    Attributes:
        low_res: [sum N'_i, D] visual prototypes (one per merged cell / VRT), at LLM width D.
        low_pe: rotary (cos, sin), each [sum N'_i, head_dim], for the low-res rows.
        high_res: [sum N_i, C] pre-merger vision features, N_i = N'_i * m**2. Rows ``j*m**2 ... j*m**2 + m**2 - 1``
            of an image belong to its low-res row j (merge-block order), because the decoder adds low-res
            row j to each of them.
        high_pe: rotary (cos, sin), each [sum N_i, head_dim], for the high-res rows.
        grid_hw: LongTensor [I, 2], (H_i, W_i) of each image on the patch grid.
        token_rc: LongTensor [sum N_i, 2], (row, col) on its image's patch grid where each high-res row's
            s x s sub-mask is written. Together the rows of one image must cover its grid exactly once.
    """

    low_res: torch.Tensor
    low_pe: RotaryPE
    high_res: torch.Tensor
    high_pe: RotaryPE
    grid_hw: torch.Tensor
    token_rc: torch.Tensor

    def __post_init__(self) -> None:
        self.low_pe = RotaryPE(*self.low_pe)
        self.high_pe = RotaryPE(*self.high_pe)

    @property
    def num_images(self) -> int:
        return self.grid_hw.shape[0]

    def validate(self, spatial_merge_size: int, head_dim: int, hidden_size: int, llm_hidden_size: int) -> None:
        """Raise ValueError when the shapes disagree with each other or with the decoder's widths."""
        if self.grid_hw.ndim != 2 or self.grid_hw.shape[1] != 2:
            raise ValueError(f"grid_hw must be [I, 2], got {tuple(self.grid_hw.shape)}")
        merge_area = spatial_merge_size**2
        if bool((self.grid_hw % spatial_merge_size != 0).any()):
            raise ValueError(f"every grid side must be a multiple of spatial_merge_size={spatial_merge_size}")
        n_high = int((self.grid_hw[:, 0] * self.grid_hw[:, 1]).sum().item())
        n_low = n_high // merge_area
        expected = {
            "low_res": (n_low, llm_hidden_size),
            "low_pe.cos": (n_low, head_dim),
            "low_pe.sin": (n_low, head_dim),
            "high_res": (n_high, hidden_size),
            "high_pe.cos": (n_high, head_dim),
            "high_pe.sin": (n_high, head_dim),
            "token_rc": (n_high, 2),
        }
        actual = {
            "low_res": self.low_res.shape,
            "low_pe.cos": self.low_pe.cos.shape,
            "low_pe.sin": self.low_pe.sin.shape,
            "high_res": self.high_res.shape,
            "high_pe.cos": self.high_pe.cos.shape,
            "high_pe.sin": self.high_pe.sin.shape,
            "token_rc": self.token_rc.shape,
        }
        for name, shape in expected.items():
            if tuple(actual[name]) != shape:
                raise ValueError(
                    f"DecoderMemory.{name} has shape {tuple(actual[name])}, expected {shape} "
                    f"(from grid_hw={self.grid_hw.tolist()}, merge {spatial_merge_size})"
                )


@dataclass
class DecoderOutput:
    """What the decoder predicts for K objects.

    Attributes:
        boxes: [K, 4] (cx, cy, w, h), each in [0, 1] relative to the processed (resized) image.
        score_logits: [K] confidence logits; ``sigmoid`` gives the score.
        mask_logits: [K, max_i(H_i)*s, max_i(W_i)*s] mask logits on the image's patch grid at s mask pixels
            per patch side, zero-padded at the bottom/right to the largest image in the memory; None when the
            decoder has no mask head.
        mask_hw: LongTensor [K, 2], the valid (H*s, W*s) of each object's mask (its image's size); zeros
            without a mask head.
    """

    boxes: torch.Tensor
    score_logits: torch.Tensor
    mask_logits: torch.Tensor | None
    mask_hw: torch.Tensor


def image_ranges(counts: torch.Tensor, object_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of each object's copy of its image's rows.

    Args:
        counts: LongTensor [I], rows per image in a packed per-image tensor.
        object_image: LongTensor [K], image of each object.

    Returns:
        index: LongTensor [sum_k counts[object_image[k]]], rows of the per-image tensor, object after object.
        lengths: LongTensor [K], rows per object.
    """
    starts = F.pad(counts.cumsum(0), (1, 0))[:-1]
    lengths = counts[object_image]
    obj_cu = F.pad(lengths.cumsum(0), (1, 0))[:-1]
    obj_of_row = torch.repeat_interleave(torch.arange(lengths.numel(), device=counts.device), lengths)
    within = torch.arange(obj_of_row.numel(), device=counts.device) - obj_cu[obj_of_row]
    return starts[object_image][obj_of_row] + within, lengths


def first_subpatch_pe(high_pe: RotaryPE, spatial_merge_size: int) -> RotaryPE:
    """Low-res rotary PE as the official decoder takes it: the PE of the first of the m x m rows of each cell.

    ``high_pe`` must be in merge-block order ([sum N_i, head_dim] each); returns [sum N_i / m**2, head_dim].
    """
    area = spatial_merge_size**2
    cos, sin = high_pe
    return RotaryPE(
        cos.reshape(-1, area, cos.shape[-1])[:, 0].contiguous(),
        sin.reshape(-1, area, sin.shape[-1])[:, 0].contiguous(),
    )
