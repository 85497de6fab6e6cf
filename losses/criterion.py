"""PaDT training criterion: every loss term by name, one explicit weight per term (DETR ``weight_dict`` style).

Mapping onto the paper's total ``sft + bbox + score + mask`` (all weights 1 in the official
scripts):

=========  ====================================================================
paper      our terms (each unweighted in the returned dict)
=========  ====================================================================
sft        ``ce``: robust per-token cross-entropy (:mod:`.robust_ce`)
bbox       ``box_giou`` (1 - mean GIoU) + ``box_l1`` (L1 over 4 coords / boxes)
score      ``score``: (2 sigmoid(s) - 1 - GIoU)^2 summed / boxes
mask       ``mask_dice`` + ``mask_focal``, averaged over objects with a mask
=========  ====================================================================

With the default weights (all 1.0) ``loss`` equals the reference total, up to the documented
normalisation details (no ``+1e-4`` in divisors; samples without supervised tokens are left out of
the CE mean).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .box import box_loss
from .mask import mask_loss
from .robust_ce import robust_token_cross_entropy
from .score import score_loss

__all__ = ["LOSS_TERMS", "PaDTCriterion", "check_finite"]

LOSS_TERMS: tuple[str, ...] = ("ce", "box_l1", "box_giou", "score", "mask_dice", "mask_focal")


def check_finite(terms: Mapping[str, Tensor | float], step: int) -> None:
    """Raise ``ValueError`` naming the step and the first non-finite term; return quietly otherwise.

    Detecting this (and deciding to skip or stop) is the trainer's job; this helper only makes the
    message useful. One device sync for the common all-finite case.
    """
    tensors = {k: v for k, v in terms.items() if isinstance(v, Tensor)}
    if tensors and not bool(torch.stack([v.detach().float().isfinite().all() for v in tensors.values()]).all()):
        for name, value in tensors.items():
            if not bool(value.detach().isfinite().all()):
                shown = value.item() if value.numel() == 1 else value.detach().cpu().tolist()
                raise ValueError(f"step {step}: loss term {name!r} is not finite ({shown})")
    for name, value in terms.items():
        if not isinstance(value, Tensor) and not math.isfinite(float(value)):
            raise ValueError(f"step {step}: loss term {name!r} is not finite ({value})")


class PaDTCriterion(nn.Module):
    """Weighted sum of the PaDT losses; a pure function of its inputs (no trainer state, no parameters).

    Args:
        weights: weight per term name in :data:`LOSS_TERMS`; missing names keep 1.0, unknown names
            raise. A term of weight 0 is still computed and logged but left out of ``loss`` (so a
            NaN there cannot poison it).
        chunk_size: rows per logits chunk of the robust CE.
    """

    def __init__(self, weights: Mapping[str, float] | None = None, *, chunk_size: int = 512) -> None:
        super().__init__()
        unknown = set(weights or {}) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {list(LOSS_TERMS)}")
        self.weight_dict: dict[str, float] = {name: 1.0 for name in LOSS_TERMS}
        self.weight_dict.update({k: float(v) for k, v in (weights or {}).items()})
        self.chunk_size = chunk_size

    def forward(
        self,
        *,
        hidden: Tensor,
        labels: Tensor,
        text_weight: Tensor,
        prototypes: Tensor,
        vrt_allowed: Tensor | None = None,
        vrt_exclude: Tensor | None = None,
        pred_boxes: Tensor | None = None,
        gt_boxes: Tensor | None = None,
        score_logits: Tensor | None = None,
        mask_logits: Tensor | None = None,
        gt_masks: Tensor | None = None,
        mask_valid: Tensor | None = None,
        mask_valid_hw: Tensor | None = None,
        has_mask: Tensor | None = None,
        num_boxes: float | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Compute every term.

        Args:
            hidden, labels, text_weight, prototypes, vrt_allowed, vrt_exclude: see
                :func:`~padt.losses.robust_ce.robust_token_cross_entropy` (``[B, T, D]``, ``[B,
                T]``, ``[V, D]``, ``[P, D]``, ``[B, P]`` bool, ``[E, 3]`` long).
            pred_boxes: ``[K, 4]`` decoder boxes ``(cx, cy, w, h)`` in ``[0, 1]``; ``None`` or K = 0
                when the batch names no object (the decoder terms are then exact zeros and training
                runs on text alone).
            gt_boxes: ``[K, 4]`` matched ground truth, same convention, object ``j`` <-> prediction
                ``j``.
            score_logits: ``[K]`` or ``[K, 1]`` score-head logits; ``None`` gives ``score`` = 0.
            mask_logits: ``[K, H, W]`` mask logits; ``None`` gives zero mask terms.
            gt_masks: ``[K, H, W]`` ground truth on the same grid.
            mask_valid: ``[K, H, W]`` bool valid area, or ``mask_valid_hw``: ``[K, 2]`` ``(h, w)``
                top-left block.
            has_mask: ``[K]`` bool, objects that have a mask (others skip the mask terms).
            num_boxes: divisor of the box and score sums (e.g. all-reduced over ranks); default K.

        Returns:
            ``loss`` (weighted total, attached to the graph), every name of :data:`LOSS_TERMS`
            (unweighted, detached, for logging) and ``token_accuracy`` (detached metric: correct /
            supervised tokens).
        """
        ce = robust_token_cross_entropy(
            hidden,
            labels,
            text_weight,
            prototypes,
            vrt_allowed,
            vrt_exclude,
            chunk_size=self.chunk_size,
        )
        # Zeros that are part of the graph: backward still works on text-only batches.
        anchor = pred_boxes if pred_boxes is not None else hidden
        zero = anchor.flatten()[:0].sum().float()
        terms: dict[str, Tensor] = {"ce": ce.loss}
        terms.update(_box_terms(pred_boxes, gt_boxes, score_logits, num_boxes, zero))
        terms.update(_mask_terms(mask_logits, gt_masks, mask_valid, mask_valid_hw, has_mask, zero))
        loss = sum((w * terms[name] for name, w in self.weight_dict.items() if w != 0.0), start=zero)
        out = {"loss": loss}
        out.update({name: terms[name].detach() for name in LOSS_TERMS})
        out["token_accuracy"] = (ce.num_correct.sum() / ce.num_tokens.sum().clamp(min=1)).detach().float()
        return out


def _box_terms(
    pred_boxes: Tensor | None,
    gt_boxes: Tensor | None,
    score_logits: Tensor | None,
    num_boxes: float | Tensor | None,
    zero: Tensor,
) -> dict[str, Tensor]:
    """``box_l1``, ``box_giou`` and ``score``; ``zero`` for each when there is no predicted box (or no score)."""
    if pred_boxes is None or pred_boxes.shape[0] == 0:
        return {"box_l1": zero, "box_giou": zero, "score": zero}
    if gt_boxes is None:
        raise ValueError("pred_boxes given without gt_boxes")
    boxes = box_loss(pred_boxes, gt_boxes, num_boxes)
    score = score_loss(score_logits, boxes["giou_pairs"], num_boxes) if score_logits is not None else zero
    return {"box_l1": boxes["l1"], "box_giou": boxes["giou"], "score": score}


def _mask_terms(
    mask_logits: Tensor | None,
    gt_masks: Tensor | None,
    mask_valid: Tensor | None,
    mask_valid_hw: Tensor | None,
    has_mask: Tensor | None,
    zero: Tensor,
) -> dict[str, Tensor]:
    """``mask_dice`` and ``mask_focal``; ``zero`` for both when there are no mask logits."""
    if mask_logits is None or mask_logits.shape[0] == 0:
        return {"mask_dice": zero, "mask_focal": zero}
    if gt_masks is None:
        raise ValueError("mask_logits given without gt_masks")
    masks = mask_loss(mask_logits, gt_masks, mask_valid, valid_hw=mask_valid_hw, has_mask=has_mask)
    return {"mask_dice": masks["dice"], "mask_focal": masks["focal"]}
