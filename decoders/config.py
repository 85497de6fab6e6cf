"""Configuration of the PaDT decoder (the module that turns a run of VRT states into box, score and mask).

The defaults are those of the released PaDT checkpoints on Qwen2.5-VL-3B: the decoder works at the width of
the vision tower (1280, 16 heads of 80) so that the tower's raw pre-merger features can be added into its
high-resolution memory and the tower's 2-D rotary embedding applies to its attention heads unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "auto")

# Each mask up-scaling stage splits one embedding into a 2x2 block of sub-pixel embeddings.
MASK_SPLIT = 2


@dataclass
class PaDTDecoderConfig:
    """Hyper-parameters of :class:`padt.decoders.PaDTDecoder`.

    Args:
        hidden_size: width C of the decoder. Must equal the vision tower's hidden size, because raw pre-merger
            patch features (C-dimensional) are added into the high-resolution memory.
        num_attention_heads: heads of every attention layer. ``hidden_size / num_attention_heads`` must equal
            the vision tower's head dim, since the tower's rotary cos/sin (of that width) rotate our keys.
        intermediate_size: width of the query MLP inside each two-way block.
        llm_hidden_size: width D of the language model; VRT states and prototypes come in at this width.
        spatial_merge_size: side m of the vision merger; one low-res (LLM) token covers m x m patches.
        num_low_res_blocks: two-way blocks run on the low-res (merged) memory.
        num_high_res_blocks: two-way blocks run afterwards on the high-res (pre-merger) memory.
        mask_head: build the mask branch. When False there are no mask modules and no mask outputs.
        mask_upscale_stages: number of 2x2 sub-pixel splits of each high-res token; the mask has
            ``s = 2 ** mask_upscale_stages`` mask pixels per patch side and embeddings of
            ``hidden_size / 4 ** mask_upscale_stages`` channels.
        rms_norm_eps: epsilon of every RMSNorm.
        memory_position_encoding: add a fixed 2-D sinusoidal encoding of each memory token's normalised cell
            centre to the low- and high-res memory. Off in the reference (and needed off for its weights): there,
            positions enter only through the rotary PE of attention scores, so attended *values* carry no
            coordinates and the box head learns to regress them slowly. On, boxes train several times faster; the
            tiny demo model uses it. Needs the raster patch order.
        vrt_patch_features: add to each VRT query the low-res memory row of the patch that VRT names (its
            projected prototype, plus its position encoding when ``memory_position_encoding`` is on), so that every
            query knows where its patch is without having to find it by attention. Off in the reference (and
            needed off for its weights), where a VRT query is the language model's state alone. On, callers must
            pass the VRTs' patch rows to the decoder; the tiny demo model uses it.
        initializer_range: standard deviation of the normal init of every Linear and Embedding. 0.02 is the
            reference's choice for width 1280; narrow decoders learn much faster with about ``1/sqrt(width)``
            (the tiny model uses 0.125 at width 64).
        attn_implementation: ``"sdpa"`` (everywhere), ``"flash_attention_2"`` (varlen flash-attention; needs the
            ``flash_attn`` package, CUDA and fp16/bf16) or ``"auto"`` (flash when usable, sdpa otherwise).
    """

    hidden_size: int = 1280
    num_attention_heads: int = 16
    intermediate_size: int = 3420
    llm_hidden_size: int = 2048
    spatial_merge_size: int = 2
    num_low_res_blocks: int = 1
    num_high_res_blocks: int = 2
    mask_head: bool = True
    mask_upscale_stages: int = 2
    rms_norm_eps: float = 1e-6
    memory_position_encoding: bool = False
    vrt_patch_features: bool = False
    initializer_range: float = 0.02
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "llm_hidden_size",
            "spatial_merge_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PaDTDecoderConfig.{name} must be a positive integer, got {value!r}")
        for name in ("num_low_res_blocks", "num_high_res_blocks", "mask_upscale_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"PaDTDecoderConfig.{name} must be a non-negative integer, got {value!r}")
        if self.num_low_res_blocks + self.num_high_res_blocks < 1:
            raise ValueError("PaDTDecoderConfig needs at least one two-way block (low-res or high-res)")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"head_dim = hidden_size / num_attention_heads = {self.head_dim} must be even "
                "(rotary embeddings rotate pairs of channels)"
            )
        if self.mask_head:
            if self.mask_upscale_stages < 1:
                raise ValueError("mask_upscale_stages must be >= 1 when mask_head is True")
            split_area = MASK_SPLIT**2
            if self.hidden_size % split_area**self.mask_upscale_stages != 0:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) must be divisible by {split_area}**mask_upscale_stages "
                    f"= {split_area**self.mask_upscale_stages}: every up-scaling stage splits the channels "
                    f"into a {MASK_SPLIT}x{MASK_SPLIT} block of sub-pixels"
                )
        if not isinstance(self.rms_norm_eps, (int, float)) or self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps must be a positive number, got {self.rms_norm_eps!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {self.attn_implementation!r}"
            )

    @property
    def head_dim(self) -> int:
        """Channels per attention head; equals the vision tower's head dim (rotary cos/sin width)."""
        return self.hidden_size // self.num_attention_heads

    @property
    def mask_subpixels(self) -> int:
        """s: mask pixels per patch side (``2 ** mask_upscale_stages``); 0 without a mask head."""
        return MASK_SPLIT**self.mask_upscale_stages if self.mask_head else 0

    @property
    def mask_embedding_dim(self) -> int:
        """Channels of each sub-pixel embedding and of the mask token's output; 0 without a mask head."""
        return self.hidden_size // self.mask_subpixels**2 if self.mask_head else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of all fields (the model config embeds this)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PaDTDecoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error so that typos do not pass silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PaDTDecoderConfig keys: {unknown}; known keys: {sorted(known)}")
        return cls(**data)
