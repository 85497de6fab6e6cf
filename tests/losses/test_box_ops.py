"""Box conversions and matched-pair GIoU against hand-computed values."""

import torch

from padt.losses import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
)


def test_conversion_by_hand_and_round_trip():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [1.0, 2.0, 2.0, 4.0]])
    xyxy = torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.0, 0.0, 2.0, 4.0]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    boxes = torch.rand(5, 3, 4)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)


def test_giou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.5, 0.9]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [0.1, 0.2, 0.5, 0.9]])
    # pair 0: inter 1, union 4 + 4 - 1 = 7, enclosing 3 x 3 = 9 -> 1/7 - 2/9 = -5/63
    # pair 1: disjoint, union 2, enclosing 3 x 1 = 3 -> 0 - 1/3
    # pair 2: identical -> 1
    iou, union = elementwise_box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([1 / 7, 0.0, 1.0]))
    torch.testing.assert_close(union[:2], torch.tensor([7.0, 2.0]))
    giou = elementwise_generalized_box_iou(a, b)
    assert giou.shape == (3,)  # matched pairs, not an N x M matrix
    torch.testing.assert_close(giou, torch.tensor([-5 / 63, -1 / 3, 1.0]))


def test_giou_zero_area_pair_is_finite():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert torch.isfinite(elementwise_generalized_box_iou(point, point)).all()
