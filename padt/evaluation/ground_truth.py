"""The ground truth of records as the metrics take it: boxes, masks, COCO annotations for OVD, caption references;
under the ``"paper"`` protocol as the official scripts build it (rounded boxes, the records' objects)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from padt.datasets.records import GroundingObject, GroundingRecord
from padt.evaluation.images import Protocol, load_record_image
from padt.losses.box_ops import box_area, box_xyxy_to_xywh, normalised_to_pixels
from padt.results import GroundedOutput
from padt.vision.masks import box_to_mask, box_to_rle, rle_to_mask

_OVD_CATEGORIES = re.compile(r"detect the following objects:\s*(\[.*\])\s*\.?\s*$", re.DOTALL)
_GROUNDING = re.compile(r"<\|(?:VRT|Obj)_\d+\|>")
_EMPTY_PARENS = re.compile(r"\s*\(\s*(?:,\s*)*\)")


def strip_grounding(text: str) -> str:
    """A caption without its grounding: VRTs and ``<|Obj_N|>`` removed, with the parentheses that held them.

    ``"A man (<|VRT_3|><|VRT_4|>) rides a horse (<|Obj_1|>)."`` -> ``"A man rides a horse."``
    """
    text = _EMPTY_PARENS.sub("", _GROUNDING.sub("", text))
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    return " ".join(text.split())


def gt_box(obj: GroundingObject, height: int, width: int) -> list[float]:
    """The object's xyxy box in pixels of its ``height`` x ``width`` image."""
    # float64, so the pixels are those of Python float arithmetic on the record's numbers.
    return normalised_to_pixels(torch.tensor(obj.bbox, dtype=torch.float64), (height, width)).tolist()


def gt_mask(obj: GroundingObject, height: int, width: int) -> np.ndarray:
    """The object's mask; a box-only object (``rle`` null) is scored against its box, as the reference does."""
    if obj.rle is not None:
        return rle_to_mask(obj.rle)
    return box_to_mask(gt_box(obj, height, width), height, width)


def caption_references(records: list[GroundingRecord]) -> dict[str, list[str]]:
    """Per image, every reference caption (answer template without its grounding), in record order."""
    references: dict[str, list[str]] = {}
    for r in records:
        references.setdefault(r.image, []).append(strip_grounding(r.answer_template))
    return references


@dataclass
class OVDGroundTruth:
    gt: dict[str, Any]
    image_ids: list[int]  # per record position
    categories: dict[str, int]


def ovd_ground_truth(
    records: list[GroundingRecord], images_root: Path, instances: str | os.PathLike | Mapping[str, Any] | None,
    protocol: Protocol = "padt",
) -> OVDGroundTruth:
    """COCO ground truth of OVD records: the original annotations (``instances``, ours) or the records' objects.

    The paper's script always scores against the records' objects (the preprocessed, filtered annotations) with
    boxes rounded to whole pixels and no masks; ``instances`` then only supplies the category ids.
    """
    paper = protocol == "paper"
    data = _read_instances(instances) if instances is not None else None
    if data is not None and not paper:
        return _gt_from_instances(records, data)
    if data is not None:
        ids = _coco_image_ids(records, data)
        categories = {c["name"]: int(c["id"]) for c in data.get("categories", [])}
    else:
        ids, categories = _record_image_ids(records), _record_categories(records)
    images, annotations = [], []
    for r, image_id in zip(records, ids, strict=True):
        # Official records read without an images root carry no size: take it from the image.
        height, width = r.image_hw if r.image_hw is not None else load_record_image(r, images_root, protocol).size[::-1]
        images.append({"id": image_id, "file_name": r.image, "height": height, "width": width})
        for obj in r.objects:
            if obj.label not in categories:
                raise ValueError(f"record {r.id}: object label {obj.label!r} is not a category of the instances")
            entry = {"id": len(annotations) + 1, "image_id": image_id, "category_id": categories[obj.label],
                     "iscrowd": obj.iscrowd}
            entry.update(_paper_annotation(obj, height, width) if paper else _padt_annotation(obj, height, width))
            annotations.append(entry)
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    return OVDGroundTruth(gt, ids, categories)


def _record_image_ids(records: list[GroundingRecord]) -> list[int]:
    """One GT image per record: the records' image ids when every record has a distinct one, positions otherwise."""
    ids = [r.image_id for r in records]
    if any(i is None for i in ids) or len(set(ids)) != len(ids):
        return list(range(1, len(records) + 1))
    return [int(i) for i in ids]


def _record_categories(records: list[GroundingRecord]) -> dict[str, int]:
    """Category ids 1..n in order of first appearance: the prompts' lists (COCO id order for val), then labels."""
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(prompt_categories(r.prompt)))
        names.update(dict.fromkeys(o.label for o in r.objects))
    return {name: k + 1 for k, name in enumerate(names)}


def _padt_annotation(obj: GroundingObject, height: int, width: int) -> dict[str, Any]:
    """Box in float pixels, the mask (a box-only object's box as its mask), the area (the box's if unknown)."""
    box = torch.tensor(gt_box(obj, height, width), dtype=torch.float64)
    return {"bbox": box_xyxy_to_xywh(box).tolist(), "area": obj.area or box_area(box).item(),
            "segmentation": obj.rle if obj.rle is not None else box_to_rle(box.tolist(), height, width)}


def _paper_annotation(obj: GroundingObject, height: int, width: int) -> dict[str, Any]:
    """As ``eval_coco.py`` rebuilds it: ``x, y, w, h`` rounded to pixels, the record's area as it is, no mask."""
    x1, y1, x2, y2 = paper_gt_box(obj.bbox, height, width)
    return {"bbox": [x1, y1, x2 - x1, y2 - y1], "area": obj.area}


def paper_gt_box(bbox: Sequence[float], height: int, width: int) -> list[int]:
    """The official scripts' GT box: ``x, y, w, h`` of the normalised box rounded to pixels, returned as xyxy.

    Each of the four is rounded on its own (``round((x2 - x1) * W)``, Python's half-to-even), as the scripts do.
    """
    x1, y1, x2, y2 = bbox
    x, y = round(x1 * width), round(y1 * height)
    return [x, y, x + round((x2 - x1) * width), y + round((y2 - y1) * height)]


def paper_pred_box(box: Sequence[float]) -> list[int]:
    """A predicted xyxy pixel box as the official inference writes it: ``x, y, w, h`` rounded, returned as xyxy."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x, y = round(x1), round(y1)
    return [x, y, x + round(x2 - x1), y + round(y2 - y1)]


def detections(output: GroundedOutput, image_id: int, categories: dict[str, int], protocol: Protocol):
    """COCO results of one answer. Ours: ``to_coco`` (labels compared case-insensitively, masks kept). The
    paper's: the label lowercased must equal a category name, boxes rounded to pixels, no masks."""
    if protocol == "padt":
        return output.to_coco(image_id, categories)
    results = []
    for obj in output.objects:
        category = categories.get(obj.label.lower())
        if category is not None:
            x1, y1, x2, y2 = paper_pred_box(obj.box)
            results.append({"image_id": image_id, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(obj.score)})
    return results


def _read_instances(instances: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(instances, (str, os.PathLike)):
        path = Path(instances)
        if not path.is_file():
            raise FileNotFoundError(f"COCO instances file not found: {path}")
        return json.loads(path.read_text(encoding="utf-8"))
    return dict(instances)  # only read: the filtered lists below are new, COCODetectionMetric copies them


def _coco_image_ids(records: list[GroundingRecord], data: Mapping[str, Any]) -> list[int]:
    """The records' COCO image ids, each checked to be an image of the instances file."""
    missing = [r.id for r in records if r.image_id is None]
    if missing:
        raise ValueError(f"--instances needs COCO image ids in the records; record {missing[0]} has none")
    known = {img["id"] for img in data.get("images", [])}
    wanted = {r.image_id for r in records}
    if wanted - known:
        raise ValueError(f"image ids {sorted(wanted - known)[:5]} of the records are not in the COCO instances")
    return [int(r.image_id) for r in records]


def _gt_from_instances(records: list[GroundingRecord], data: Mapping[str, Any]) -> OVDGroundTruth:
    ids = _coco_image_ids(records, data)
    wanted = set(ids)
    # Only the evaluated images: the others were never shown to the model and would count as misses.
    gt = {
        "images": [img for img in data["images"] if img["id"] in wanted],
        "annotations": [a for a in data.get("annotations", []) if a["image_id"] in wanted],
        "categories": data.get("categories", []),
    }
    categories = {c["name"]: int(c["id"]) for c in gt["categories"]}
    return OVDGroundTruth(gt, ids, categories)


def prompt_categories(prompt: str) -> list[str]:
    """The category names an OVD prompt lists (``[]`` for any other prompt)."""
    match = _OVD_CATEGORIES.search(prompt)
    try:
        names = json.loads(match.group(1)) if match else []
    except json.JSONDecodeError:
        names = []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


# ---- checks, predictions, distributed ------------------------------------------------------------------------
