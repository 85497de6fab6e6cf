"""RIC caption scores and greedy precision/recall against hand-computed values."""

import importlib.util
import math
import shutil

import pytest

from padt.metrics import GroundedCaptionMetric, caption_scores, greedy_match_counts, simple_tokenize

needs_cocoevalcap = pytest.mark.skipif(
    importlib.util.find_spec("pycocoevalcap") is None, reason="caption scores need pycocoevalcap"
)


@needs_cocoevalcap
def test_identical_captions_give_bleu4_one_and_hand_cider() -> None:
    cands = ["a small dog runs on the green grass", "two cats sleep on a red sofa"]
    out = caption_scores(cands, [[c] for c in cands])
    assert out["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert out["rouge_l"] == pytest.approx(1.0)
    assert out["cider_d"] > 0


@needs_cocoevalcap
def test_cider_d_hand_computed() -> None:
    # Two images, N = 2; idf(g) = ln N - ln max(1, df(g)), df over the reference sets:
    #   refs: img1 "a c", img2 "c d"  -> df(a)=df(d)=df("a c")=df("c d")=1, df(c)=2 (idf 0), unseen b: idf ln2
    # img1, cand "a b": 1-grams cand {a: ln2, b: ln2}, ref {a: ln2, c: 0}
    #   sim1 = min(ln2,ln2)*ln2 / (sqrt(2) ln2 * ln2) = 1/sqrt(2);  2-grams "a b" vs "a c": 0;  3,4-grams empty: 0
    #   length penalty exp(0) (equal lengths); score = mean(1/sqrt2, 0, 0, 0) * 10 = 10 / (4 sqrt 2)
    # img2, cand "c d" = ref: sim1 = (0*0 + ln2*ln2) / (ln2 * ln2) = 1, sim2 = 1 -> mean(1,1,0,0)*10 = 5
    out = caption_scores(["a b", "c d"], [["a c"], ["c d"]])
    assert out["cider_d"] == pytest.approx((10 / (4 * math.sqrt(2)) + 5.0) / 2)


@needs_cocoevalcap
def test_bleu_hand_computed() -> None:
    # "a cat sat" vs "a cat sat on the mat": clipped precisions 3/3, 2/2, 1/1; brevity penalty exp(1 - 6/3).
    out = caption_scores(["a cat sat"], [["a cat sat on the mat"]])
    assert out["bleu_1"] == pytest.approx(math.exp(-1), rel=1e-6)
    assert out["bleu_2"] == pytest.approx(math.exp(-1), rel=1e-6)
    # Clipping: "the the the" vs "the cat": "the" counted at most once -> 1/3; cand longer -> no penalty.
    assert caption_scores(["the the the"], [["the cat"]])["bleu_1"] == pytest.approx(1 / 3, rel=1e-6)


@needs_cocoevalcap
def test_rouge_l_hand_computed() -> None:
    # LCS("a b c d", "a c d e f") = "a c d" = 3; P = 3/4, R = 3/5, beta = 1.2
    p, r, b2 = 3 / 4, 3 / 5, 1.2**2
    out = caption_scores(["a b c d"], [["a c d e f"]])
    assert out["rouge_l"] == pytest.approx((1 + b2) * p * r / (r + b2 * p))


def test_simple_tokenize() -> None:
    assert simple_tokenize("A dog's running, isn't it?") == ["a", "dog", "'s", "running", "is", "n't", "it"]
    assert simple_tokenize("A black-and-white cat, 3.5 m.") == ["a", "black-and-white", "cat", "3.5", "m"]


@needs_cocoevalcap
def test_tokenisation_is_applied_and_empty_candidate_is_safe() -> None:
    # Case and punctuation must not cost anything.
    assert caption_scores(["A Cat, sat!"], [["a cat sat"]])["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    out = caption_scores(["", "a cat"], [["a dog"], ["a cat"]])
    assert all(math.isfinite(v) for v in out.values())


@needs_cocoevalcap
@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs java")
def test_simple_tokenizer_matches_ptb_on_typical_captions() -> None:
    caps = ["A man's black-and-white dog isn't running.", "Two people, standing near 3.5 m tall trees!"]
    ptb = caption_scores(caps, [[c] for c in caps], tokenizer="ptb")
    simple = caption_scores(caps, [[c] for c in caps])
    assert ptb == pytest.approx(simple)
    from padt.metrics.captioning import _ptb_tokenize

    assert _ptb_tokenize({0: caps})[0] == [" ".join(simple_tokenize(c)) for c in caps]


# Unit-height boxes (see test_functional): greedy takes only (A, G1).
G1, G2 = [0, 0, 10, 1], [3, 0, 13, 1]
A, B = [1, 0, 11, 1], [-3, 0, 7, 1]


def test_greedy_precision_recall_micro_average() -> None:
    # caption 1: preds {A, B}, GT {G1, G2} -> 1 greedy match (naive would say 2)
    # caption 2: no prediction, GT {G1}     -> 0 matches
    # caption 3: pred {G1} exact, GT {G1}   -> 1 match
    # micro: P = (1+0+1)/(2+0+1) = 2/3, R = (1+0+1)/(2+1+1) = 1/2
    # (macro would be P = mean(1/2, 1) = 3/4 over captions with predictions, R = mean(1/2, 0, 1) = 1/2)
    m = GroundedCaptionMetric()
    m.update(pred_boxes=[[A, B], [], [G1]], gt_boxes=[[G1, G2], [G1], [G1]])
    out = m.compute()
    assert out == {"greedy_precision": pytest.approx(2 / 3), "greedy_recall": pytest.approx(1 / 2)}
    assert greedy_match_counts([A, B], [G1, G2]) == (1, 2, 2)


@needs_cocoevalcap
def test_grounded_caption_metric_batches_equal_one_update() -> None:
    cands = ["a dog on grass", "a cat on a sofa", "two birds", "a red car near a tree"]
    refs = [
        ["a dog lies on the grass"],
        ["a cat sleeps on a sofa", "cat on sofa"],
        ["two birds fly"],
        ["a red car parked by a tree"],
    ]
    preds = [[A], [A, B], [], [G2]]
    gts = [[G1], [G1, G2], [G2], [G2]]
    one, two = GroundedCaptionMetric(), GroundedCaptionMetric()
    one.update(cands, refs, preds, gts)
    two.update(cands[:1], refs[:1], preds[:1], gts[:1])
    two.update(cands[1:], refs[1:], preds[1:], gts[1:])
    a, b = one.compute(), two.compute()
    assert a == pytest.approx(b)
    assert set(a) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d", "greedy_precision", "greedy_recall"}
    # A on G1 (.82), {A,B} on {G1,G2} (1), none on G2 (0), G2 on G2 (1): 3 matched / 4 pred / 5 GT
    assert (a["greedy_precision"], a["greedy_recall"]) == (pytest.approx(3 / 4), pytest.approx(3 / 5))


def test_update_argument_checks() -> None:
    m = GroundedCaptionMetric()
    with pytest.raises(ValueError):
        m.update(candidates=["a"])
    with pytest.raises(TypeError):
        m.update(["a"], ["a"])  # references must be a list per sample
    with pytest.raises(ValueError):
        m.update(pred_boxes=[[A]], gt_boxes=[[G1], [G2]])
    assert m.compute() == {}
