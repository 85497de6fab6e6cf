"""Referring expression comprehension (REC) and segmentation (RES) metrics.

Samples are matched by position in the batch (sample index), never by label string: the reference script keyed
predictions by ``image_id + "_" + parsed label``, so a prediction whose label was paraphrased or re-quoted was
silently scored as a miss, and two expressions with the same text on one image collided.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from padt.metrics.base import Metric
from padt.metrics.functional import Mask, best_box_iou, mask_intersection_union


def _threshold_key(threshold: float) -> str:
    return f"acc@{threshold:g}"


class RECAccuracy(Metric):
    """REC accuracy at one or more IoU thresholds (``acc@0.5`` is the paper's "Acc@0.5").

    A sample's score is the best IoU between any of its predicted boxes and its single GT box (max over
    predictions, as in the reference); the sample is correct at threshold ``t`` if that IoU is ``>= t``. A sample
    with no predicted box scores IoU 0 and is wrong at every threshold.

    Returns ``{"acc@0.5": ..., ..., "mean_iou": ...}`` as fractions in [0, 1]; ``nan`` before any update.

    Args:
        thresholds: IoU thresholds in (0, 1].

    Example:
        >>> m = RECAccuracy(thresholds=(0.5, 0.75))
        >>> m.update([[[0, 0, 10, 10]], []], [[0, 0, 10, 12], [5, 5, 9, 9]])
        >>> {k: round(v, 4) for k, v in m.compute().items()}  # IoUs: 100/120 and 0 (no prediction)
        {'acc@0.5': 0.5, 'acc@0.75': 0.5, 'mean_iou': 0.4167}
    """

    correct: torch.Tensor  # (num_thresholds,) int64: samples with best IoU >= threshold
    iou_sum: torch.Tensor  # () float64: sum of best IoUs
    total: torch.Tensor  # () int64: samples seen

    def __init__(self, thresholds: Sequence[float] = (0.5,)) -> None:
        super().__init__()
        self.thresholds = tuple(float(t) for t in thresholds)
        if not self.thresholds or any(not 0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be non-empty and in (0, 1], got {thresholds}")
        self.add_state("correct", torch.zeros(len(self.thresholds), dtype=torch.int64), reduce="sum")
        self.add_state("iou_sum", torch.zeros((), dtype=torch.float64), reduce="sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), reduce="sum")

    def update(self, pred_boxes: Sequence[Any], gt_boxes: Sequence[Any]) -> None:
        """Add a batch.

        Args:
            pred_boxes: per sample, the predicted boxes ``(K, 4)`` xyxy pixels (``K`` may be 0; ``None`` = none).
            gt_boxes: per sample, the one GT box ``(4,)`` xyxy pixels, aligned with ``pred_boxes`` by index.
        """
        if len(pred_boxes) != len(gt_boxes):
            raise ValueError(f"{len(pred_boxes)} predictions for {len(gt_boxes)} GT boxes")
        thresholds = torch.tensor(self.thresholds, dtype=torch.float64)
        for preds, gt in zip(pred_boxes, gt_boxes, strict=True):
            iou = best_box_iou(preds, gt)
            self.correct += (iou >= thresholds).to(torch.int64)
            self.iou_sum += iou
            self.total += 1

    def _compute(self, state: dict[str, Any]) -> dict[str, float]:
        total = int(state["total"])
        if total == 0:
            return {**{_threshold_key(t): float("nan") for t in self.thresholds}, "mean_iou": float("nan")}
        out = {_threshold_key(t): int(c) / total for t, c in zip(self.thresholds, state["correct"], strict=True)}
        out["mean_iou"] = float(state["iou_sum"]) / total
        return out

    def __repr__(self) -> str:
        return f"RECAccuracy(thresholds={self.thresholds})"


class RESIoU(Metric):
    """RES mask IoU, both ways the literature reports it.

    * ``ciou`` (cumulative IoU): ``Σ_i I_i / Σ_i U_i`` over the whole dataset, where ``I_i`` and ``U_i`` are the
      pixel counts of intersection and union of prediction and GT in sample ``i``; large objects weigh more. This
      is the cIoU of LAVT, LISA and GRES.
    * ``giou`` (generalised / mean IoU): ``mean_i I_i / U_i``, every sample weighs the same; an empty prediction
      on an empty GT scores 1 (as in GRES). This is the gIoU of LISA and GRES.

    The PaDT paper's RES "cIoU" numbers are computed as the mean per-sample IoU, i.e. our ``giou``.

    Returns ``{"ciou": ..., "giou": ...}`` as fractions; ``nan`` before any update.
    """

    intersection: torch.Tensor  # () int64: summed intersection pixels
    union: torch.Tensor  # () int64: summed union pixels
    iou_sum: torch.Tensor  # () float64: sum of per-sample IoUs
    total: torch.Tensor  # () int64: samples seen

    def __init__(self) -> None:
        super().__init__()
        self.add_state("intersection", torch.zeros((), dtype=torch.int64), reduce="sum")
        self.add_state("union", torch.zeros((), dtype=torch.int64), reduce="sum")
        self.add_state("iou_sum", torch.zeros((), dtype=torch.float64), reduce="sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), reduce="sum")

    def update(self, pred_masks: Sequence[Mask | None], gt_masks: Sequence[Mask]) -> None:
        """Add a batch.

        Args:
            pred_masks: per sample, one binary ``(H, W)`` mask in original-image pixels (bool/0-1 array or COCO RLE
                dict), or ``None`` for no prediction (scored as an empty mask).
            gt_masks: per sample, the GT mask of the same ``(H, W)``, aligned by index.
        """
        if len(pred_masks) != len(gt_masks):
            raise ValueError(f"{len(pred_masks)} predicted masks for {len(gt_masks)} GT masks")
        for pred, gt in zip(pred_masks, gt_masks, strict=True):
            inter, union = mask_intersection_union(pred, gt)
            self.intersection += inter
            self.union += union
            self.iou_sum += inter / union if union > 0 else 1.0
            self.total += 1

    def _compute(self, state: dict[str, Any]) -> dict[str, float]:
        total, union = int(state["total"]), int(state["union"])
        if total == 0:
            return {"ciou": float("nan"), "giou": float("nan")}
        # Every sample empty in both prediction and GT: nothing was missed or hallucinated.
        ciou = int(state["intersection"]) / union if union > 0 else 1.0
        return {"ciou": ciou, "giou": float(state["iou_sum"]) / total}
