"""Open-vocabulary detection (OVD) on COCO: pycocotools ``COCOeval`` on accumulated detections."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from padt.metrics.base import Metric

# Order of COCOeval.stats for bbox/segm (COCOeval.summarize).
_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_IOU_TYPES = ("bbox", "segm")


def _quiet() -> contextlib.AbstractContextManager[Any]:
    """pycocotools prints progress and the summary table to stdout; keep evaluation logs clean."""
    return contextlib.redirect_stdout(io.StringIO())


def _load_gt(gt: Mapping[str, Any] | str | os.PathLike[str]) -> COCO:
    """Build a ``COCO`` object from a COCO-format dict or json path, filling only fields COCOeval needs.

    Missing ``iscrowd`` defaults to 0 and a missing ``area`` to the bbox area ``w * h`` (hand-built GT often lacks
    both); present values are kept, so the original COCO annotations are evaluated unchanged.
    """
    if isinstance(gt, (str, os.PathLike)):
        with open(gt) as f:
            dataset = json.load(f)
    else:
        dataset = copy.deepcopy(dict(gt))
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"COCO ground truth has no {key!r} list")
    for ann in dataset["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def _load_detections(coco_gt: COCO, detections: list[dict[str, Any]], iou_type: str) -> COCO:
    """Results object for one IoU type; an empty one when there are no detections (``loadRes`` would crash)."""
    if not detections:
        res = COCO()
        res.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset["categories"]),
            "annotations": [],
        }
        with _quiet():
            res.createIndex()
        return res
    dets = copy.deepcopy(detections)  # loadRes writes id/area/iscrowd into the dicts it is given
    if iou_type == "segm":
        for det in dets:
            if "segmentation" not in det:
                raise ValueError("iou_type 'segm' needs a 'segmentation' RLE in every detection")
            # Without 'bbox', loadRes takes the area from the mask, which is what the area ranges
            # (APs/APm/APl) should use for masks (detectron2 does the same).
            det.pop("bbox", None)
            if isinstance(det["segmentation"].get("counts"), str):
                det["segmentation"]["counts"] = det["segmentation"]["counts"].encode("ascii")
    else:
        for det in dets:
            if "bbox" not in det:
                raise ValueError("iou_type 'bbox' needs a 'bbox' [x, y, w, h] in every detection")
            det.pop("segmentation", None)  # loadRes would otherwise keep it; bbox eval never reads it
    with _quiet():
        return coco_gt.loadRes(dets)


def evaluate_coco(coco_gt: COCO, detections: list[dict[str, Any]], iou_type: str) -> dict[str, float]:
    """Run COCOeval for one IoU type and return ``{f"{iou_type}_AP": ..., ...}``.

    Besides the 12 ``COCOeval.stats`` it reports ``AR50``/``AR75`` (recall at IoU 0.5 / 0.75, all areas, 100
    detections), which the PaDT paper tabulates. As in COCOeval, ``-1`` means no GT in that area range.
    """
    if iou_type not in _IOU_TYPES:
        raise ValueError(f"iou_type must be one of {_IOU_TYPES}, got {iou_type!r}")
    coco_dt = _load_detections(coco_gt, detections, iou_type)
    evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    out = {f"{iou_type}_{name}": float(v) for name, v in zip(_STAT_NAMES, evaluator.stats, strict=True)}
    # recall: [T iou thresholds, K categories, A area ranges, M maxDets]; A=0 is "all", M=-1 is 100 dets.
    recall = evaluator.eval["recall"]
    for name, iou in (("AR50", 0.5), ("AR75", 0.75)):
        t = int(np.argmin(np.abs(evaluator.params.iouThrs - iou)))
        r = recall[t, :, 0, -1]
        r = r[r > -1]
        out[f"{iou_type}_{name}"] = float(r.mean()) if r.size else -1.0
    return out


class COCODetectionMetric(Metric):
    """COCO mAP/mAR of accumulated detections against the original COCO annotations.

    Args:
        gt: COCO-format ground truth, a dict (``images``, ``annotations``, ``categories``) or a json path. Every
            GT image is evaluated, so images without any detection count as misses.
        iou_type: ``"bbox"``, ``"segm"`` or both.

    ``update()`` takes COCO result dicts: ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h] (COCO xywh,
    pixels of the original image), "score": float, "segmentation": RLE dict}`` (``segmentation`` only needed
    for ``"segm"``). ``compute()`` returns ``bbox_AP``, ``bbox_AP50``, ``bbox_AP75``, ``bbox_APs/m/l``,
    ``bbox_AR1/10/100``, ``bbox_ARs/m/l``, ``bbox_AR50/75`` and the same with ``segm_``; zero detections give 0
    (not an error).

    Under DistributedSampler with padding, duplicated samples produce duplicated detections (false positives):
    drop the padded samples before ``update()``.
    """

    detections: list[dict[str, Any]]  # COCO result dicts, gathered from every rank in compute()

    def __init__(
        self,
        gt: Mapping[str, Any] | str | os.PathLike[str],
        iou_type: str | Sequence[str] = ("bbox", "segm"),
    ) -> None:
        super().__init__()
        self.iou_types = (iou_type,) if isinstance(iou_type, str) else tuple(iou_type)
        unknown = set(self.iou_types) - set(_IOU_TYPES)
        if unknown or not self.iou_types:
            raise ValueError(f"iou_type must be a subset of {_IOU_TYPES}, got {iou_type!r}")
        self.coco_gt = _load_gt(gt)
        self._image_ids = set(self.coco_gt.getImgIds())
        self.add_state("detections", [], reduce="cat")

    def update(self, detections: Iterable[Mapping[str, Any]]) -> None:
        """Add COCO-format detection dicts (see class docstring)."""
        for det in detections:
            if det["image_id"] not in self._image_ids:
                raise ValueError(f"detection for image_id {det['image_id']!r}, which is not in the GT")
            out = {
                "image_id": det["image_id"],
                "category_id": int(det["category_id"]),
                "score": float(det["score"]),
            }
            if "bbox" in det:
                out["bbox"] = [float(v) for v in det["bbox"]]
            if "segmentation" in det:
                out["segmentation"] = dict(det["segmentation"])
            self.detections.append(out)

    def _compute(self, state: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for iou_type in self.iou_types:
            out.update(evaluate_coco(self.coco_gt, state["detections"], iou_type))
        return out

    def __repr__(self) -> str:
        return f"COCODetectionMetric(images={len(self._image_ids)}, iou_type={self.iou_types})"
