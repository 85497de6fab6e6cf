"""RECAccuracy and RESIoU against hand-computed values."""

import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from padt.metrics import RECAccuracy, RESIoU

GT = [0, 0, 10, 10]
# Per-sample predictions and best IoU with GT (area 100):
PREDS = [
    [[0, 0, 10, 10]],  # 1.0
    [[0, 0, 10, 7], [50, 50, 60, 60]],  # max(70/100, 0) = 0.7
    [[5, 0, 15, 10]],  # 50/150 = 1/3
    [],  # no prediction -> 0
    [[0, 0, 10, 5], [0, 0, 10, 6]],  # max(0.5, 0.6) = 0.6
]
BEST = [1.0, 0.7, 1 / 3, 0.0, 0.6]


def test_rec_accuracy_several_thresholds() -> None:
    m = RECAccuracy(thresholds=(0.5, 0.6, 0.75))
    m.update(PREDS, [GT] * 5)
    out = m.compute()
    # >= 0.5: 1.0, 0.7, 0.6 -> 3/5;  >= 0.6: same 3/5 (0.6 counts, threshold is inclusive);  >= 0.75: 1/5
    assert out["acc@0.5"] == pytest.approx(3 / 5)
    assert out["acc@0.6"] == pytest.approx(3 / 5)
    assert out["acc@0.75"] == pytest.approx(1 / 5)
    assert out["mean_iou"] == pytest.approx(sum(BEST) / 5)


def test_rec_no_prediction_is_wrong_and_empty_metric_is_nan() -> None:
    m = RECAccuracy()
    m.update([None, []], [GT, GT])
    assert m.compute() == {"acc@0.5": 0.0, "mean_iou": 0.0}
    m.reset()
    assert math.isnan(m.compute()["acc@0.5"])


def test_rec_batches_equal_one_update_and_compute_is_idempotent() -> None:
    one, two = RECAccuracy((0.5, 0.75)), RECAccuracy((0.5, 0.75))
    one.update(PREDS, [GT] * 5)
    two.update(PREDS[:2], [GT] * 2)
    two.update(PREDS[2:], [GT] * 3)
    assert one.compute() == two.compute() == two.compute()


def test_rec_validates_inputs() -> None:
    with pytest.raises(ValueError):
        RECAccuracy(thresholds=(0.0,))
    with pytest.raises(ValueError):
        RECAccuracy().update([[]], [GT, GT])


def _mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_ciou_and_giou_differ_as_computed_by_hand() -> None:
    # Sample 1: big object, GT 10x10=100 px, prediction 10x8 inside it -> I=80, U=100, IoU .8
    # Sample 2: small object, GT 2x2=4 px, prediction 2x2 shifted by one column -> I=2, U=6, IoU 1/3
    # Sample 3: GT 2x1=2 px, no prediction -> I=0, U=2, IoU 0
    preds = [_mask(10, 10, 0, 8, 0, 10), _mask(10, 10, 0, 2, 1, 3), None]
    gts = [_mask(10, 10, 0, 10, 0, 10), _mask(10, 10, 0, 2, 0, 2), _mask(10, 10, 5, 7, 5, 6)]
    m = RESIoU()
    m.update(preds, gts)
    out = m.compute()
    assert out["ciou"] == pytest.approx((80 + 2 + 0) / (100 + 6 + 2))  # 82/108 = .759
    assert out["giou"] == pytest.approx((0.8 + 1 / 3 + 0) / 3)  # .378
    assert out["ciou"] - out["giou"] > 0.3  # the big object dominates the cumulative one


def test_res_rle_inputs_and_empty_cases() -> None:
    gt = _mask(6, 6, 0, 3, 0, 3)
    rle = mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
    empty = np.zeros((6, 6), dtype=bool)
    m = RESIoU()
    # perfect (RLE vs RLE), empty-on-empty (IoU 1, adds 0/0 to the cumulative sums), miss on a 9-px GT.
    m.update([rle, None, None], [rle, empty, gt])
    out = m.compute()
    assert out["giou"] == pytest.approx((1 + 1 + 0) / 3)
    assert out["ciou"] == pytest.approx((9 + 0 + 0) / (9 + 0 + 9))
    only_empty = RESIoU()
    only_empty.update([None], [empty])
    assert only_empty.compute() == {"ciou": 1.0, "giou": 1.0}


def test_res_batches_equal_one_update() -> None:
    gts = [_mask(8, 8, 0, 4 + k % 3, 0, 5) for k in range(6)]
    preds = [_mask(8, 8, k % 2, 5, 1, 6) if k != 4 else None for k in range(6)]
    one, two = RESIoU(), RESIoU()
    one.update(preds, gts)
    two.update(preds[:4], gts[:4])
    two.update(preds[4:], gts[4:])
    assert one.compute() == two.compute()
