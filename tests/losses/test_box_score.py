"""Box (GIoU + L1) and score losses against hand-computed values."""

import math

import pytest
import torch

from padt.losses import box_loss, score_loss

# cxcywh pairs whose xyxy forms are the hand-worked boxes of test_box_ops:
# (1,1,2,2)=(0,0,2,2) vs (2,2,2,2)=(1,1,3,3): GIoU -5/63, |d| = 1+1+0+0
# (.5,.5,1,1)=(0,0,1,1) vs (2.5,.5,1,1)=(2,0,3,1): GIoU -1/3, |d| = 2+0+0+0
PRED = torch.tensor([[1.0, 1.0, 2.0, 2.0], [0.5, 0.5, 1.0, 1.0]])
GT = torch.tensor([[2.0, 2.0, 2.0, 2.0], [2.5, 0.5, 1.0, 1.0]])


def test_box_loss_by_hand():
    out = box_loss(PRED, GT)
    torch.testing.assert_close(out["giou_pairs"], torch.tensor([-5 / 63, -1 / 3]))
    torch.testing.assert_close(out["giou"], torch.tensor(1 + (5 / 63 + 1 / 3) / 2))
    torch.testing.assert_close(out["l1"], torch.tensor(4.0 / 2))


def test_box_loss_global_normaliser():
    out = box_loss(PRED, GT, num_boxes=4.0)
    torch.testing.assert_close(out["giou"], torch.tensor(1 + (5 / 63 + 1 / 3) / 4))
    torch.testing.assert_close(out["l1"], torch.tensor(1.0))


def test_box_loss_perfect_prediction_is_zero_and_grads_flow():
    pred = GT.clone().requires_grad_(True)
    out = box_loss(pred, GT)
    torch.testing.assert_close(out["giou"], torch.tensor(0.0))
    torch.testing.assert_close(out["l1"], torch.tensor(0.0))
    pred2 = PRED.clone().requires_grad_(True)
    out = box_loss(pred2, GT)
    (out["giou"] + out["l1"]).backward()
    assert pred2.grad is not None and pred2.grad.abs().sum() > 0


def test_box_loss_empty_is_zero_and_backward_works():
    pred = torch.empty(0, 4, requires_grad=True)
    out = box_loss(pred, torch.empty(0, 4))
    assert out["giou"].item() == 0.0 and out["l1"].item() == 0.0
    (out["giou"] + out["l1"]).backward()
    assert pred.grad is not None and pred.grad.shape == (0, 4)


def test_box_loss_shape_mismatch_raises():
    with pytest.raises(ValueError, match="K, 4"):
        box_loss(PRED, GT[:1])


def test_score_loss_by_hand_and_giou_detached():
    # sigmoid(0) = 1/2 -> 2p - 1 = 0; sigmoid(ln 3) = 3/4 -> 1/2
    logits = torch.tensor([[0.0], [math.log(3.0)]], requires_grad=True)
    giou = torch.tensor([0.5, -0.5], requires_grad=True)
    loss = score_loss(logits, giou)
    torch.testing.assert_close(loss, torch.tensor(((0 - 0.5) ** 2 + (0.5 + 0.5) ** 2) / 2))
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert giou.grad is None  # the score target never pushes on the boxes


def test_score_loss_empty():
    logits = torch.empty(0, requires_grad=True)
    loss = score_loss(logits, torch.empty(0))
    assert loss.item() == 0.0
    loss.backward()
