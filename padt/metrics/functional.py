"""Numpy building blocks shared by the metric objects: box IoU, mask IoU, greedy box matching.

Conventions:
    * Boxes are ``(x1, y1, x2, y2)`` in pixels of the original image ("xyxy pixels"), continuous coordinates: no
      ``+1`` in the area, as in pycocotools and the PaDT evaluation scripts. The box formulas themselves live in
      :mod:`padt.losses.box_ops`; :func:`box_area` and :func:`box_iou` run them in float64 and return numpy.
    * Masks are binary ``(H, W)`` arrays (bool or integer 0/1) or COCO RLE dicts ``{"size": [H, W], "counts":
      bytes | str | list[int]}`` as produced by ``pycocotools.mask.encode``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from padt.losses import box_ops
from padt.vision.masks import compressed_rle, rle_to_mask

Mask = np.ndarray | Mapping[str, Any]


def as_boxes(boxes: Any) -> np.ndarray:
    """Return ``boxes`` as a float64 ``(N, 4)`` xyxy array; ``None`` or an empty sequence gives ``(0, 4)``."""
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float64)
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) xyxy, got {arr.shape}")
    return arr


def _as_box_tensor(boxes: Any) -> torch.Tensor:
    return torch.as_tensor(as_boxes(boxes), dtype=torch.float64)


def box_area(boxes: Any) -> np.ndarray:
    """Float64 ``(N,)`` areas of ``(N, 4)`` xyxy boxes; inverted boxes (x2 < x1) count as area 0."""
    return box_ops.box_area(_as_box_tensor(boxes)).numpy()


def box_iou(boxes1: Any, boxes2: Any) -> np.ndarray:
    """Pairwise IoU of xyxy pixel boxes: ``(N, 4) x (M, 4) -> (N, M)`` float64.

    A pair whose union is 0 (two degenerate boxes) has IoU 0, as in the reference ``calculate_iou``.
    """
    return box_ops.box_iou(_as_box_tensor(boxes1), _as_box_tensor(boxes2)).numpy()


def best_box_iou(pred_boxes: Any, gt_box: Any) -> float:
    """Largest IoU between any predicted box and one GT box (REC scoring); 0.0 when there is no prediction."""
    preds = as_boxes(pred_boxes)
    if len(preds) == 0:
        return 0.0
    gt = as_boxes(gt_box)
    if len(gt) != 1:
        raise ValueError(f"expected exactly one GT box, got {len(gt)}")
    return float(box_iou(preds, gt).max())


def to_bool_mask(mask: Mask) -> np.ndarray:
    """Decode an RLE dict or validate an array; returns a bool ``(H, W)`` array.

    Float arrays are refused: they are usually probabilities or logits that must be thresholded first, and
    ``astype(bool)`` would silently treat 0.01 as foreground.
    """
    if isinstance(mask, Mapping):
        return rle_to_mask(mask).astype(bool)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        raise TypeError("mask is a float array; threshold it (e.g. prob > 0.5) before passing it")
    return arr.astype(bool)


def _mask_shape(mask: Mask) -> tuple[int, int]:
    if isinstance(mask, Mapping):
        return int(mask["size"][0]), int(mask["size"][1])
    shape = np.shape(mask)
    if len(shape) != 2:
        raise ValueError(f"mask must be (H, W), got shape {shape}")
    return int(shape[0]), int(shape[1])


def mask_intersection_union(pred: Mask | None, gt: Mask) -> tuple[int, int]:
    """Pixel counts ``(intersection, union)`` of two masks; ``pred=None`` means an empty prediction.

    Two RLE dicts are intersected in RLE form (no decoding); anything else is decoded to bool arrays.
    """
    if pred is None:
        if isinstance(gt, Mapping):
            return 0, int(mask_utils.area(compressed_rle(gt)))
        return 0, int(to_bool_mask(gt).sum())
    if _mask_shape(pred) != _mask_shape(gt):
        raise ValueError(f"mask shapes differ: pred {_mask_shape(pred)} vs gt {_mask_shape(gt)}")
    if isinstance(pred, Mapping) and isinstance(gt, Mapping):
        rles = [compressed_rle(pred), compressed_rle(gt)]
        inter = int(mask_utils.area(mask_utils.merge(rles, intersect=True)))
        union = int(mask_utils.area(mask_utils.merge(rles, intersect=False)))
        return inter, union
    p, g = to_bool_mask(pred), to_bool_mask(gt)
    return int(np.logical_and(p, g).sum()), int(np.logical_or(p, g).sum())


def mask_iou(pred: Mask | None, gt: Mask) -> float:
    """IoU of two binary masks. Empty prediction and empty GT agree perfectly, so their IoU is 1.0.

    (The reference ``calculate_ciou`` returns 0.0 there; RefCOCO GT masks are never empty, so published numbers
    are unaffected.)
    """
    inter, union = mask_intersection_union(pred, gt)
    return inter / union if union > 0 else 1.0


def greedy_match(pred_boxes: Any, gt_boxes: Any, iou_threshold: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of predicted to GT boxes (xyxy pixels).

    All ``(pred, gt)`` pairs are visited in order of decreasing IoU (ties: lower pred index, then lower GT index
    first); a pair is taken when neither box is matched yet and its IoU is ``>= iou_threshold``. This is *not*
    the maximum matching (Hungarian): a high-IoU pair may block two lower-IoU pairs.

    Returns:
        ``[(pred_index, gt_index), ...]`` in the order the pairs were taken.
    """
    preds, gts = as_boxes(pred_boxes), as_boxes(gt_boxes)
    if len(preds) == 0 or len(gts) == 0:
        return []
    ious = box_iou(preds, gts)
    # Stable sort of the row-major flattening makes the tie-break (pred, then gt index) deterministic.
    order = np.argsort(-ious, axis=None, kind="stable")
    used_pred = np.zeros(len(preds), dtype=bool)
    used_gt = np.zeros(len(gts), dtype=bool)
    matches: list[tuple[int, int]] = []
    for flat in order:
        i, j = divmod(int(flat), len(gts))
        if ious[i, j] < iou_threshold:
            break  # sorted: every remaining pair is below the threshold too
        if not used_pred[i] and not used_gt[j]:
            used_pred[i] = used_gt[j] = True
            matches.append((i, j))
    return matches
