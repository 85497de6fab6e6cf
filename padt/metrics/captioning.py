"""Referring image captioning (RIC): caption quality plus greedy precision/recall of the grounded boxes.

Caption scores come from ``pycocoevalcap`` (the coco-caption scorers): BLEU-1..4, ROUGE-L and CIDEr-D are pure
Python; METEOR runs a Java jar and is opt-in; SPICE is not offered (it needs Stanford CoreNLP models downloaded at
first use). The coco-caption PTB tokenizer also needs Java, so by default captions are tokenised by
:func:`simple_tokenize`, a pure-Python approximation; ``tokenizer="ptb"`` uses the Java one.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from collections.abc import Sequence
from typing import Any, Literal

import torch

from padt.metrics.base import Metric
from padt.metrics.functional import as_boxes, greedy_match

_CLITIC = re.compile(r"n't\b")
# Words (keeping inner hyphens and decimal numbers together, as PTB does), clitics like 's / 're, and n't.
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[-.][a-z0-9]+)*")


def simple_tokenize(text: str) -> list[str]:
    """Lower-case, split off English clitics and drop punctuation, approximating coco-caption's PTB tokenizer.

    ``"A dog's running, isn't it?"`` -> ``["a", "dog", "'s", "running", "is", "n't", "it"]``; PTB gives the
    same. Differences remain on rare inputs (e.g. abbreviations with periods, non-ASCII letters, which are
    dropped here).
    """
    return _TOKEN.findall(_CLITIC.sub(" n't", text.lower()))


def _ptb_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    if shutil.which("java") is None:
        raise RuntimeError("tokenizer='ptb' needs a `java` executable on PATH")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with contextlib.redirect_stdout(io.StringIO()):
        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def caption_scores(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenizer: Literal["simple", "ptb"] = "simple",
    meteor: bool = False,
) -> dict[str, float]:
    """Corpus-level coco-caption scores of one candidate per sample against its references.

    Args:
        candidates: one generated caption per sample.
        references: per sample, one or more reference captions (aligned by index).
        tokenizer: ``"simple"`` (:func:`simple_tokenize`, pure Python) or ``"ptb"`` (Stanford PTB, needs Java).
        meteor: also compute METEOR (needs Java; starting its JVM takes ~15 s).

    Returns:
        ``bleu_1`` .. ``bleu_4``, ``rouge_l``, ``cider_d`` (and ``meteor``). CIDEr-D's document frequencies are
        taken over the references of *these* samples, so it is only comparable across runs on the same set.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} reference sets")
    if not candidates:
        return {}  # box-only use of GroundedCaptionMetric must not require pycocoevalcap
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as err:
        raise ImportError("caption scores need pycocoevalcap: pip install 'pycocoevalcap>=1.2'") from err
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every sample needs at least one reference caption")
    res = {i: [c] for i, c in enumerate(candidates)}
    gts = {i: list(refs) for i, refs in enumerate(references)}
    if tokenizer == "ptb":
        res, gts = _ptb_tokenize(res), _ptb_tokenize(gts)
    elif tokenizer == "simple":
        res = {k: [" ".join(simple_tokenize(c)) for c in v] for k, v in res.items()}
        gts = {k: [" ".join(simple_tokenize(c)) for c in v] for k, v in gts.items()}
    else:
        raise ValueError(f"tokenizer must be 'simple' or 'ptb', got {tokenizer!r}")

    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # BleuScorer prints its length ratio
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        # coco-caption's "Cider" is CIDEr-D: clipped tf-idf n-grams 1-4, Gaussian length penalty (sigma 6), x10.
        out["cider_d"] = float(Cider().compute_score(gts, res)[0])
        if meteor:
            if shutil.which("java") is None:
                raise RuntimeError("meteor=True needs a `java` executable on PATH")
            from pycocoevalcap.meteor.meteor import Meteor

            out["meteor"] = float(Meteor().compute_score(gts, res)[0])
    return out


def greedy_match_counts(pred_boxes: Any, gt_boxes: Any, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """``(matched, num_pred, num_gt)`` for one caption under :func:`~padt.metrics.functional.greedy_match`."""
    preds, gts = as_boxes(pred_boxes), as_boxes(gt_boxes)
    return len(greedy_match(preds, gts, iou_threshold)), len(preds), len(gts)


class GroundedCaptionMetric(Metric):
    """RIC metric: caption scores and greedy precision / recall of the objects grounded in the caption.

    Greedy precision / recall (micro-averaged over the dataset; our reading of VLM-R1's GP/GR, see
    docs/metrics.md)::

        matched_i = |greedy_match(pred_boxes_i, gt_boxes_i, iou >= 0.5)|
        greedy_precision = Σ_i matched_i / Σ_i #pred_i      (0 if no box was predicted at all)
        greedy_recall    = Σ_i matched_i / Σ_i #gt_i        (0 if there is no GT box at all)

    Returns fractions in [0, 1] (the paper prints GP/GR as percentages): ``bleu_1..4``, ``rouge_l``, ``cider_d``
    (``meteor`` if enabled) once captions were given, and ``greedy_precision``, ``greedy_recall`` once boxes were.

    Args:
        iou_threshold: IoU needed for a predicted box to match a GT box.
        tokenizer: caption tokenisation, see :func:`caption_scores`.
        meteor: also compute METEOR (Java).
    """

    candidates: list[str]
    references: list[list[str]]
    matched: torch.Tensor  # () int64: greedy matches, summed over captions
    num_pred: torch.Tensor  # () int64: predicted boxes
    num_gt: torch.Tensor  # () int64: GT boxes
    box_samples: torch.Tensor  # () int64: captions whose boxes were given

    def __init__(
        self,
        iou_threshold: float = 0.5,
        *,
        tokenizer: Literal["simple", "ptb"] = "simple",
        meteor: bool = False,
    ) -> None:
        super().__init__()
        if tokenizer not in ("simple", "ptb"):
            raise ValueError(f"tokenizer must be 'simple' or 'ptb', got {tokenizer!r}")
        self.iou_threshold = float(iou_threshold)
        self.tokenizer = tokenizer
        self.meteor = meteor
        self.add_state("candidates", [], reduce="cat")
        self.add_state("references", [], reduce="cat")
        self.add_state("matched", torch.zeros((), dtype=torch.int64), reduce="sum")
        self.add_state("num_pred", torch.zeros((), dtype=torch.int64), reduce="sum")
        self.add_state("num_gt", torch.zeros((), dtype=torch.int64), reduce="sum")
        self.add_state("box_samples", torch.zeros((), dtype=torch.int64), reduce="sum")

    def update(
        self,
        candidates: Sequence[str] | None = None,
        references: Sequence[Sequence[str]] | None = None,
        pred_boxes: Sequence[Any] | None = None,
        gt_boxes: Sequence[Any] | None = None,
    ) -> None:
        """Add a batch; captions and boxes are each optional but come in pairs.

        Args:
            candidates: per sample, the generated caption (its text without the VRT/box markup).
            references: per sample, a list of reference captions.
            pred_boxes: per sample, the boxes ``(K, 4)`` xyxy pixels of the objects grounded in the caption.
            gt_boxes: per sample, the GT boxes ``(M, 4)`` xyxy pixels of the objects in the reference caption.
        """
        if (candidates is None) != (references is None):
            raise ValueError("pass candidates and references together")
        if (pred_boxes is None) != (gt_boxes is None):
            raise ValueError("pass pred_boxes and gt_boxes together")
        if candidates is not None and references is not None:
            if len(candidates) != len(references):
                raise ValueError(f"{len(candidates)} candidates for {len(references)} reference sets")
            if any(isinstance(refs, str) for refs in references):  # checked first: no half-added batch
                raise TypeError("references must be a list of captions per sample, got a string")
            for cand, refs in zip(candidates, references, strict=True):
                self.candidates.append(str(cand))
                self.references.append([str(r) for r in refs])
        if pred_boxes is not None and gt_boxes is not None:
            if len(pred_boxes) != len(gt_boxes):
                raise ValueError(f"{len(pred_boxes)} predicted box sets for {len(gt_boxes)} GT box sets")
            for preds, gts in zip(pred_boxes, gt_boxes, strict=True):
                matched, n_pred, n_gt = greedy_match_counts(preds, gts, self.iou_threshold)
                self.matched += matched
                self.num_pred += n_pred
                self.num_gt += n_gt
                self.box_samples += 1

    def _compute(self, state: dict[str, Any]) -> dict[str, float]:
        out = caption_scores(state["candidates"], state["references"], tokenizer=self.tokenizer, meteor=self.meteor)
        if int(state["box_samples"]) > 0:
            matched, n_pred, n_gt = (int(state[k]) for k in ("matched", "num_pred", "num_gt"))
            out["greedy_precision"] = matched / n_pred if n_pred else 0.0
            out["greedy_recall"] = matched / n_gt if n_gt else 0.0
        return out
