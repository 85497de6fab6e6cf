"""Box-quality score loss of the VRT decoder, PaDT §3.1.

The score head predicts a logit ``s`` per object; ``2 * sigmoid(s) - 1`` lies in ``(-1, 1)`` like
GIoU and is regressed onto the (detached) GIoU of the object's predicted box, so at inference it
ranks boxes by expected quality.
"""

from __future__ import annotations

from torch import Tensor

from .box import num_boxes_normaliser

__all__ = ["score_loss"]


def score_loss(score_logits: Tensor, giou: Tensor, num_boxes: float | Tensor | None = None) -> Tensor:
    """``sum_k (2 * sigmoid(s_k) - 1 - giou_k.detach())**2 / num_boxes``.

    Args:
        score_logits: ``[K]`` or ``[K, 1]`` raw score-head outputs.
        giou: ``[K]`` GIoU of each predicted box with its ground truth
            (``box_loss(...)["giou_pairs"]``); detached here, so the score never pushes on the
            boxes.
        num_boxes: divisor; defaults to K, never below 1.

    Returns:
        Scalar float32; an exact 0 attached to ``score_logits`` when K = 0.
    """
    s = score_logits.float().reshape(-1)
    if s.shape != giou.shape:
        raise ValueError(f"one score per box expected: {tuple(score_logits.shape)} vs giou {tuple(giou.shape)}")
    n = num_boxes_normaliser(num_boxes, s.shape[0], s)
    target = giou.detach().float()
    return ((2.0 * s.sigmoid() - 1.0 - target) ** 2).sum() / n
