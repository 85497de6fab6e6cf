"""Evaluation metrics for PaDT's four tasks, usable in single-process and torch.distributed evaluation.

* REC: :class:`RECAccuracy` (Acc@IoU over the best predicted box).
* RES: :class:`RESIoU` (cumulative ``ciou`` and mean per-sample ``giou``; the paper's "cIoU" is ``giou``).
* OVD: :class:`COCODetectionMetric` (pycocotools COCOeval, bbox and segm).
* RIC: :class:`GroundedCaptionMetric` (BLEU/ROUGE-L/CIDEr-D via pycocoevalcap, greedy precision/recall).
* The official script's REC/RES scoring, predictions matched by (image, label): :class:`KeyedReferringMetric`
  (``padt eval --protocol paper``).

Every metric has ``update()``, ``compute()`` (global over all ranks), ``reset()`` and ``sync()``. Definitions and
differences from the reference scripts are in ``docs/metrics.md``.
"""

from padt.metrics.base import Metric
from padt.metrics.captioning import GroundedCaptionMetric, caption_scores, greedy_match_counts, simple_tokenize
from padt.metrics.coco import COCODetectionMetric, evaluate_coco
from padt.metrics.functional import (
    best_box_iou,
    box_iou,
    greedy_match,
    mask_intersection_union,
    mask_iou,
    to_bool_mask,
)
from padt.metrics.grounding import RECAccuracy, RESIoU
from padt.metrics.keyed import KeyedReferringMetric
from padt.metrics.table import format_table

__all__ = [
    "COCODetectionMetric",
    "GroundedCaptionMetric",
    "KeyedReferringMetric",
    "Metric",
    "RECAccuracy",
    "RESIoU",
    "best_box_iou",
    "box_iou",
    "caption_scores",
    "evaluate_coco",
    "format_table",
    "greedy_match",
    "greedy_match_counts",
    "mask_intersection_union",
    "mask_iou",
    "simple_tokenize",
    "to_bool_mask",
]
