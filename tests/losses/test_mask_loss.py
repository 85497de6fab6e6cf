"""Dice + focal mask losses on a 2x2 mask worked out by hand."""

import math

import pytest
import torch

from padt.losses import mask_loss, valid_from_hw

L3 = math.log(3.0)
# sigmoid -> p = [[.5, .75], [.25, .5]]
LOGITS = torch.tensor([[0.0, L3], [-L3, 0.0]])
GT = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
# focal per pixel = alpha_t (1 - p_t)^2 (-ln p_t), alpha = .25 on foreground, .75 on background
F00 = 0.25 * 0.25 * math.log(2.0)  # t=1, p_t=.5
F01 = 0.25 * 0.0625 * math.log(4 / 3)  # t=1, p_t=.75
F10 = 0.75 * 0.0625 * math.log(4 / 3)  # t=0, p_t=.75
F11 = 0.75 * 0.25 * math.log(2.0)  # t=0, p_t=.5


def test_full_valid_area_by_hand():
    out = mask_loss(LOGITS[None], GT[None])
    # sum(p t) = 1.25, sum(p) = 2, sum(t) = 2 -> 1 - 3.5 / 5
    torch.testing.assert_close(out["dice"], torch.tensor(1 - 3.5 / 5))
    torch.testing.assert_close(out["focal"], torch.tensor((F00 + F01 + F10 + F11) / 4))


def test_valid_region_restricts_both_terms():
    # only the top row counts: sum(p t) = 1.25, sum(p) = 1.25, sum(t) = 2
    expected_dice = torch.tensor(1 - 3.5 / 4.25)
    expected_focal = torch.tensor((F00 + F01) / 2)
    by_hw = mask_loss(LOGITS[None], GT[None], valid_hw=torch.tensor([[1, 2]]))
    valid = torch.tensor([[[True, True], [False, False]]])
    by_mask = mask_loss(LOGITS[None], GT[None], valid)
    for out in (by_hw, by_mask):
        torch.testing.assert_close(out["dice"], expected_dice)
        torch.testing.assert_close(out["focal"], expected_focal)


def test_objects_averaged_and_maskless_objects_skipped():
    logits = torch.stack([LOGITS, torch.zeros(2, 2), torch.full((2, 2), float("nan"))]).requires_grad_(True)
    gt = torch.stack([GT, torch.zeros(2, 2), torch.ones(2, 2)])
    has_mask = torch.tensor([True, True, False])  # the third (garbage) object has no GT mask
    out = mask_loss(logits, gt, has_mask=has_mask)
    (out["dice"] + out["focal"]).backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[2] == 0).all()
    # object 2: p = .5 everywhere, t = 0: dice 1 - 1 / (2 + 0 + 1); focal .75 * .25 * ln 2 per pixel
    torch.testing.assert_close(out["dice"], torch.tensor(((1 - 3.5 / 5) + (1 - 1 / 3)) / 2))
    torch.testing.assert_close(out["focal"], torch.tensor(((F00 + F01 + F10 + F11) / 4 + F11) / 2))


def test_object_with_empty_valid_area_is_not_counted():
    logits = torch.stack([LOGITS, torch.zeros(2, 2)])
    gt = torch.stack([GT, torch.ones(2, 2)])
    out = mask_loss(logits, gt, valid_hw=torch.tensor([[2, 2], [0, 0]]))
    torch.testing.assert_close(out["dice"], torch.tensor(1 - 3.5 / 5))


def test_no_objects_gives_attached_zeros():
    logits = torch.empty(0, 4, 4, requires_grad=True)
    out = mask_loss(logits, torch.empty(0, 4, 4))
    assert out["dice"].item() == 0.0 and out["focal"].item() == 0.0
    (out["dice"] + out["focal"]).backward()
    assert logits.grad is not None


def test_gradient_only_inside_valid_area_and_padding_ignored():
    logits = torch.randn(1, 3, 3)
    inside = valid_from_hw(torch.tensor([[2, 1]]), 3, 3)
    logits[~inside] = torch.tensor([float("nan"), float("inf"), -float("inf"), 5.0, 0.0, 1.0, -2.0])
    logits.requires_grad_(True)
    out = mask_loss(logits, torch.ones(1, 3, 3), valid_hw=torch.tensor([[2, 1]]))
    assert torch.isfinite(out["dice"]) and torch.isfinite(out["focal"])
    (out["dice"] + out["focal"]).backward()
    assert (logits.grad[~inside] == 0).all() and (logits.grad[inside] != 0).all()
    ref = mask_loss(logits.detach()[inside].reshape(1, 2, 1), torch.ones(1, 2, 1))
    torch.testing.assert_close(out["dice"], ref["dice"])
    torch.testing.assert_close(out["focal"], ref["focal"])


def test_valid_and_valid_hw_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        mask_loss(
            LOGITS[None],
            GT[None],
            torch.ones(1, 2, 2, dtype=torch.bool),
            valid_hw=torch.tensor([[1, 1]]),
        )
