"""Which merged-grid cells (VRT candidates) an object covers, and VRT sampling for training.

The mask/RLE helpers these work with are in :mod:`padt.vision.masks`. Patch selection follows the PaDT data
preparation on the grid the processor really produces:

1. take the object's binary mask at the original resolution ``(H, W)``;
2. resize it to the processor's resized size ``(H_r, W_r)`` (:func:`padt.vision.images.image_geometry`) with cv2
   bilinear;
3. average it over each ``cell x cell`` block, ``cell = patch_size * merge_size`` (28 px for Qwen2.5-VL): the
   cell's *coverage* in [0, 1];
4. select the cell when ``coverage >= min_coverage`` (``>`` with ``strict=True``).

The default ``min_coverage = 1/28`` is the official threshold ``mean(mask * 255) >= 255 / 28`` (about 3.6 % of
the cell). The official COCO/RIC scripts use ``>=``, the RefCOCO script uses ``>`` (``strict=True``). Two
deliberate differences from the official scripts: the grid is Qwen's ``smart_resize`` (the official scripts use
``round(h / 28) * 28``, which differs for images outside the pixel budget), and the resize runs in float32
(the official COCO script resizes a uint8 mask, whose fixed-point rounding could move a cell that sits exactly on
the threshold; on 300 random polygons in a 480 x 640 image no cell differed).

Patch indices are raster order on the merged grid ``(H', W')``: ``k = row * W' + col``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from padt.vision.geometry import ImageGeometry

#: The official threshold: a cell is selected when at least 1/28 of it is covered (mean of mask*255 >= 255/28).
DEFAULT_MIN_COVERAGE = 1.0 / 28.0


def coverage_grid(mask: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """Fraction of each merged-grid cell the mask covers, shape ``(H', W')``, float64 in [0, 1].

    ``mask`` is ``(H, W)`` at the original resolution (``geometry.original_hw``); any non-zero value is foreground.
    """
    if mask.shape != tuple(geometry.original_hw):
        raise ValueError(f"mask shape {mask.shape} differs from the image size {geometry.original_hw}")
    resized_h, resized_w = geometry.resized_hw
    cell = geometry.cell_size
    binary = (mask != 0).astype(np.float32)
    resized = cv2.resize(binary, (resized_w, resized_h), interpolation=cv2.INTER_LINEAR)
    grid_h, grid_w = resized_h // cell, resized_w // cell
    blocks = resized.astype(np.float64).reshape(grid_h, cell, grid_w, cell)
    return blocks.mean(axis=(1, 3))


def select_patches(
    mask: np.ndarray,
    geometry: ImageGeometry,
    *,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    strict: bool = False,
) -> list[int]:
    """Sorted raster indices ``row * W' + col`` of the merged-grid cells the mask covers.

    Args:
        mask: ``(H, W)`` binary mask at the original resolution.
        geometry: the image's grid, from :func:`padt.vision.images.image_geometry` with the processor's settings.
        min_coverage: fraction of a cell that must be covered; 1/28 is the official value.
        strict: select on ``coverage > min_coverage`` (official RefCOCO) instead of ``>=`` (official COCO, RIC).
    """
    if not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"min_coverage must lie in [0, 1], got {min_coverage}")
    if not mask.any():
        return []
    coverage = coverage_grid(mask, geometry)
    selected = coverage > min_coverage if strict else coverage >= min_coverage
    return np.flatnonzero(selected.reshape(-1)).tolist()


def sample_vrt_patches(
    patches: Sequence[int],
    n: int = 5,
    mode: Literal["random", "repeats", "extremes", "all"] = "random",
    rng: np.random.Generator | None = None,
    *,
    grid_width: int | None = None,
) -> list[int]:
    """Pick the VRTs that stand for one object in a training target.

    Modes:

    * ``"random"`` (the official default): ``n`` patches drawn uniformly, without replacement unless the object
      has fewer than ``n`` patches.
    * ``"repeats"`` (ours): ``n`` slots filled from ``k`` distinct patches, ``k`` drawn uniformly from
      ``1..min(n, len(patches))``; each of the ``k`` appears at least once, in random order. Greedy generation
      often writes one patch several times (``<19><19><19><19><19>``); with ``"random"`` the decoder never sees
      such a run for a large object during training and draws a box around that one patch only.
    * ``"extremes"``: five patches, one drawn from each of: the centre cells (those on no extreme row/column; all
      cells when there are none), the leftmost column, the top row, the rightmost column, the bottom row, in that
      order. Needs ``grid_width`` (W' of the merged grid) to turn raster indices into (row, col). ``n`` is ignored.
    * ``"all"``: every patch, sorted.

    Deterministic for a given ``rng`` state; ``rng=None`` draws a fresh, unseeded generator.
    """
    if len(patches) == 0:
        raise ValueError("cannot sample VRTs from an object with no patches")
    values = np.asarray(sorted(int(p) for p in patches), dtype=np.int64)
    if mode == "all":
        return values.tolist()
    rng = np.random.default_rng() if rng is None else rng
    if mode == "random":
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        return rng.choice(values, size=n, replace=len(values) < n).tolist()
    if mode == "repeats":
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        distinct = rng.choice(values, size=int(rng.integers(1, min(n, len(values)) + 1)), replace=False)
        slots = np.concatenate([distinct, rng.choice(distinct, size=n - len(distinct))])
        return rng.permutation(slots).tolist()
    if mode == "extremes":
        if grid_width is None or grid_width <= 0:
            raise ValueError("mode='extremes' needs the merged grid width (grid_width)")
        rows, cols = values // grid_width, values % grid_width
        left, right = cols == cols.min(), cols == cols.max()
        top, bottom = rows == rows.min(), rows == rows.max()
        centre = ~(left | right | top | bottom)
        if not centre.any():
            centre = np.ones_like(centre)
        return [int(rng.choice(values[group])) for group in (centre, left, top, right, bottom)]
    raise ValueError(f"unknown sampling mode {mode!r}; expected 'random', 'repeats', 'extremes' or 'all'")
