"""Robust per-token cross-entropy: masks, equivalence to plain CE, normalisation, gradients, errors."""

import pytest
import torch
import torch.nn.functional as F

from padt.losses import answer_logits, object_exclusion_pairs, robust_token_cross_entropy

V, P, D = 11, 7, 6
INF = float("-inf")
# sample 0 owns image 0 = global patches 0..3, sample 1 owns image 1 = global patches 4..6
ALLOWED = torch.tensor([[True] * 4 + [False] * 3, [False] * 4 + [True] * 3])
LABELS = torch.tensor(
    [
        [
            -100,
            -100,
            -100,
            5,
            V + 1,
            V + 2,
            10,
            -100,
        ],  # object A (GT patches 1, 2, 3) named at t = 4, 5
        [
            -100,
            -100,
            3,
            V + 5,
            V + 5,
            0,
            -100,
            -100,
        ],  # object B (GT patches 5, 6) named twice at t = 3, 4
    ]
)
OBJECTS = [(0, [4, 5], [1, 2, 3]), (1, [3, 4], [5, 6])]  # (sample, answer positions, GT patches)


def _exclude(objects=OBJECTS):
    return torch.cat([object_exclusion_pairs(b, pos, patches) for b, pos, patches in objects])


def _tensors(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 8, D, generator=g, dtype=dtype).requires_grad_(True)
    text_weight = torch.randn(V, D, generator=g, dtype=dtype).requires_grad_(True)
    prototypes = torch.randn(P, D, generator=g, dtype=dtype).requires_grad_(True)
    return hidden, text_weight, prototypes


def _reference_loss(hidden, labels, text_weight, prototypes, allowed, objects):
    """Loop-by-loop restatement of the paper's rule on full-sequence logits (slow, obviously right)."""
    logits = torch.cat([hidden @ text_weight.T, hidden @ prototypes.T], dim=-1)  # [B, T, V+P]
    means = []
    for b in range(labels.shape[0]):
        nlls = []
        for t in range(labels.shape[1]):
            y = int(labels[b, t])
            if y == -100:
                continue
            row = logits[b, t].clone()
            row[V:][~allowed[b]] = INF
            for ob, positions, patches in objects:
                if ob == b and t in positions:
                    for p in patches:
                        if V + p != y:
                            row[V + p] = INF
            nlls.append(torch.logsumexp(row, 0) - row[y])
        if nlls:
            means.append(torch.stack(nlls).mean())
    return torch.stack(means).mean()


def test_mask_leaves_exactly_the_intended_logits():
    hidden, text_weight, prototypes = _tensors()
    out = answer_logits(hidden, LABELS, text_weight, prototypes, ALLOWED, _exclude())
    rows = list(zip(out.batch_index.tolist(), out.position.tolist()))
    assert rows == [(0, 3), (0, 4), (0, 5), (0, 6), (1, 2), (1, 3), (1, 4), (1, 5)]
    blocked_vrt = {  # which of the P VRT columns are -inf, row by row
        (0, 3): {4, 5, 6},  # text target: other image only
        (0, 4): {2, 3, 4, 5, 6},  # target 1 kept, other GT 2, 3 of A out, patch 0 (not A) stays
        (0, 5): {1, 3, 4, 5, 6},  # target 2 kept, the other picked patch 1 is out too
        (0, 6): {4, 5, 6},
        (1, 2): {0, 1, 2, 3},
        (1, 3): {0, 1, 2, 3, 6},  # target 5 kept, patch 4 (not B) stays
        (1, 4): {0, 1, 2, 3, 6},
        (1, 5): {0, 1, 2, 3},
    }
    for i, (b, t) in enumerate(rows):
        h = hidden[b, t].detach()
        torch.testing.assert_close(out.logits[i, :V], text_weight.detach() @ h)  # text untouched
        vrt = out.logits[i, V:]
        for p in range(P):
            if p in blocked_vrt[(b, t)]:
                assert vrt[p] == INF, (b, t, p)
            else:
                torch.testing.assert_close(vrt[p], prototypes[p].detach() @ h)
    assert torch.equal(out.target, LABELS[LABELS != -100])


def test_matches_loop_reference_and_gradients():
    results = []
    for chunk_size, use_checkpoint in [(512, True), (1, True), (3, False)]:
        hidden, text_weight, prototypes = _tensors()
        out = robust_token_cross_entropy(
            hidden,
            LABELS,
            text_weight,
            prototypes,
            ALLOWED,
            _exclude(),
            chunk_size=chunk_size,
            use_checkpoint=use_checkpoint,
        )
        out.loss.backward()
        results.append((out.loss.detach(), hidden.grad, text_weight.grad, prototypes.grad))
    hidden, text_weight, prototypes = _tensors()
    ref = _reference_loss(hidden, LABELS, text_weight, prototypes, ALLOWED, OBJECTS)
    ref.backward()
    for loss, g_h, g_w, g_p in results:
        torch.testing.assert_close(loss, ref.detach())
        torch.testing.assert_close(g_h, hidden.grad)
        torch.testing.assert_close(g_w, text_weight.grad)
        torch.testing.assert_close(g_p, prototypes.grad)
    _, g_h, g_w, g_p = results[0]
    assert g_w.abs().sum() > 0 and g_p.abs().sum() > 0
    supervised = LABELS != -100
    assert (g_h[~supervised] == 0).all() and (g_h[supervised].abs().sum(-1) > 0).all()


def test_equals_plain_cross_entropy_when_objects_have_one_patch():
    hidden, text_weight, prototypes = _tensors(seed=1)
    single = [
        (0, [4], [1]),
        (0, [5], [2]),
        (1, [3, 4], [5]),
    ]  # every object's only GT patch is its target
    ours = robust_token_cross_entropy(hidden, LABELS, text_weight, prototypes, ALLOWED, _exclude(single))
    logits = torch.cat([hidden @ text_weight.T, hidden @ prototypes.T], dim=-1)
    logits = logits.masked_fill(F.pad(~ALLOWED, (V, 0))[:, None, :], INF)
    nll = F.cross_entropy(logits.transpose(1, 2), LABELS, ignore_index=-100, reduction="none")  # [B, T]
    per_sample = nll.sum(1) / (LABELS != -100).sum(1)
    torch.testing.assert_close(ours.per_sample, per_sample)
    torch.testing.assert_close(ours.loss, per_sample.mean())
    # with the real (multi-patch) objects the robust loss is strictly lower: fewer competitors
    robust = robust_token_cross_entropy(hidden, LABELS, text_weight, prototypes, ALLOWED, _exclude())
    assert robust.loss < ours.loss


def test_samples_weigh_equally_whatever_their_length():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 12, D, generator=g, dtype=torch.float64)
    text_weight = torch.randn(V, D, generator=g, dtype=torch.float64)
    labels = torch.full((2, 12), -100)
    labels[0, 1:11] = torch.randint(0, V, (10,), generator=g)  # 10 answer tokens
    labels[1, 5:7] = torch.tensor([2, 9])  # 2 answer tokens
    out = robust_token_cross_entropy(hidden, labels, text_weight, torch.empty(0, D, dtype=torch.float64))
    nll = F.cross_entropy((hidden @ text_weight.T).transpose(1, 2), labels, reduction="none")
    means = torch.stack([nll[0, 1:11].mean(), nll[1, 5:7].mean()])
    torch.testing.assert_close(out.per_sample, means)
    torch.testing.assert_close(out.loss, means.mean())
    assert not torch.isclose(out.loss, nll[labels != -100].mean())  # not a token-weighted mean
    assert out.num_tokens.tolist() == [10, 2]


def test_sample_without_answer_tokens_is_left_out_of_the_mean():
    hidden, text_weight, prototypes = _tensors()
    labels = LABELS.clone()
    labels[1] = -100
    out = robust_token_cross_entropy(hidden, labels, text_weight, prototypes, ALLOWED, _exclude(OBJECTS[:1]))
    assert out.per_sample[1] == 0 and out.num_tokens[1] == 0
    torch.testing.assert_close(out.loss, out.per_sample[0])


def test_no_supervised_token_gives_attached_zero():
    hidden, text_weight, prototypes = _tensors()
    out = robust_token_cross_entropy(hidden, torch.full((2, 8), -100), text_weight, prototypes, ALLOWED)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert hidden.grad is not None and (hidden.grad == 0).all()


def test_accuracy_counts_match_argmax():
    hidden, text_weight, prototypes = _tensors(seed=3)
    out = robust_token_cross_entropy(hidden, LABELS, text_weight, prototypes, ALLOWED, _exclude())
    logits = answer_logits(hidden, LABELS, text_weight, prototypes, ALLOWED, _exclude())
    correct = (logits.logits.argmax(1) == logits.target).long()
    assert out.num_correct.tolist() == [int(correct[:4].sum()), int(correct[4:].sum())]
    # one-hot rows: hidden = 10 * e_target makes the target the unique argmax of every row
    eye = torch.eye(V + P, dtype=torch.float64)
    hot = torch.zeros(2, 8, V + P, dtype=torch.float64)
    sup = LABELS != -100
    hot[sup] = 10 * eye[LABELS[sup]]
    out = robust_token_cross_entropy(hot, LABELS, eye[:V], eye[V:], ALLOWED, _exclude())
    assert torch.equal(out.num_correct, out.num_tokens)
    hot[0, 3] = 10 * eye[0]  # position (0, 3) now prefers text 0 over its target 5
    out = robust_token_cross_entropy(hot, LABELS, eye[:V], eye[V:], ALLOWED, _exclude())
    assert out.num_correct.tolist() == [3, 4]


def test_bfloat16_hidden_close_to_float32():
    hidden, text_weight, prototypes = _tensors(dtype=torch.float32)
    ref = robust_token_cross_entropy(hidden, LABELS, text_weight, prototypes, ALLOWED, _exclude())
    low = robust_token_cross_entropy(
        hidden.detach().bfloat16().requires_grad_(True),
        LABELS,
        text_weight.detach().bfloat16(),
        prototypes.detach().bfloat16(),
        ALLOWED,
        _exclude(),
    )
    assert low.loss.dtype == torch.float32
    torch.testing.assert_close(low.loss, ref.loss.detach(), atol=0.1, rtol=0.05)


def test_data_bugs_raise():
    hidden, text_weight, prototypes = _tensors()
    wrong_image = LABELS.clone()
    wrong_image[0, 4] = V + 5  # sample 0 naming a patch of sample 1's image
    with pytest.raises(ValueError, match="vrt_allowed"):
        robust_token_cross_entropy(hidden, wrong_image, text_weight, prototypes, ALLOWED)
    with pytest.raises(ValueError, match="ignore_index"):
        robust_token_cross_entropy(
            hidden, LABELS, text_weight, prototypes, ALLOWED, object_exclusion_pairs(0, [0], [1])
        )
    out_of_range = LABELS.clone()
    out_of_range[0, 3] = V + P
    with pytest.raises(ValueError, match="outside"):
        robust_token_cross_entropy(hidden, out_of_range, text_weight, prototypes, ALLOWED)
    with pytest.raises(ValueError, match="outside"):
        robust_token_cross_entropy(
            hidden, LABELS, text_weight, prototypes, ALLOWED, object_exclusion_pairs(0, [4], [P])
        )
    with pytest.raises(ValueError, match="vrt_allowed"):
        robust_token_cross_entropy(hidden, LABELS, text_weight, prototypes, ALLOWED[:, :3])


def test_object_exclusion_pairs_layout():
    pairs = object_exclusion_pairs(3, [10, 11], [7, 8, 9])
    assert pairs.tolist() == [
        [3, 10, 7],
        [3, 10, 8],
        [3, 10, 9],
        [3, 11, 7],
        [3, 11, 8],
        [3, 11, 9],
    ]
