"""The id space of visual reference tokens (VRTs) for one batch.

Every image contributes one VRT per cell of its merged grid (:mod:`padt.vision.geometry`). Ids below ``vocab_size``
(V) are text; ids from V on are VRTs. Two numberings exist:

* **local** id ``V + k``: ``k`` counts the patches of *one sample's* images, in order (image 0 of the sample
  first, raster order inside an image: ``k = row * W' + col``). This is what text renders as ``<|VRT_k|>``
  and what does not change when the sample moves to another batch.
* **global** id ``V + g``: ``g`` counts the patches of *all* images in the batch. The model only sees global
  ids; they index the rows of the batch's prototype matrix ``P``.

The processor concatenates images in sample order, so a sample's images are contiguous in the global order and
``g = k + first_patch_of_sample``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from padt.vision.geometry import PatchGrid, raster_rc


@dataclass(frozen=True)
class VRTCodec:
    """VRT ids, masks and patch positions for one batch.

    Attributes:
        vocab_size: V, the number of text-embedding rows; the first VRT id.
        merged_hw: per image, the merged grid (H', W').
        sample_of_image: per image, the batch row (sample) it belongs to; non-decreasing.
        num_samples: batch size B (samples may have no image).
    """

    vocab_size: int
    merged_hw: tuple[tuple[int, int], ...]
    sample_of_image: tuple[int, ...]
    num_samples: int

    def __post_init__(self) -> None:
        if len(self.merged_hw) != len(self.sample_of_image):
            raise ValueError("merged_hw and sample_of_image must have one entry per image")
        if any(b < 0 or b >= self.num_samples for b in self.sample_of_image):
            raise ValueError(f"sample_of_image {self.sample_of_image} names a sample outside 0..{self.num_samples - 1}")
        if list(self.sample_of_image) != sorted(self.sample_of_image):
            raise ValueError("images must be ordered by sample (the processor's order)")

    @classmethod
    def from_grid_thw(
        cls,
        vocab_size: int,
        image_grid_thw: torch.Tensor,
        merge_size: int,
        sample_of_image: list[int] | tuple[int, ...] | torch.Tensor,
        num_samples: int,
    ) -> VRTCodec:
        """Build from the processor's ``image_grid_thw`` [I, 3] (t, H, W on the ViT patch grid)."""
        rows = image_grid_thw.tolist() if isinstance(image_grid_thw, torch.Tensor) else image_grid_thw
        merged = tuple(PatchGrid.from_grid_thw(row, merge_size).merged_hw for row in rows)
        samples = sample_of_image.tolist() if isinstance(sample_of_image, torch.Tensor) else list(sample_of_image)
        return cls(vocab_size, merged, tuple(int(b) for b in samples), num_samples)

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
        for b, count in zip(self.sample_of_image, self.patch_counts):
            per_sample[b] += count
        spans, cursor = [], 0
        for count in per_sample:  # images are ordered by sample, so a sample's VRTs are contiguous
            spans.append((cursor, cursor + count))
            cursor += count
        return spans

    def first_images(self) -> list[int | None]:
        """Per sample, the batch index of its first image (``None`` for a sample without images)."""
        first: list[int | None] = [None] * self.num_samples
        for image in reversed(range(self.num_images)):
            first[self.sample_of_image[image]] = image
        return first

    def sample_images(self, sample: int) -> list[int]:
        """Batch indices of the images of ``sample``, in order."""
        return [i for i, of_image in enumerate(self.sample_of_image) if of_image == sample]

    # ---- rows of the prototype matrix --------------------------------------------------------------------
    def rows(self, sample: torch.Tensor, local_index: torch.Tensor) -> torch.Tensor:
        """Global VRT index (a row of the prototypes) of each ``(sample, local index)`` pair: LongTensor [N]."""
        starts = torch.tensor([s for s, _ in self.sample_spans()], dtype=torch.long, device=local_index.device)
        return local_index + starts[sample]

    def image_of_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Batch image index of each global VRT index: LongTensor [N]."""
        ends = torch.tensor(self.image_offsets[1:] + [self.num_vrts], dtype=torch.long, device=rows.device)
        return torch.searchsorted(ends, rows, right=True)

    def patch_in_image(self, rows: torch.Tensor) -> torch.Tensor:
        """Each global VRT index as a patch of its own image (raster on that image's merged grid): LongTensor [N]."""
        offsets = torch.tensor(self.image_offsets, dtype=torch.long, device=rows.device)
        return rows - offsets[self.image_of_rows(rows)]

    # ---- ids ---------------------------------------------------------------------------------------------
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
                row, col = raster_rc(global_index - offset, self.merged_hw[image])
                return image, row, col
        raise ValueError(f"global VRT index {global_index} is outside 0..{self.num_vrts - 1}")

    def local_to_image_patch(self, sample: int, local_index: int) -> tuple[int, int]:
        """(image, patch index inside that image) of a sample's local VRT index."""
        image = self.locate(self.sample_spans()[sample][0] + local_index)[0]
        return image, self.sample_spans()[sample][0] + local_index - self.image_offsets[image]
