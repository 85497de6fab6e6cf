"""Box regression loss of the VRT decoder: (1 - GIoU) and L1 on matched pairs, PaDT §3.1.

Matching is one-to-one and in order: the j-th object named in the answers is compared with the j-th
ground-truth object, so no Hungarian step is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou

__all__ = ["box_loss", "num_boxes_normaliser"]


def num_boxes_normaliser(num_boxes: float | Tensor | None, k: int, like: Tensor) -> Tensor:
    """The divisor of the per-object sums: ``num_boxes`` if given (e.g. all-reduced over ranks, as DETR does),
    else the local object count ``k``; never below 1 so that an empty batch yields 0 instead of NaN."""
    n = torch.as_tensor(k if num_boxes is None else num_boxes, dtype=torch.float32, device=like.device)
    return n.clamp(min=1.0)


def box_loss(pred_cxcywh: Tensor, gt_cxcywh: Tensor, num_boxes: float | Tensor | None = None) -> dict[str, Tensor]:
    """GIoU and L1 losses of matched boxes.

    Args:
        pred_cxcywh: ``[K, 4]`` predicted ``(cx, cy, w, h)``, normalised to ``[0, 1]`` of the
            processed image.
        gt_cxcywh: ``[K, 4]`` ground truth in the same convention (use ``box_xyxy_to_cxcywh`` on
            xyxy data).
        num_boxes: divisor of the sums; defaults to K (see :func:`num_boxes_normaliser`).

    Returns:
        ``giou``: scalar ``1 - sum(GIoU) / num_boxes`` (``1 - mean GIoU`` when ``num_boxes`` is K);
        ``l1``: scalar ``sum |pred - gt|`` over the K x 4 coordinates ``/ num_boxes``;
        ``giou_pairs``: ``[K]`` float32 GIoU of each pair, still attached to the graph (the score
            loss detaches it).
        With K = 0 both losses are exact zeros attached to ``pred_cxcywh``.
    """
    if pred_cxcywh.shape != gt_cxcywh.shape or pred_cxcywh.shape[-1:] != (4,) or pred_cxcywh.dim() != 2:
        raise ValueError(
            f"pred and gt must both be [K, 4], got {tuple(pred_cxcywh.shape)} and {tuple(gt_cxcywh.shape)}"
        )
    pred = pred_cxcywh.float()
    gt = gt_cxcywh.to(device=pred.device, dtype=torch.float32)
    k = pred.shape[0]
    n = num_boxes_normaliser(num_boxes, k, pred)
    giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(gt))
    if k == 0:
        zero = pred.sum()  # sum of an empty tensor: 0 with a grad_fn
        return {"giou": zero, "l1": zero.clone(), "giou_pairs": giou}
    return {
        "giou": 1.0 - giou.sum() / n,
        "l1": (pred - gt).abs().sum() / n,
        "giou_pairs": giou,
    }
