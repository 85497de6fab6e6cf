"""Binary masks, COCO run-length encoding (RLE), polygons and boxes: every conversion between them, defined once.

Conventions:
    * A mask is a ``(H, W)`` array of the original image; any non-zero value is foreground.
    * An RLE is COCO's ``{"size": [H, W], "counts": ...}``. Functions here *return* compressed RLE with ``counts``
      as an ASCII ``str``, ready for JSON (records, predictions, COCO results). They *accept* compressed counts as
      ``str`` or ``bytes`` and uncompressed counts as a list of run lengths (COCO crowd annotations).
    * Polygons are flat ``[x1, y1, x2, y2, ...]`` lists in original pixels, as in COCO's ``segmentation``.
    * Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates: pixel column ``c`` spans ``[c, c + 1)``, so a
      box covering columns 3..7 has ``x1 = 3`` and ``x2 = 8``.

This module needs numpy and pycocotools only (no torch, no other padt module), so data converters stay light.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "box_to_mask",
    "box_to_rle",
    "compressed_rle",
    "is_valid_polygon",
    "mask_to_box",
    "mask_to_rle",
    "polygons_to_rle",
    "rle_to_mask",
    "segmentation_to_rle",
]

Polygon = Sequence[float]


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE ``{"size": [H, W], "counts": str}`` of a ``(H, W)`` mask (non-zero = foreground)."""
    # pycocotools reads the pixels column-major and only as uint8.
    rle = mask_utils.encode(np.asfortranarray((mask != 0).astype(np.uint8)))
    return _json_ready(rle)


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode any COCO RLE (compressed or uncompressed, see the module docstring) to a ``(H, W)`` uint8 0/1 mask."""
    compressed = compressed_rle(rle)
    with warnings.catch_warnings():
        # pycocotools 2.0.x builds its output with np.array(copy=False) semantics numpy 2 deprecates; harmless.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(compressed)


def compressed_rle(rle: Mapping[str, Any]) -> dict[str, Any]:
    """Any COCO RLE -> compressed RLE with ``bytes`` counts, the form every pycocotools function accepts.

    Raises ``ValueError`` for a malformed ``size``, counts of another type, or uncompressed counts that do not
    sum to ``H * W`` (pycocotools would silently build a wrong mask from them).
    """
    counts = rle.get("counts")
    size = rle.get("size")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    height, width = int(size[0]), int(size[1])
    if isinstance(counts, list):
        if sum(counts) != height * width:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {height * width}")
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):  # an RLE that went through JSON
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise ValueError(f"RLE counts must be str, bytes or a list, got {type(counts).__name__}")
    return {"size": [height, width], "counts": counts}


def is_valid_polygon(polygon: Any) -> bool:
    """True for a flat list of at least 3 finite (x, y) pairs."""
    if not isinstance(polygon, (list, tuple)) or len(polygon) < 6 or len(polygon) % 2:
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon)


def polygons_to_rle(polygons: Sequence[Polygon], height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of the union of polygons on a ``height`` x ``width`` image.

    Raises ``ValueError`` on a degenerate polygon (fewer than 3 points, an odd or non-finite coordinate list):
    pycocotools would misread a 4-number polygon as a box.
    """
    if not polygons:
        raise ValueError("no polygons given")
    for index, polygon in enumerate(polygons):
        if not is_valid_polygon(polygon):
            raise ValueError(f"polygon {index} is degenerate: {list(polygon)[:8]}")
    parts = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
    return _json_ready(mask_utils.merge(parts))


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> tuple[dict[str, Any] | None, int]:
    """Turn a COCO ``segmentation`` (polygon list, uncompressed or compressed RLE) into a compressed RLE.

    Returns ``(rle, dropped)``: ``dropped`` counts degenerate polygon parts left out; ``rle`` is ``None`` when no
    usable part remains. Raises ``ValueError`` for an unrecognised shape or an RLE of another size.
    """
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not isinstance(size, (list, tuple)) or [int(v) for v in size] != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image size [{height}, {width}]")
        return _json_ready(compressed_rle(segmentation)), 0
    if isinstance(segmentation, list):
        valid = [p for p in segmentation if is_valid_polygon(p)]
        dropped = len(segmentation) - len(valid)
        if not valid:
            return None, dropped
        return polygons_to_rle(valid, height, width), dropped
    raise ValueError(f"unrecognised segmentation of type {type(segmentation).__name__}")


def box_to_mask(box_xyxy: Sequence[float], height: int, width: int) -> np.ndarray:
    """``(H, W)`` uint8 mask of a pixel box ``(x1, y1, x2, y2)``; edges rounded to whole pixels, clipped."""
    x1, y1, x2, y2 = (round(float(v)) for v in box_xyxy)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[max(y1, 0) : max(min(y2, height), 0), max(x1, 0) : max(min(x2, width), 0)] = 1
    return mask


def box_to_rle(box_xyxy: Sequence[float], height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of :func:`box_to_mask`: the mask the official scripts use for objects without segmentation."""
    return mask_to_rle(box_to_mask(box_xyxy, height, width))


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tightest pixel box ``(x1, y1, x2, y2)`` around a mask's foreground, or ``None`` for an empty mask.

    Continuous coordinates: ``x2`` is one past the last foreground column, so ``box_to_mask(mask_to_box(m))``
    covers every foreground pixel of ``m``.
    """
    rows = np.flatnonzero(np.any(mask != 0, axis=1))
    cols = np.flatnonzero(np.any(mask != 0, axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _json_ready(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }
