"""Box conversions and matched-pair (elementwise) IoU / GIoU, self-contained for the losses.

Conventions: boxes are ``[..., 4]`` float tensors, either ``(cx, cy, w, h)`` or ``(x0, y0, x1,
    y1)``, in the same
units on both sides (PaDT uses coordinates normalised to ``[0, 1]`` of the processed, 28-px-multiple
image). The IoU functions compare box ``i`` of the first argument with box ``i`` of the second
(one-to-one matching, as PaDT pairs object ``j`` of the answer with ground-truth object ``j``); they
never build an ``N x M`` matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` ``(cx, cy, w, h)`` -> ``[..., 4]`` ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` ``(x0, y0, x1, y1)`` -> ``[..., 4]`` ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def _area(boxes_xyxy: Tensor) -> Tensor:
    # Clamped so that an inverted box counts as empty rather than as negative area.
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]).clamp(min=0) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1]).clamp(
        min=0
    )


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """IoU of matched pairs.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[N, 4]`` xyxy, box ``i`` is compared with ``boxes1[i]``.
        eps: lower bound of the union, so two zero-area boxes give IoU 0 instead of NaN.

    Returns:
        ``(iou, union)``, each ``[N]``.
    """
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"matched boxes need equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(boxes1) + _area(boxes2) - inter
    return inter / union.clamp(min=eps), union


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalised IoU (Rezatofighi et al. 2019) of matched pairs, in ``[-1, 1]``.

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with ``C`` the smallest box enclosing both.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[N, 4]`` xyxy.
        eps: lower bound of the union and of ``|C|`` (degenerate, zero-area pairs).

    Returns:
        ``[N]`` GIoU of ``boxes1[i]`` with ``boxes2[i]``.
    """
    iou, union = elementwise_box_iou(boxes1, boxes2, eps)
    lt = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = (wh[..., 0] * wh[..., 1]).clamp(min=eps)
    return iou - (enclosing - union) / enclosing
