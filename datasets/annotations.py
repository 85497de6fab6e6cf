"""COCO instances files: loading, image checks, and one annotation -> one :class:`GroundingObject`.

Shared by the COCO, RefCOCO and RIC converters. COCO boxes are ``[x, y, w, h]`` in original pixels; they leave
here as normalised ``[x1/W, y1/H, x2/W, y2/H]``, clipped to the image.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from padt.datasets.patches import DEFAULT_MIN_COVERAGE, select_patches
from padt.datasets.records import GridSpec, GroundingObject, PathLike, path_leaves_root
from padt.datasets.summary import ConversionSummary
from padt.losses.box_ops import box_xywh_to_xyxy, clip_boxes, normalised_to_pixels, pixels_to_normalised
from padt.vision.images import open_image
from padt.vision.masks import box_to_mask, rle_to_mask, segmentation_to_rle

_EXIF_ORIENTATION = 0x0112


@dataclass
class CocoIndex:
    """A COCO instances file indexed by id.

    Attributes:
        images: image id -> image entry (``file_name``, ``height``, ``width``, any extra keys such as ``captions``).
        annotations: annotation id -> annotation.
        by_image: image id -> its annotations in file order.
        categories: category id -> name, in ascending id order.
        malformed: annotations without an integer ``id``/``image_id`` (not indexed).
        orphans: annotations whose image id is not among ``images`` (not indexed by image).
    """

    images: dict[int, dict[str, Any]]
    annotations: dict[int, dict[str, Any]]
    by_image: dict[int, list[dict[str, Any]]]
    categories: dict[int, str]
    malformed: int = 0
    orphans: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def load_instances(path: PathLike) -> CocoIndex:
    """Read and index a COCO instances JSON; raises ``ValueError`` naming the file when its layout is wrong."""
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO instances object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: field '{key}' missing or not a list")
    return index_instances(data, str(path))


def index_instances(data: dict[str, Any], source: str = "<instances>") -> CocoIndex:
    """Index an already-parsed COCO instances object (see :func:`load_instances`)."""
    images: dict[int, dict[str, Any]] = {}
    for position, image in enumerate(data.get("images", [])):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise ValueError(f"{source}: images[{position}] has no integer 'id'")
        images[image["id"]] = image
    categories: dict[int, str] = {}
    for position, category in enumerate(data.get("categories", [])):
        if not isinstance(category, dict) or not _is_int(category.get("id")) or not isinstance(
            category.get("name"), str
        ):
            raise ValueError(f"{source}: categories[{position}] needs an integer 'id' and a string 'name'")
        categories[category["id"]] = category["name"]
    index = CocoIndex(images, {}, {image_id: [] for image_id in images}, dict(sorted(categories.items())))
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")) or not _is_int(ann.get("image_id")):
            index.malformed += 1
            continue
        index.annotations[ann["id"]] = ann
        if ann["image_id"] in index.by_image:
            index.by_image[ann["image_id"]].append(ann)
        else:
            index.orphans += 1
    index.extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    return index


def image_hw(info: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) of an image entry, or ``None`` when they are missing or not positive integers."""
    height, width = info.get("height"), info.get("width")
    if not (_is_int(height) and _is_int(width)) or height <= 0 or width <= 0:
        return None
    return int(height), int(width)


def check_image(
    images_dir: PathLike | None,
    info: dict[str, Any],
    summary: ConversionSummary,
    *,
    skip_exif_rotated: bool = True,
) -> bool:
    """Whether the image file exists and matches its entry; counts the reason in ``summary`` when not.

    With ``images_dir=None`` nothing is checked. A file PIL cannot open, or one whose header claims more pixels than
    :func:`padt.vision.images.max_image_pixels` (a decompression bomb), counts as ``image_unreadable``; nothing here
    raises for a bad file. An EXIF orientation other than 1 is skipped by default:
    COCO's annotations (and width/height) refer to the stored pixels, while :func:`padt.vision.images.load_image`
    applies the orientation, so the boxes would land on a rotated or mirrored image.
    """
    hw = image_hw(info)
    file_name = info.get("file_name")
    if hw is None or not isinstance(file_name, str) or not file_name:
        summary.skip("bad_image_info")
        return False
    if path_leaves_root(file_name):  # a crafted annotation must not make padt read files outside --images
        summary.skip("image_outside_root")
        return False
    if images_dir is None:
        return True
    path = Path(images_dir) / file_name
    if not path.is_file():
        summary.skip("image_missing")
        return False
    try:
        # Header only, pixels are not decoded; open_image refuses files above padt's pixel limit (decompression
        # bombs) with a ValueError, which counts as unreadable like any other file PIL cannot open.
        with open_image(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError):
        summary.skip("image_unreadable")
        return False
    if (height, width) != hw:
        summary.skip("image_size_mismatch")
        return False
    if skip_exif_rotated and orientation not in (1, None):
        summary.skip("image_exif_rotated")
        return False
    return True


def annotation_object(
    ann: dict[str, Any],
    hw: tuple[int, int],
    grid: GridSpec,
    label: str,
    summary: ConversionSummary,
    *,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    strict: bool = False,
) -> GroundingObject | None:
    """Build the object of one COCO annotation on an ``hw = (H, W)`` image, or count why it is skipped.

    The mask is the segmentation (polygons, or uncompressed/compressed RLE); an annotation without one falls
    back to its box (rounded to pixels) and gets ``rle=None``. Returns ``None`` when skipped.
    """
    clipped = clipped_box(ann.get("bbox"), hw, summary)
    if clipped is None:
        return None
    box, was_clipped = clipped
    dropped = 0
    height, width = hw
    segmentation = ann.get("segmentation")
    rle = None
    if segmentation:
        try:
            rle, dropped = segmentation_to_rle(segmentation, height, width)
        except (ValueError, TypeError):
            summary.skip("bad_segmentation")
            return None
        if rle is None:
            summary.skip("degenerate_segmentation")
            return None
        mask = rle_to_mask(rle)
    else:
        pixel_box = normalised_to_pixels(torch.tensor(box, dtype=torch.float64), hw).tolist()
        mask = box_to_mask(pixel_box, height, width)
    if not mask.any():
        summary.skip("empty_mask")
        return None
    patches = select_patches(mask, grid.geometry(height, width), min_coverage=min_coverage, strict=strict)
    if not patches:
        summary.skip("no_patch")
        return None
    area = ann.get("area")
    if not (isinstance(area, (int, float)) and not isinstance(area, bool) and math.isfinite(area) and area >= 0):
        area = float(mask.sum())
    iscrowd = 1 if ann.get("iscrowd") in (1, True) else 0
    # Fixes are counted for kept objects only, so each object lands in exactly one skip reason or is kept.
    summary.fix("box_clipped", int(was_clipped))
    summary.fix("degenerate_polygon_dropped", dropped)
    return GroundingObject(patches, box, label, rle, iscrowd, float(area))


def clipped_box(bbox: Any, hw: tuple[int, int], summary: ConversionSummary) -> tuple[list[float], bool] | None:
    """Normalised, clipped ``[x1/W, y1/H, x2/W, y2/H]`` of a COCO ``[x, y, w, h]`` box and whether it was clipped.

    ``None`` (reason counted in ``summary``) for a malformed box or one with no area inside the image.
    """
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    ):
        summary.skip("bad_annotation")
        return None
    height, width = hw
    # float64 keeps the numbers those of Python float arithmetic on the JSON values.
    box = box_xywh_to_xyxy(torch.tensor([float(v) for v in bbox], dtype=torch.float64))
    clipped = clip_boxes(box, height, width)
    x1, y1, x2, y2 = clipped.tolist()
    if x2 <= x1 or y2 <= y1:
        summary.skip("degenerate_box")
        return None
    return pixels_to_normalised(clipped, hw).tolist(), not torch.equal(clipped, box)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
