"""COCODetectionMetric against pycocotools COCOeval called directly on the same GT and detections."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from padt.metrics import COCODetectionMetric

NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _direct_cocoeval(gt: dict, dets: list, iou_type: str) -> np.ndarray:
    """The standard recipe: loadRes on the detections (bbox-only for bbox, RLE-only for segm)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        key = "bbox" if iou_type == "bbox" else "segmentation"
        res = coco.loadRes(
            [
                {k: v for k, v in d.items() if k in (key, "image_id", "category_id", "score")}
                for d in copy.deepcopy(dets)
            ]
        )
        ev = COCOeval(coco, res, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_matches_direct_cocoeval(coco_gt, noisy_detections) -> None:
    m = COCODetectionMetric(coco_gt)
    m.update(noisy_detections)
    out = m.compute()
    for iou_type in ("bbox", "segm"):
        direct = _direct_cocoeval(coco_gt, noisy_detections, iou_type)
        ours = np.array([out[f"{iou_type}_{n}"] for n in NAMES])
        np.testing.assert_allclose(ours, direct, atol=1e-12)
    # Non-trivial case: imperfect but not zero.
    assert 0.1 < out["bbox_AP"] < 0.9
    assert 0.0 < out["bbox_AR75"] < out["bbox_AR50"] <= 1.0


def test_ar50_hand_value(coco_gt, noisy_detections) -> None:
    # Recall at IoU 0.5 per category (all areas, 100 dets):
    #   cat: GT {img1 cat (hit, IoU .82), img2 big cat (hit, IoU .566), img2 small cat (missed)} -> 2/3
    #   dog: GT {img1 dog (exact hit), img2 dog (hit, IoU .62)} -> 2/2
    m = COCODetectionMetric(coco_gt, iou_type="bbox")
    m.update(noisy_detections)
    assert m.compute()["bbox_AR50"] == pytest.approx((2 / 3 + 1.0) / 2)


def test_perfect_predictions_give_ap_one(coco_gt, perfect_detections, tmp_path) -> None:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco_gt))  # also exercises loading from a path
    m = COCODetectionMetric(str(path), iou_type=("bbox", "segm"))
    m.update(perfect_detections)
    out = m.compute()
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APs", "AR100"):
            assert out[f"{iou_type}_{name}"] == pytest.approx(1.0), f"{iou_type}_{name}"
        # all objects are < 32^2 px: no GT in the medium/large ranges, which COCOeval reports as -1
        assert out[f"{iou_type}_APm"] == -1.0


def test_zero_detections_give_zero(coco_gt) -> None:
    m = COCODetectionMetric(coco_gt)
    out = m.compute()  # pycocotools' loadRes would crash on an empty list
    assert out["bbox_AP"] == 0.0 and out["segm_AP"] == 0.0 and out["bbox_AR100"] == 0.0


def test_batches_equal_one_update_and_reset(coco_gt, noisy_detections) -> None:
    one, two = COCODetectionMetric(coco_gt, "bbox"), COCODetectionMetric(coco_gt, "bbox")
    one.update(noisy_detections)
    two.update(noisy_detections[:2])
    two.update(noisy_detections[2:])
    assert one.compute() == two.compute()
    two.reset()
    assert two.compute()["bbox_AP"] == 0.0


def test_input_checks(coco_gt, noisy_detections) -> None:
    m = COCODetectionMetric(coco_gt)
    with pytest.raises(ValueError, match="image_id"):
        m.update([{**noisy_detections[0], "image_id": 99}])
    m.update([{k: v for k, v in noisy_detections[0].items() if k != "segmentation"}])
    with pytest.raises(ValueError, match="segm"):
        m.compute()
    with pytest.raises(ValueError):
        COCODetectionMetric(coco_gt, iou_type="keypoints")
