"""REC and RES scored as the official PaDT evaluation script scores them: predictions matched by (image, label).

The script (``eval/evaluation_scripts/eval_refcoco.py`` of the official repository) does not pair a prediction
with the sample it was generated for. It files every predicted object under ``image + "_" + parsed label`` and
every ground truth under ``image + "_" + sentence``, then scores each ground-truth key with the best prediction
filed under the same key. So a box with the right place but a paraphrased label scores 0, and predictions of one
image that carry the same label pool together. :class:`KeyedReferringMetric` reproduces that, for
``padt eval --protocol paper``; :class:`~padt.metrics.RECAccuracy` and :class:`~padt.metrics.RESIoU` are the
sample-matched metrics of our own protocol. Definitions side by side: ``docs/metrics.md``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from padt.metrics.base import Metric
from padt.metrics.functional import Mask, as_boxes, box_iou, mask_intersection_union, to_bool_mask
from padt.vision.masks import mask_to_rle


class KeyedReferringMetric(Metric):
    """REC accuracy and RES mask IoU with the official script's label matching (``--protocol paper``).

    Per sample: the image key, the GT label (the referring sentence), the GT box and optionally the GT mask, and
    the answer's objects as (label, box, mask). At :meth:`compute`:

    1. Every sample files its GT under ``(image, label)``; when two samples share a key, the later one (by
       ``order``) wins, as the script's dict assignment does.
    2. Every predicted object files under ``(image, its own label)``, pooled over all samples of that image.
    3. A key's box score is the best box IoU between its GT box and the predictions filed under it (0 when none);
       its mask score, independently, the best mask IoU (a union of 0 scores 0, as the script's ``calculate_ciou``).
    4. Each sample gets the scores of its key: ``acc@t`` counts ``box score >= t``; ``mean_iou``, ``giou`` (the
       paper's RES "cIoU") average the scores over samples; ``ciou`` is ``Σ I / Σ U`` of each sample's best mask.

    Boxes are xyxy pixels; pass integer boxes (the script rounds ``x, y, w, h`` to pixels) to reproduce it.
    Returns fractions in [0, 1] (``nan`` before any update); the mask keys only when masks were given.

    Args:
        thresholds: IoU thresholds of ``acc@t``, in (0, 1].
        masks: whether samples carry masks (RES).
    """

    samples: list[dict[str, Any]]

    def __init__(self, thresholds: Sequence[float] = (0.5,), *, masks: bool = False) -> None:
        super().__init__()
        self.thresholds = tuple(float(t) for t in thresholds)
        if not self.thresholds or any(not 0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be non-empty and in (0, 1], got {thresholds}")
        self.masks = masks
        self.add_state("samples", [], reduce="cat")

    def update(
        self,
        images: Sequence[Hashable],
        labels: Sequence[str],
        gt_boxes: Sequence[Any],
        pred_labels: Sequence[Sequence[str]],
        pred_boxes: Sequence[Any],
        *,
        gt_masks: Sequence[Mask] | None = None,
        pred_masks: Sequence[Sequence[Mask | None]] | None = None,
        order: Sequence[int] | None = None,
    ) -> None:
        """Add a batch of samples (all sequences aligned by index).

        Args:
            images: per sample, the image key (the COCO image id, as the script uses, or the file name).
            labels: per sample, the GT label (the referring sentence).
            gt_boxes: per sample, the GT box ``(4,)`` xyxy pixels.
            pred_labels: per sample, the label of each predicted object.
            pred_boxes: per sample, ``(K, 4)`` xyxy pixel boxes of the predicted objects.
            gt_masks: per sample, the GT mask (array or COCO RLE); required with ``masks=True``.
            pred_masks: per sample, one mask (or ``None``: empty) per predicted object.
            order: per sample, its position in the dataset, which decides which of two samples with one key is
                "later"; default: the order of the calls. Under ``torch.distributed`` pass global positions.
        """
        count = len(images)
        sizes = {len(labels), len(gt_boxes), len(pred_labels), len(pred_boxes)}
        if self.masks and (gt_masks is None or pred_masks is None):
            raise ValueError("KeyedReferringMetric(masks=True) needs gt_masks and pred_masks")
        if self.masks:
            sizes |= {len(gt_masks), len(pred_masks)}
        if sizes != {count}:
            raise ValueError(f"every per-sample sequence needs {count} entries, got lengths {sorted(sizes)}")
        start = len(self.samples)
        for i in range(count):
            boxes = as_boxes(pred_boxes[i])
            if len(boxes) != len(pred_labels[i]):
                raise ValueError(f"sample {i}: {len(pred_labels[i])} predicted labels for {len(boxes)} boxes")
            masks = list(pred_masks[i]) if self.masks else [None] * len(boxes)
            if len(masks) != len(boxes):
                raise ValueError(f"sample {i}: {len(masks)} predicted masks for {len(boxes)} boxes")
            self.samples.append({
                "order": start + i if order is None else int(order[i]),
                "key": (images[i], labels[i]),
                "box": as_boxes(gt_boxes[i])[0].tolist(),
                "mask": _rle(gt_masks[i]) if self.masks else None,
                "preds": [(str(label), box.tolist(), None if mask is None else _rle(mask))
                          for label, box, mask in zip(pred_labels[i], boxes, masks, strict=True)],
            })

    def _compute(self, state: dict[str, Any]) -> dict[str, float]:
        samples = sorted(state["samples"], key=lambda s: s["order"])
        if not samples:
            keys = [f"acc@{t:g}" for t in self.thresholds] + ["mean_iou"] + (["ciou", "giou"] if self.masks else [])
            return dict.fromkeys(keys, float("nan"))
        truth: dict[Any, dict[str, Any]] = {}
        pool: dict[Any, list[tuple[list[float], Any]]] = defaultdict(list)
        for sample in samples:
            truth[sample["key"]] = sample  # the later sample of a key wins, as the script's dict assignment
            image = sample["key"][0]
            for label, box, mask in sample["preds"]:
                pool[image, label].append((box, mask))
        scores = {key: self._score(gt, pool.get(key, [])) for key, gt in truth.items()}
        per_sample = [scores[s["key"]] for s in samples]
        out = {f"acc@{t:g}": float(np.mean([box >= t for box, _ in per_sample])) for t in self.thresholds}
        out["mean_iou"] = float(np.mean([box for box, _ in per_sample]))
        if self.masks:
            inter = sum(m[0] for _, m in per_sample)
            union = sum(m[1] for _, m in per_sample)
            out["ciou"] = inter / union if union > 0 else 0.0
            out["giou"] = float(np.mean([m[2] for _, m in per_sample]))
        return out

    def _score(self, gt: dict[str, Any], preds: list[tuple[list[float], Any]]) -> tuple[float, tuple[int, int, float]]:
        """(best box IoU, (I, U, IoU) of the best mask) of one key's GT against the predictions filed under it."""
        box = float(box_iou([p[0] for p in preds], [gt["box"]]).max()) if preds else 0.0
        if not self.masks:
            return box, (0, 0, 0.0)
        best = (*mask_intersection_union(None, gt["mask"]), 0.0)
        for _, mask in preds:
            inter, union = mask_intersection_union(mask, gt["mask"])
            iou = inter / union if union > 0 else 0.0
            if iou > best[2]:
                best = (inter, union, iou)
        return box, best

    def __repr__(self) -> str:
        return f"KeyedReferringMetric(thresholds={self.thresholds}, masks={self.masks})"


def _rle(mask: Mask) -> dict[str, Any]:
    """Masks travel (``all_gather_object``) and wait for :meth:`compute` as compact RLE, not as arrays."""
    return dict(mask) if isinstance(mask, Mapping) else mask_to_rle(to_bool_mask(mask))

