"""Box/mask IoU and greedy matching against hand-computed values."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from padt.metrics import best_box_iou, box_iou, greedy_match, mask_intersection_union, mask_iou, to_bool_mask


def test_box_iou_hand_values() -> None:
    a = [[0, 0, 10, 10]]
    b = [[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 20]]
    # inter 25, union 100+100-25=175; identical; disjoint; contained: 100 / 200.
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 1.0, 0.0, 0.5]])


def test_box_iou_degenerate_and_empty() -> None:
    # Two zero-area boxes at the same place: union 0 -> IoU 0 (reference calculate_iou), not nan.
    assert box_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0.0
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    with pytest.raises(ValueError):
        box_iou([[0, 0, 1]], [[0, 0, 1, 1]])


def test_best_box_iou_is_max_over_predictions() -> None:
    gt = [0, 0, 10, 10]
    # IoUs 0, 25/175, 1/2 -> max 0.5
    assert best_box_iou([[50, 50, 60, 60], [5, 5, 15, 15], [0, 0, 10, 5]], gt) == pytest.approx(0.5)
    assert best_box_iou([], gt) == 0.0
    assert best_box_iou(None, gt) == 0.0


def _square(size: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_iou_arrays_and_rle_agree() -> None:
    pred = _square(10, 0, 4, 0, 4)  # 16 px
    gt = _square(10, 2, 6, 2, 6)  # 16 px, overlap 2x2 = 4 -> union 28
    assert mask_intersection_union(pred, gt) == (4, 28)
    rle_p = mask_utils.encode(np.asfortranarray(pred.astype(np.uint8)))
    rle_g = mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
    rle_g_str = {"size": rle_g["size"], "counts": rle_g["counts"].decode("ascii")}  # as read from json
    assert mask_intersection_union(rle_p, rle_g) == (4, 28)
    assert mask_intersection_union(rle_p, rle_g_str) == (4, 28)
    assert mask_intersection_union(pred, rle_g_str) == (4, 28)
    assert mask_iou(pred, gt) == pytest.approx(4 / 28)
    np.testing.assert_array_equal(to_bool_mask(rle_g_str), gt)


def test_uncompressed_rle() -> None:
    # Column-major runs for a 2x2 mask: 1 zero, then 3 ones -> [[0, 1], [1, 1]]
    rle = {"size": [2, 2], "counts": [1, 3]}
    np.testing.assert_array_equal(to_bool_mask(rle), [[False, True], [True, True]])


def test_mask_iou_empty_cases() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    gt = _square(4, 0, 2, 0, 2)
    assert mask_iou(None, empty) == 1.0  # nothing predicted, nothing there
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(None, gt) == 0.0
    assert mask_intersection_union(None, gt) == (0, 4)


def test_mask_validation() -> None:
    with pytest.raises(TypeError):
        mask_iou(np.full((4, 4), 0.7), np.zeros((4, 4), dtype=bool))  # probabilities must be thresholded
    with pytest.raises(ValueError):
        mask_iou(np.zeros((4, 4), dtype=bool), np.zeros((4, 5), dtype=bool))


# Unit-height boxes along x, so IoU = 1D overlap / 1D union (all widths 10):
#   G1=[0,10], G2=[3,13], A=[1,11], B=[-3,7]
#   IoU(A,G1)=9/11=.818  IoU(A,G2)=8/12=.667  IoU(B,G1)=7/13=.538  IoU(B,G2)=4/16=.25
G1, G2 = [0, 0, 10, 1], [3, 0, 13, 1]
A, B = [1, 0, 11, 1], [-3, 0, 7, 1]


def test_greedy_match_differs_from_naive_and_optimal() -> None:
    # Greedy takes (A,G1) at .818; (A,G2) and (B,G1) are then blocked; (B,G2) is below 0.5 -> 1 match.
    assert greedy_match([A, B], [G1, G2]) == [(0, 0)]
    # Naive "each prediction hits some GT at >= 0.5" would give 2 of 2, and the optimal one-to-one
    # matching (A,G2)+(B,G1) also 2: greedy is neither.
    ious = box_iou([A, B], [G1, G2])
    assert (ious.max(axis=1) >= 0.5).sum() == 2
    assert ious[0, 1] >= 0.5 and ious[1, 0] >= 0.5


def test_greedy_match_threshold_and_ties() -> None:
    assert greedy_match([A, B], [G1, G2], iou_threshold=0.9) == []
    # Two identical predictions on one GT: the lower index wins, the other stays unmatched.
    assert greedy_match([G1, G1], [G1]) == [(0, 0)]
    assert greedy_match([], [G1]) == []
    assert greedy_match([G1], None) == []
