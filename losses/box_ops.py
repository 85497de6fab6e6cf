"""Every box conversion and overlap measure of padt, on torch tensors; this module imports only torch.

Conventions:
    * A box is the last dimension (size 4) of a float tensor ``[..., 4]``, in one of three layouts:
      ``xyxy`` = ``(x1, y1, x2, y2)`` (left, top, right, bottom edges), ``cxcywh`` = ``(cx, cy, w, h)`` (centre and
      size) and ``xywh`` = ``(x, y, w, h)`` (top-left corner and size, COCO's ``bbox``).
    * Coordinates are continuous: a box covering pixel columns 0..9 has ``x1 = 0`` and ``x2 = 10``, and its area is
      ``(x2 - x1) * (y2 - y1)`` with no ``+ 1`` (as in pycocotools).
    * *Pixels* are pixels of the original image. *Normalised* coordinates are relative to the image size
      (``x / width``, ``y / height``). The processor stretches the whole image to its resized size without padding,
      so a normalised box describes the same region of the original and of the resized image.
    * ``image_hw`` is ``(height, width)``, in that order.
    * Functions never modify their input; conversions keep its dtype and device. Results are plain IEEE operations
      on the coordinates, so float64 input reproduces the same formula in Python floats bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_xyxy_to_xywh",
    "clip_boxes",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "normalised_to_pixels",
    "pixels_to_normalised",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` ``(cx, cy, w, h)`` -> ``[..., 4]`` ``(x1, y1, x2, y2)``, same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` ``(x1, y1, x2, y2)`` -> ``[..., 4]`` ``(cx, cy, w, h)``, same units."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` ``(x1, y1, x2, y2)`` -> ``[..., 4]`` ``(x1, y1, w, h)`` (COCO ``bbox``), same units."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` ``(x1, y1, w, h)`` (COCO ``bbox``) -> ``[..., 4]`` ``(x1, y1, x2, y2)``, same units."""
    x1, y1, w, h = boxes.unbind(-1)
    return torch.stack((x1, y1, x1 + w, y1 + h), dim=-1)


def _non_negative(lengths: Tensor) -> Tensor:
    # ``+ 0`` turns the -0.0 that clamp lets through into +0.0 (and changes nothing else), so float64 results
    # equal those of numpy's ``clip(x, 0, None)``, which the metrics used before, bit for bit.
    return lengths.clamp(min=0) + 0


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[...]`` areas ``(x2 - x1) * (y2 - y1)``.

    An inverted side (``x2 < x1`` or ``y2 < y1``) counts as length 0, so such a box is empty rather than of negative
    (or, with both sides inverted, positive) area.
    """
    width = _non_negative(boxes_xyxy[..., 2] - boxes_xyxy[..., 0])
    height = _non_negative(boxes_xyxy[..., 3] - boxes_xyxy[..., 1])
    return width * height


def _intersection_and_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union areas of xyxy boxes that broadcast against each other."""
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    overlap = _non_negative(bottom_right - top_left)
    intersection = overlap[..., 0] * overlap[..., 1]
    return intersection, box_area(boxes1) + box_area(boxes2) - intersection


def _enclosing_area(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Area of the smallest box enclosing both of each pair of broadcasting xyxy boxes."""
    top_left = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    size = _non_negative(bottom_right - top_left)
    return size[..., 0] * size[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of every box of ``boxes1`` ``[N, 4]`` with every box of ``boxes2`` ``[M, 4]`` (xyxy) -> ``[N, M]``.

    A pair whose union is 0 (two empty boxes) has IoU 0. The division is exact (no epsilon), as the evaluation
    metrics need; the losses use :func:`elementwise_box_iou`, whose epsilon keeps gradients finite.
    """
    intersection, union = _intersection_and_union(boxes1[:, None, :], boxes2[None, :, :])
    return torch.where(union > 0, intersection / union, torch.zeros_like(union))


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """IoU of matched pairs: box ``i`` of ``boxes1`` with box ``i`` of ``boxes2``; no ``N x M`` matrix is built.

    PaDT pairs object ``j`` of the answer with ground-truth object ``j``, so the losses only need these pairs.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[N, 4]`` xyxy, box ``i`` is compared with ``boxes1[i]``.
        eps: lower bound of the union, so two zero-area boxes give IoU 0 instead of NaN.

    Returns:
        ``(iou, union)``, each ``[N]``.
    """
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"matched boxes need equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    intersection, union = _intersection_and_union(boxes1, boxes2)
    return intersection / union.clamp(min=eps), union


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
    enclosing = _enclosing_area(boxes1, boxes2).clamp(min=eps)
    return iou - (enclosing - union) / enclosing


def _xyxy_scale(boxes: Tensor, height: float, width: float) -> Tensor:
    return boxes.new_tensor([width, height, width, height])


def clip_boxes(boxes_xyxy: Tensor, height: float = 1.0, width: float = 1.0) -> Tensor:
    """``[..., 4]`` xyxy boxes with x clamped to ``[0, width]`` and y to ``[0, height]``.

    Pixel boxes take the image's ``height`` and ``width``; the defaults clip normalised boxes to ``[0, 1]``.
    NaN stays NaN (callers that need finite boxes check for it).
    """
    return boxes_xyxy.clamp(min=boxes_xyxy.new_zeros(4), max=_xyxy_scale(boxes_xyxy, height, width))


def normalised_to_pixels(boxes_xyxy: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """``[..., 4]`` xyxy normalised to an image of ``image_hw = (height, width)`` -> xyxy pixels of that image."""
    height, width = image_hw
    return boxes_xyxy * _xyxy_scale(boxes_xyxy, height, width)


def pixels_to_normalised(boxes_xyxy: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """``[..., 4]`` xyxy pixels of an image of ``image_hw = (height, width)`` -> xyxy normalised to its size."""
    height, width = image_hw
    return boxes_xyxy / _xyxy_scale(boxes_xyxy, height, width)
