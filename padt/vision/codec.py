"""The id space of visual reference tokens (VRTs) for one batch.

Every image contributes one VRT per cell of its merged grid (28 px for Qwen2.5-VL). Ids below ``vocab_size``
(V) are text; ids from V on are VRTs. Two numberings exist:

* **local** id ``V + k``: ``k`` counts the patches of *one sample's* images, in order (image 0 of the sample
  first, raster order inside an image: ``k = row * W' + col``). This is what text renders as ``<|VRT_k|>``
  and what does not change when the sample moves to another batch.
* **global** id ``V + g``: ``g`` counts the patches of *all* images in the batch. The model only sees global
  ids; they index the rows of the batch's prototype matrix ``P``.

The processor concatenates images in sample order, so a sample's images are contiguous in the global order and
``g = k + first_patch_of_sample``.

Two orders of the high-resolution (14-px) patches matter to the decoder:

* ``"raster"`` (ours): merge-block order, the order the processor emits patches in: merged cells in raster
  order, and inside each the ``merge x merge`` sub-patches in raster order.
* ``"official"``: the vision tower's window-attention order, which the official PaDT implementation feeds to
  its decoder unchanged while assembling masks as if it were raster (PADT_REFERENCE §1.5). Models trained that
  way need the same mapping to reproduce their outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.vision_utils import get_vision_window_index

PATCH_ORDERS = ("raster", "official")


@dataclass(frozen=True)
class VRTCodec:
    """VRT ids, masks and patch positions for one batch.

    Attributes:
        vocab_size: V, the number of text-embedding rows; the first VRT id.
        merged_hw: per image, the merged grid (H', W').
        image_sample: per image, the batch row (sample) it belongs to; non-decreasing.
        num_samples: batch size B (samples may have no image).
    """

    vocab_size: int
    merged_hw: tuple[tuple[int, int], ...]
    image_sample: tuple[int, ...]
    num_samples: int

    def __post_init__(self) -> None:
        if len(self.merged_hw) != len(self.image_sample):
            raise ValueError("merged_hw and image_sample must have one entry per image")
        if any(b < 0 or b >= self.num_samples for b in self.image_sample):
            raise ValueError(f"image_sample {self.image_sample} names a sample outside 0..{self.num_samples - 1}")
        if list(self.image_sample) != sorted(self.image_sample):
            raise ValueError("images must be ordered by sample (the processor's order)")

    @classmethod
    def from_grid_thw(
        cls,
        vocab_size: int,
        image_grid_thw: torch.Tensor,
        merge_size: int,
        image_sample: list[int] | tuple[int, ...] | torch.Tensor,
        num_samples: int,
    ) -> VRTCodec:
        """Build from the processor's ``image_grid_thw`` [I, 3] (t, H, W on the ViT patch grid)."""
        grid = image_grid_thw.tolist() if isinstance(image_grid_thw, torch.Tensor) else image_grid_thw
        if any(int(t) != 1 for t, _, _ in grid):
            raise ValueError("VRTs are defined for still images (grid t = 1); videos are not supported")
        merged = tuple((int(h) // merge_size, int(w) // merge_size) for _, h, w in grid)
        owners = image_sample.tolist() if isinstance(image_sample, torch.Tensor) else list(image_sample)
        return cls(vocab_size, merged, tuple(int(b) for b in owners), num_samples)

    # ---- counts and offsets -------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return len(self.merged_hw)

    @property
    def patch_counts(self) -> list[int]:
        """Number of VRTs of each image."""
        return [h * w for h, w in self.merged_hw]

    @property
    def num_vrts(self) -> int:
        """P, the total number of VRTs in the batch (rows of the prototype matrix)."""
        return sum(self.patch_counts)

    @property
    def image_offsets(self) -> list[int]:
        """Global index of each image's first VRT."""
        offsets, total = [], 0
        for count in self.patch_counts:
            offsets.append(total)
            total += count
        return offsets

    def sample_spans(self) -> list[tuple[int, int]]:
        """Per sample, the global half-open range [start, end) of its VRTs (empty if it has no image)."""
        per_sample = [0] * self.num_samples
        for b, count in zip(self.image_sample, self.patch_counts):
            per_sample[b] += count
        spans, cursor = [], 0
        for count in per_sample:  # images are ordered by sample, so a sample's VRTs are contiguous
            spans.append((cursor, cursor + count))
            cursor += count
        return spans

    # ---- ids ---------------------------------------------------------------------------------------------
    def is_vrt(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.vocab_size

    def to_global(self, local_ids: torch.Tensor) -> torch.Tensor:
        """Map local ids [B, T] to global ids; text ids pass through.

        Raises ``ValueError`` naming the sample and the token when a local VRT index is beyond that sample's
        patches (for example an answer that names a patch the image does not have).
        """
        return self._shift(local_ids, +1)

    def to_local(self, global_ids: torch.Tensor) -> torch.Tensor:
        """Map global ids [B, T] to local ids; a VRT of another sample's image raises ``ValueError``."""
        return self._shift(global_ids, -1)

    def _shift(self, ids: torch.Tensor, direction: int) -> torch.Tensor:
        if ids.dim() != 2 or ids.shape[0] != self.num_samples:
            raise ValueError(f"expected ids of shape [{self.num_samples}, T], got {tuple(ids.shape)}")
        spans = torch.tensor(self.sample_spans(), dtype=torch.long, device=ids.device).view(-1, 2)
        start, end = spans[:, :1], spans[:, 1:]
        vrt = ids >= self.vocab_size
        index = ids - self.vocab_size
        if direction > 0:
            bad = vrt & (index >= end - start)
            shifted = index + start
        else:
            bad = vrt & ((index < start) | (index >= end))
            shifted = index - start
        if bad.any():
            b, t = (int(x) for x in bad.nonzero()[0])
            count = int(end[b] - start[b])
            kind = "local" if direction > 0 else "global"
            raise ValueError(
                f"sample {b}, position {t}: {kind} VRT index {int(index[b, t])} does not name a patch of "
                f"this sample's image(s), which have {count} patches (valid local indices 0..{count - 1})"
            )
        return torch.where(vrt, shifted + self.vocab_size, ids)

    def logit_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool [B, P]: True where sample ``b`` may name VRT ``p`` (its own images' patches only)."""
        mask = torch.zeros(self.num_samples, self.num_vrts, dtype=torch.bool, device=device)
        for b, (start, end) in enumerate(self.sample_spans()):
            mask[b, start:end] = True
        return mask

    # ---- patch positions ---------------------------------------------------------------------------------
    def locate(self, global_index: int) -> tuple[int, int, int]:
        """(image, row, col) on the merged grid of a global VRT index (0-based, without V)."""
        for image, (offset, count) in enumerate(zip(self.image_offsets, self.patch_counts)):
            if offset <= global_index < offset + count:
                row, col = divmod(global_index - offset, self.merged_hw[image][1])
                return image, row, col
        raise ValueError(f"global VRT index {global_index} is outside 0..{self.num_vrts - 1}")

    def local_to_image_patch(self, sample: int, local_index: int) -> tuple[int, int]:
        """(image, patch index inside that image) of a sample's local VRT index."""
        image, row, col = self.locate(self.sample_spans()[sample][0] + local_index)
        return image, row * self.merged_hw[image][1] + col


def merged_cell_centres(merged_hw, device: torch.device | str | None = None) -> torch.Tensor:
    """(y, x) centre of every merged cell, normalised to [0, 1] by its image's grid: [ΣH'·W', 2].

    Images one after another, cells in raster order (the order of VRTs and prototypes).
    """
    parts = []
    for h, w in merged_hw:
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        parts.append(torch.stack(((rows.flatten() + 0.5) / h, (cols.flatten() + 0.5) / w), dim=-1))
    return torch.cat(parts).to(device) if parts else torch.zeros(0, 2, device=device)


def patch_to_rc(patch: int | torch.Tensor, merged_w: int):
    """Raster patch index on the merged grid to (row, col)."""
    return patch // merged_w, patch % merged_w


def rc_to_patch(row, col, merged_w: int):
    """(row, col) on the merged grid to the raster patch index ``row * W' + col``."""
    return row * merged_w + col


def merge_block_positions(grid_hw: tuple[int, int], merge_size: int) -> torch.Tensor:
    """(row, col) on the ViT patch grid of each patch in the processor's merge-block order: LongTensor [H*W, 2].

    Merged cells come in raster order; inside each, the ``merge x merge`` sub-patches in raster order.
    """
    h, w = grid_hw
    hm, wm = h // merge_size, w // merge_size
    rows = torch.arange(hm).view(hm, 1, 1, 1) * merge_size + torch.arange(merge_size).view(1, 1, merge_size, 1)
    cols = torch.arange(wm).view(1, wm, 1, 1) * merge_size + torch.arange(merge_size).view(1, 1, 1, merge_size)
    rows, cols = torch.broadcast_tensors(rows, cols)
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)


def window_order(
    grid_thw: torch.Tensor, merge_size: int, window_size: int, patch_size: int
) -> torch.Tensor:
    """Permutation of merged cells into the vision tower's window order, for a batch of images.

    Returns LongTensor [ΣN'] with ``window_cells = merge_block_cells[order]``; apply it to merge-block-ordered
    patches as ``patches.view(-1, merge**2, C)[order].flatten(0, 1)``. It is the tower's own rule
    (``transformers.vision_utils.get_vision_window_index``), so it always matches the loaded vision tower.
    """
    order, _ = get_vision_window_index(
        grid_thw.cpu(), spatial_merge_size=merge_size, window_size=window_size, patch_size=patch_size
    )
    return order.long()


def high_res_layout(
    grid_thw: torch.Tensor, merge_size: int, window_size: int, patch_size: int, patch_order: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """How the decoder sees a batch's high-resolution patches.

    Returns ``(permutation, token_rc)``:
      * ``permutation`` LongTensor [ΣN]: indices into the merge-block-ordered patches of all images giving the
        order the decoder consumes them in;
      * ``token_rc`` LongTensor [ΣN, 2]: for each consumed token, the (row, col) on its image's ViT patch grid
        where the decoder places that token's sub-mask.

    ``"raster"`` keeps merge-block order and true positions. ``"official"`` uses window order but places token
    ``p`` of an image at ``(p // W, p % W)``, as the official implementation does.
    """
    if patch_order not in PATCH_ORDERS:
        raise ValueError(f"patch_order must be one of {PATCH_ORDERS}, got {patch_order!r}")
    unit = merge_size * merge_size
    counts = [int(t * h * w) for t, h, w in grid_thw.tolist()]
    positions = [merge_block_positions((int(h), int(w)), merge_size) for _, h, w in grid_thw.tolist()]
    if patch_order == "raster":
        return torch.arange(sum(counts)), torch.cat(positions) if positions else torch.zeros(0, 2, dtype=torch.long)
    cells = window_order(grid_thw, merge_size, window_size, patch_size)
    permutation = (cells.view(-1, 1) * unit + torch.arange(unit).view(1, -1)).reshape(-1)
    token_rc = []
    for (_, h, w), count in zip(grid_thw.tolist(), counts):
        p = torch.arange(count)
        token_rc.append(torch.stack([p // int(w), p % int(w)], dim=-1))
    return permutation, torch.cat(token_rc) if token_rc else torch.zeros(0, 2, dtype=torch.long)
