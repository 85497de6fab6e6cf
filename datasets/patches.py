"""Which merged-grid cells (VRT candidates) an object covers, mask/RLE helpers, and VRT sampling for training.

Patch selection follows PaDT (PADT_REFERENCE §4.2) on the grid the processor really produces:

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

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from padt.vision.images import ImageGeometry

#: The official threshold: a cell is selected when at least 1/28 of it is covered (mean of mask*255 >= 255/28).
DEFAULT_MIN_COVERAGE = 1.0 / 28.0

Polygon = Sequence[float]


def coverage_grid(mask: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """Fraction of each merged-grid cell the mask covers, shape ``(H', W')``, float64 in [0, 1].

    ``mask`` is ``(H, W)`` at the original resolution (``geometry.original_hw``); any non-zero value is foreground.
    """
    if mask.shape != tuple(geometry.original_hw):
        raise ValueError(f"mask shape {mask.shape} differs from the image size {geometry.original_hw}")
    resized_h, resized_w = geometry.resized_hw
    cell = geometry.patch_size * geometry.merge_size
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


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of a ``(H, W)`` mask (non-zero = foreground)."""
    rle = mask_utils.encode(np.asfortranarray((mask != 0).astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed counts as str/bytes, or uncompressed counts as a list) to ``(H, W)`` uint8."""
    compressed = _compressed(rle)
    with warnings.catch_warnings():
        # pycocotools 2.0.x builds its output with np.array(copy=False) semantics numpy 2 deprecates; harmless.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(compressed)


def polygons_to_rle(polygons: Sequence[Polygon], height: int, width: int) -> dict[str, Any]:
    """COCO RLE of the union of polygons ``[x1, y1, x2, y2, ...]`` in original pixels.

    Raises ``ValueError`` on a degenerate polygon (fewer than 3 points, an odd or non-finite coordinate list):
    pycocotools would misread a 4-number polygon as a box.
    """
    if not polygons:
        raise ValueError("no polygons given")
    for index, polygon in enumerate(polygons):
        if not is_valid_polygon(polygon):
            raise ValueError(f"polygon {index} is degenerate: {list(polygon)[:8]}")
    parts = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
    merged = mask_utils.merge(parts)
    return {"size": [int(v) for v in merged["size"]], "counts": merged["counts"].decode("ascii")}


def is_valid_polygon(polygon: Any) -> bool:
    """True for a flat list of at least 3 finite (x, y) pairs."""
    if not isinstance(polygon, (list, tuple)) or len(polygon) < 6 or len(polygon) % 2:
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon)


def box_to_mask(box_xyxy: Sequence[float], height: int, width: int) -> np.ndarray:
    """``(H, W)`` uint8 mask of a pixel box ``(x1, y1, x2, y2)``; edges rounded to whole pixels, clipped."""
    x1, y1, x2, y2 = (round(float(v)) for v in box_xyxy)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[max(y1, 0) : max(min(y2, height), 0), max(x1, 0) : max(min(x2, width), 0)] = 1
    return mask


def box_to_rle(box_xyxy: Sequence[float], height: int, width: int) -> dict[str, Any]:
    """COCO RLE of :func:`box_to_mask` (the mask the official scripts use for annotations without segmentation)."""
    return mask_to_rle(box_to_mask(box_xyxy, height, width))


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> tuple[dict[str, Any] | None, int]:
    """Turn a COCO ``segmentation`` (polygon list, uncompressed or compressed RLE) into a compressed RLE.

    Returns ``(rle, dropped)``: ``dropped`` counts degenerate polygon parts left out; ``rle`` is ``None`` when no
    usable part remains. Raises ``ValueError`` for an unrecognised shape or an RLE of another size.
    """
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not isinstance(size, (list, tuple)) or [int(v) for v in size] != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image size [{height}, {width}]")
        compressed = _compressed(segmentation)
        return {"size": [height, width], "counts": _counts_str(compressed["counts"])}, 0
    if isinstance(segmentation, list):
        valid = [p for p in segmentation if is_valid_polygon(p)]
        dropped = len(segmentation) - len(valid)
        if not valid:
            return None, dropped
        return polygons_to_rle(valid, height, width), dropped
    raise ValueError(f"unrecognised segmentation of type {type(segmentation).__name__}")


def sample_vrt_patches(
    patches: Sequence[int],
    n: int = 5,
    mode: Literal["random", "repeats", "extremes", "all"] = "random",
    rng: np.random.Generator | None = None,
    *,
    grid_width: int | None = None,
) -> list[int]:
    """Pick the VRTs that stand for one object in a training target.

    Modes (PADT_REFERENCE §2):

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


def _compressed(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle.get("counts")
    size = rle.get("size")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    height, width = int(size[0]), int(size[1])
    if isinstance(counts, list):  # uncompressed RLE (COCO crowd annotations)
        if sum(counts) != height * width:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {height * width}")
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise ValueError(f"RLE counts must be str, bytes or a list, got {type(counts).__name__}")
    return {"size": [height, width], "counts": counts}


def _counts_str(counts: str | bytes) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts
