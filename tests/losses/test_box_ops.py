"""Box conversions, areas, pairwise IoU and matched-pair IoU / GIoU against hand-computed values."""

import torch

from padt.losses import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    clip_boxes,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    normalised_to_pixels,
    pixels_to_normalised,
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


def test_xywh_conversion_by_hand_and_round_trips():
    xyxy = torch.tensor([[1.0, 2.0, 4.0, 8.0], [0.25, 0.5, 0.75, 0.5]])
    xywh = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.25, 0.5, 0.5, 0.0]])
    torch.testing.assert_close(box_xyxy_to_xywh(xyxy), xywh)
    torch.testing.assert_close(box_xywh_to_xyxy(xywh), xyxy)
    generator = torch.Generator().manual_seed(0)
    cxcywh = torch.rand(6, 2, 4, generator=generator, dtype=torch.float64)
    there_and_back = box_xyxy_to_cxcywh(box_xywh_to_xyxy(box_xyxy_to_xywh(box_cxcywh_to_xyxy(cxcywh))))
    torch.testing.assert_close(there_and_back, cxcywh)


def test_normalised_and_pixels_take_height_then_width():
    normalised = torch.tensor([0.1, 0.25, 0.5, 1.0], dtype=torch.float64)
    pixels = normalised_to_pixels(normalised, (200, 640))  # (height, width)
    assert pixels.tolist() == [64.0, 50.0, 320.0, 200.0]
    torch.testing.assert_close(pixels_to_normalised(pixels, (200, 640)), normalised)
    boxes = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pixels_to_normalised(normalised_to_pixels(boxes, (37, 91)), (37, 91)), boxes)


def test_float64_results_are_those_of_python_floats():
    # Records and COCO results are built from these: float64 must reproduce the former Python arithmetic exactly.
    generator = torch.Generator().manual_seed(2)
    for box in torch.rand(50, 4, generator=generator, dtype=torch.float64).tolist():
        x1, y1, x2, y2 = box
        tensor = torch.tensor(box, dtype=torch.float64)
        assert normalised_to_pixels(tensor, (480, 643)).tolist() == [x1 * 643, y1 * 480, x2 * 643, y2 * 480]
        assert pixels_to_normalised(tensor, (480, 643)).tolist() == [x1 / 643, y1 / 480, x2 / 643, y2 / 480]
        assert box_xyxy_to_cxcywh(tensor).tolist() == [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        assert box_xyxy_to_xywh(tensor).tolist() == [x1, y1, x2 - x1, y2 - y1]
        x, y, w, h = box  # the same numbers read as a COCO box
        assert box_xywh_to_xyxy(tensor).tolist() == [x, y, x + w, y + h]


def test_area_by_hand_and_inverted_boxes_are_empty():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [3.0, 0.0, 1.0, 2.0], [3.0, 4.0, 1.0, 2.0]])
    torch.testing.assert_close(box_area(boxes), torch.tensor([6.0, 0.0, 0.0, 0.0]))  # both sides inverted: 0, not 4
    assert box_area(boxes.view(2, 2, 4)).shape == (2, 2)
    # a -0.0 side comes out as +0.0, as numpy's clip gave it (the metrics compare float64 bit for bit)
    assert not torch.signbit(box_area(torch.tensor([[0.0, 0.0, -0.0, 1.0]], dtype=torch.float64))).any()


def test_pairwise_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [0.0, 1 / 4, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(box_iou(a, b), expected)
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou(point, point).tolist() == [[0.0]]  # empty union: 0, not NaN
    assert box_iou(torch.zeros(0, 4), b.float()).shape == (0, 3)


def test_pairwise_iou_diagonal_equals_elementwise_iou():
    generator = torch.Generator().manual_seed(3)
    boxes1 = box_cxcywh_to_xyxy(torch.rand(8, 4, generator=generator))
    boxes2 = box_cxcywh_to_xyxy(torch.rand(8, 4, generator=generator))
    pairwise = box_iou(boxes1, boxes2)
    assert pairwise.shape == (8, 8)
    torch.testing.assert_close(pairwise.diagonal(), elementwise_box_iou(boxes1, boxes2)[0])
    torch.testing.assert_close(pairwise[2, 5:6], elementwise_box_iou(boxes1[2:3], boxes2[5:6])[0])


def test_clip_boxes_to_pixels_and_to_the_unit_square():
    pixels = torch.tensor([[-3.0, 5.0, 700.0, 300.0], [10.0, -1.0, 20.0, 30.0]])
    expected = torch.tensor([[0.0, 5.0, 640.0, 240.0], [10.0, 0.0, 20.0, 30.0]])
    torch.testing.assert_close(clip_boxes(pixels, 240, 640), expected)  # (height, width)
    normalised = torch.tensor([-0.01, 0.2, 1.003, 0.9])
    torch.testing.assert_close(clip_boxes(normalised), torch.tensor([0.0, 0.2, 1.0, 0.9]))
    assert torch.isnan(clip_boxes(torch.tensor([float("nan"), 0.0, 1.0, 1.0]))[0])
