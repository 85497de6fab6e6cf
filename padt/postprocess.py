"""From the decoder's normalised outputs to original-image pixels.

The decoder predicts boxes as (cx, cy, w, h) normalised to the resized image, and masks as logits on a grid of
``s x s`` sub-pixels per ViT patch. The processor stretches the whole image to the resized size (no padding),
so normalised coordinates carry over to the original image unchanged: only a scale by the original size is
needed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2), same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h), same units."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def boxes_to_pixels(boxes_cxcywh: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """[K, 4] normalised (cx, cy, w, h) -> [K, 4] (x1, y1, x2, y2) in pixels of an image of ``image_hw``.

    Boxes are clipped to the image, so ``0 <= x1 <= x2 <= width`` and ``0 <= y1 <= y2 <= height``.
    """
    height, width = image_hw
    xyxy = cxcywh_to_xyxy(boxes_cxcywh.float()).clamp(0.0, 1.0)
    scale = xyxy.new_tensor([width, height, width, height])
    return xyxy * scale


def mask_to_pixels(mask_logits: torch.Tensor, valid_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Mask logits [Hm, Wm] (padded) -> bool [H, W] mask of the original image.

    The valid ``valid_hw`` corner is resized bilinearly to the original size and thresholded at logit 0
    (probability 0.5), as the reference evaluation does.
    """
    vh, vw = valid_hw
    logits = mask_logits[:vh, :vw].float()[None, None]
    resized = F.interpolate(logits, size=tuple(image_hw), mode="bilinear", align_corners=False)[0, 0]
    return (resized > 0).cpu().numpy()
