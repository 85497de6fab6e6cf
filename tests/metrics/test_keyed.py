"""KeyedReferringMetric: the official script's REC/RES scoring, checked on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from padt.metrics import KeyedReferringMetric


def cols(start: int, stop: int, hw: tuple[int, int] = (10, 10)) -> np.ndarray:
    mask = np.zeros(hw, dtype=bool)
    mask[:, start:stop] = True
    return mask


def test_only_predictions_with_the_gt_label_count() -> None:
    metric = KeyedReferringMetric((0.5,))
    # Sample 0: the right box under another label; sample 1: a half-overlapping box under its label (IoU 1/3).
    metric.update([1, 2], ["the cat", "a dog"], [[0, 0, 10, 10], [0, 0, 10, 10]],
                  [["a cat"], ["a dog"]], [[[0, 0, 10, 10]], [[5, 0, 15, 10]]])
    out = metric.compute()
    assert out["acc@0.5"] == 0.0 and out["mean_iou"] == pytest.approx((0 + 1 / 3) / 2)


def test_predictions_pool_per_image_and_the_later_gt_wins() -> None:
    metric = KeyedReferringMetric((0.5,))
    # Given in reverse order: order decides that sample 1 ("later") holds the key's GT box [20, 20, 30, 30].
    metric.update([7, 7], ["cat", "cat"], [[20, 20, 30, 30], [0, 0, 10, 10]], [[], ["cat"]], [[], [[20, 20, 30, 30]]],
                  order=[1, 0])
    # Another image with the same label does not share the pool.
    metric.update([8], ["cat"], [[0, 0, 10, 10]], [[]], [[]], order=[2])
    out = metric.compute()
    assert out["acc@0.5"] == pytest.approx(2 / 3)  # both samples of image 7 score 1, image 8 scores 0


def test_best_label_matched_mask_and_its_pixels() -> None:
    metric = KeyedReferringMetric((0.5,), masks=True)
    preds = [cols(3, 8), cols(0, 4), cols(0, 5)]  # vs GT cols 0..4: IoU 2/8, 4/5, and exact under another label
    metric.update([1], ["cat"], [[0, 0, 5, 10]], [["cat", "cat", "dog"]], [[[3, 0, 8, 10], [0, 0, 4, 10],
                  [0, 0, 5, 10]]], gt_masks=[cols(0, 5)], pred_masks=[preds])
    out = metric.compute()
    assert out["giou"] == pytest.approx(0.8) and out["ciou"] == pytest.approx(40 / 50)
    assert out["mean_iou"] == pytest.approx(0.8)  # box scores are independent of the masks' choice


def test_no_prediction_and_empty_union_score_zero() -> None:
    metric = KeyedReferringMetric((0.5,), masks=True)
    empty = np.zeros((4, 4), dtype=bool)
    metric.update([1, 2], ["a", "b"], [[0, 0, 0, 0], [0, 0, 2, 2]], [["a"], []], [[[0, 0, 0, 0]], []],
                  gt_masks=[empty, cols(0, 2, (4, 4))], pred_masks=[[empty], []])
    out = metric.compute()
    assert out["acc@0.5"] == out["giou"] == out["ciou"] == 0.0  # the script's calculate_iou / calculate_ciou


def test_before_any_update_and_bad_input() -> None:
    metric = KeyedReferringMetric((0.5, 0.75), masks=True)
    assert all(math.isnan(v) for v in metric.compute().values())
    assert set(metric.compute()) == {"acc@0.5", "acc@0.75", "mean_iou", "ciou", "giou"}
    with pytest.raises(ValueError, match="needs gt_masks and pred_masks"):
        metric.update([1], ["a"], [[0, 0, 1, 1]], [[]], [[]])
    with pytest.raises(ValueError, match="sample 0: 2 predicted labels for 1 boxes"):
        KeyedReferringMetric().update([1], ["a"], [[0, 0, 1, 1]], [["a", "b"]], [[[0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="thresholds must be"):
        KeyedReferringMetric((0.0,))
