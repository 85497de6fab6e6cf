"""Mask losses of the VRT decoder: dice + sigmoid focal over each object's valid area, PaDT §3.1.

Predicted masks are zero-padded to the batch's largest mask grid, so each object carries a validity
region; pixels outside it are neither foreground nor background and take no part in either loss.
Objects without a ground-truth mask (``has_mask`` False, e.g. box-only data) are left out of both
averages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mask_loss", "valid_from_hw"]


def valid_from_hw(valid_hw: Tensor, height: int, width: int) -> Tensor:
    """``[K, 2]`` ``(h, w)`` valid sizes -> ``[K, height, width]`` bool, True on the top-left ``h x w`` block."""
    valid_hw = valid_hw.long()
    rows = torch.arange(height, device=valid_hw.device)[None, :, None] < valid_hw[:, 0, None, None]
    cols = torch.arange(width, device=valid_hw.device)[None, None, :] < valid_hw[:, 1, None, None]
    return rows & cols


def mask_loss(
    mask_logits: Tensor,
    gt_masks: Tensor,
    valid: Tensor | None = None,
    *,
    valid_hw: Tensor | None = None,
    has_mask: Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> dict[str, Tensor]:
    """Dice and sigmoid focal loss per object over its valid pixels, averaged over objects with a mask.

    Args:
        mask_logits: ``[K, H, W]`` predicted logits.
        gt_masks: ``[K, H, W]`` bool or {0, 1} float ground truth, on the same grid.
        valid: ``[K, H, W]`` bool, pixels that count. Give this or ``valid_hw``; neither means every
            pixel counts.
        valid_hw: ``[K, 2]`` ``(h, w)``: the top-left ``h x w`` block of each object's grid counts.
        has_mask: ``[K]`` bool, objects that have a ground-truth mask; others are skipped. Default:
            all.
        alpha: focal weight of the foreground class (background gets ``1 - alpha``).
        gamma: focal focusing exponent.

    Returns:
        ``dice``: mean over counted objects of ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)``, sums
        over valid pixels, ``p = sigmoid(logit)``; ``focal``: mean over counted objects of the mean
        over valid pixels of ``alpha_t (1 - p_t)**gamma BCE``. An object counts when ``has_mask`` and
        it has at least one valid pixel. Whatever the logits hold outside the valid area (padding) has
        no effect, not even a NaN. Both are exact zeros attached to ``mask_logits`` when no object
        counts (K = 0 included).
    """
    if mask_logits.dim() != 3 or gt_masks.shape != mask_logits.shape:
        raise ValueError(
            f"mask_logits and gt_masks must be [K, H, W]: {tuple(mask_logits.shape)}, {tuple(gt_masks.shape)}"
        )
    if valid is not None and valid_hw is not None:
        raise ValueError("give valid or valid_hw, not both")
    K, H, W = mask_logits.shape
    logits = mask_logits.float()
    target = gt_masks.to(device=logits.device, dtype=torch.float32)
    if valid_hw is not None:
        valid = valid_from_hw(valid_hw.to(logits.device), H, W)
    if valid is None:
        valid = torch.ones(K, H, W, dtype=torch.bool, device=logits.device)
    elif valid.shape != mask_logits.shape:
        raise ValueError(f"valid must be [K, H, W] = {(K, H, W)}, got {tuple(valid.shape)}")
    valid = valid.to(device=logits.device, dtype=torch.bool)
    area = valid.flatten(1).sum(1).float()  # [K]
    counted = area > 0
    if has_mask is not None:
        counted = counted & has_mask.to(device=logits.device, dtype=torch.bool)
    num = counted.sum()
    if int(num) == 0:
        zero = logits.flatten()[:0].sum()
        return {"dice": zero, "focal": zero.clone()}

    # Padding and uncounted objects are replaced before any arithmetic (torch.where, not a multiply by 0):
    # a NaN/inf there must not reach the sums, nor the gradient (sigmoid'(NaN) * 0 is still NaN).
    valid = valid & counted[:, None, None]
    zero_px = torch.zeros_like(logits)
    x = torch.where(valid, logits, zero_px)
    t = torch.where(valid, target, zero_px)
    p = torch.where(valid, x.sigmoid(), zero_px)
    dice = 1.0 - (2.0 * (p * t).flatten(1).sum(1) + 1.0) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1.0)

    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1.0 - p) * (1.0 - t)
    alpha_t = alpha * t + (1.0 - alpha) * (1.0 - t)
    focal_px = torch.where(valid, alpha_t * (1.0 - p_t) ** gamma * bce, zero_px)
    focal = focal_px.flatten(1).sum(1) / area.clamp(min=1.0)

    zeros = torch.zeros_like(dice)
    return {
        "dice": torch.where(counted, dice, zeros).sum() / num,
        "focal": torch.where(counted, focal, zeros).sum() / num,
    }
