"""PaDTCriterion: term names, weights, the reference total, text-only batches, finiteness check."""

import math

import pytest
import torch

from padt.losses import LOSS_TERMS, PaDTCriterion, check_finite, object_exclusion_pairs

V, P, D = 13, 8, 5


def _batch(num_objects: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((2, 6), -100)
    labels[0, 2:6] = torch.tensor([1, V + 2, V + 3, 0])
    labels[1, 3:5] = torch.tensor([4, 0])
    inputs = dict(
        hidden=torch.randn(2, 6, D, generator=g).requires_grad_(True),
        labels=labels,
        text_weight=torch.randn(V, D, generator=g).requires_grad_(True),
        prototypes=torch.randn(P, D, generator=g).requires_grad_(True),
        vrt_allowed=torch.tensor([[True] * 4 + [False] * 4, [False] * 4 + [True] * 4]),
        vrt_exclude=object_exclusion_pairs(0, [3, 4], [1, 2, 3]),
    )
    k = num_objects
    inputs.update(
        pred_boxes=(0.25 + 0.5 * torch.rand(k, 4, generator=g)).requires_grad_(True),
        gt_boxes=0.25 + 0.5 * torch.rand(k, 4, generator=g),
        score_logits=torch.randn(k, 1, generator=g).requires_grad_(True),
        mask_logits=torch.randn(k, 4, 4, generator=g).requires_grad_(True),
        gt_masks=torch.rand(k, 4, 4, generator=g) > 0.5,
        mask_valid_hw=torch.tensor([[4, 3], [2, 4]])[:k],
    )
    return inputs


def test_terms_and_default_total_match_the_reference_sum():
    out = PaDTCriterion()(**_batch())
    assert set(out) == {"loss", "token_accuracy", *LOSS_TERMS}
    for name in LOSS_TERMS:
        assert not out[name].requires_grad and out[name].ndim == 0
    # paper: sft + bbox[(1 - giou) + l1] + score + mask[dice + focal], all weights 1
    sft, bbox = out["ce"], out["box_giou"] + out["box_l1"]
    torch.testing.assert_close(out["loss"].detach(), sft + bbox + out["score"] + out["mask_dice"] + out["mask_focal"])
    assert all(out[name] > 0 for name in LOSS_TERMS)
    assert 0.0 <= out["token_accuracy"] <= 1.0


def test_weights_scale_terms_and_zero_weight_drops_a_term():
    weights = {"ce": 2.0, "box_l1": 5.0, "mask_focal": 0.0}
    out = PaDTCriterion(weights)(**_batch())
    w = {name: 1.0 for name in LOSS_TERMS} | weights
    torch.testing.assert_close(out["loss"].detach(), sum(w[n] * out[n] for n in LOSS_TERMS))
    batch = _batch()
    batch["mask_logits"] = batch["mask_logits"].detach().clone()
    batch["mask_logits"][0, 0, 0] = float("nan")  # poisons mask terms only
    out = PaDTCriterion({"mask_dice": 0.0, "mask_focal": 0.0})(**batch)
    assert torch.isfinite(out["loss"]) and not torch.isfinite(out["mask_focal"])


def test_unknown_weight_name_raises():
    with pytest.raises(ValueError, match="bbox"):
        PaDTCriterion({"bbox": 1.0})


def test_every_input_gets_a_gradient():
    batch = _batch()
    PaDTCriterion()(**batch)["loss"].backward()
    for name in (
        "hidden",
        "text_weight",
        "prototypes",
        "pred_boxes",
        "score_logits",
        "mask_logits",
    ):
        assert batch[name].grad is not None and batch[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("absent", [False, True])
def test_batch_without_objects_trains_on_text(absent):
    batch = _batch(num_objects=0)
    batch["labels"][0, 3:5] = torch.tensor([7, 8])  # no VRT target anywhere
    batch["vrt_exclude"] = None
    if absent:  # a trainer may also skip the decoder entirely
        for key in (
            "pred_boxes",
            "gt_boxes",
            "score_logits",
            "mask_logits",
            "gt_masks",
            "mask_valid_hw",
        ):
            batch[key] = None
    out = PaDTCriterion()(**batch)
    for name in LOSS_TERMS[1:]:
        assert out[name].item() == 0.0, name
    torch.testing.assert_close(out["loss"].detach(), out["ce"])
    out["loss"].backward()
    assert batch["hidden"].grad is not None and batch["hidden"].grad.abs().sum() > 0
    if not absent:
        assert batch["pred_boxes"].grad is not None and batch["pred_boxes"].grad.shape == (0, 4)


def test_check_finite_names_step_and_term():
    check_finite({"ce": torch.tensor(1.0), "box_l1": 0.5}, step=3)  # finite: silent
    with pytest.raises(ValueError, match=r"step 7: loss term 'box_giou' is not finite \(nan\)"):
        check_finite({"ce": torch.tensor(1.0), "box_giou": torch.tensor(float("nan"))}, step=7)
    with pytest.raises(ValueError, match=r"step 12: loss term 'score' is not finite \(inf\)"):
        check_finite({"ce": torch.tensor(1.0), "score": math.inf}, step=12)
