"""What both modes of ``vrt_vs_text.py`` measure about a trained model, whatever its answer format.

REC Acc@0.5 and mean IoU from :func:`padt.evaluation.evaluate` (greedy decoding); answer tokens per grounded
object, counted from what ``model.generate`` returned before the end token; inference seconds per object; the
ground-truth answers' length under the real Qwen2.5-VL tokenizer; and a model-free reference (the mean training
box for every answer).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch


class TokenCounter:
    """Wraps ``model.generate`` to count the tokens each answer generated before its end token."""

    def __init__(self, model, eos_ids: tuple[int, ...]) -> None:
        self.model, self.eos = model, set(eos_ids)
        self.original = model.generate
        self.tokens = 0
        self.answers = 0
        self.cut_off = 0
        model.generate = self

    def __call__(self, *args: Any, **kwargs: Any):
        sequences = self.original(*args, **kwargs)
        new = sequences[:, kwargs["input_ids"].shape[1]:].tolist()
        for row in new:
            end = next((i for i, token in enumerate(row) if token in self.eos), None)
            self.tokens += len(row) if end is None else end
            self.cut_off += end is None
            self.answers += 1
        return sequences


def evaluate_run(final: Path, records: list, images: Path, *, batch_size: int, max_new_tokens: int) -> dict[str, Any]:
    """REC figures of the model in ``final`` on ``records`` (see the module's docstring)."""
    from padt.evaluation import evaluate
    from padt.pipeline import PaDTPipeline

    pipeline = PaDTPipeline.from_pretrained(final, batch_size=batch_size, max_new_tokens=max_new_tokens)
    counter = TokenCounter(pipeline.model, pipeline.processor.eos_ids)
    started = time.perf_counter()
    result = evaluate(pipeline, records, images, "rec", progress=False)
    seconds = time.perf_counter() - started
    objects = sum(len(p["objects"]) for p in result.predictions)
    return {
        "answer_format": pipeline.answer_format.name,
        "acc@0.5": result.metrics["rec/acc@0.5"],
        "mean_iou": result.metrics["rec/mean_iou"],
        "records": len(records),
        "objects": objects,
        "answers_with_problems": result.metrics["answers_with_problems"],
        "answers_cut_off": counter.cut_off,
        "answer_tokens": counter.tokens,
        "tokens_per_object": counter.tokens / objects if objects else math.nan,
        "tokens_per_answer": counter.tokens / max(1, counter.answers),
        "eval_seconds": seconds,
        "seconds_per_object": seconds / objects if objects else math.nan,
        "seconds_per_record": seconds / len(records),
        "example": str(result.predictions[0]["text"]),
    }


def qwen_tokens_per_object(records: list, images: Path) -> dict[str, float] | None:
    """Ground-truth answers of both formats, tokenised with the real Qwen2.5-VL tokenizer, per object."""
    try:
        from padt.text.qwen_tokenizer import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer()
    except ImportError:
        return None
    from padt.evaluation import teacher_forced_answer
    from padt.processing import PaDTProcessor
    from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS
    from padt.text.text_boxes import record_text_box_answer

    processor = PaDTProcessor.from_tokenizer(
        tokenizer, vrt_id_start=len(tokenizer), min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS
    )
    totals = {"vrt": 0, "text-boxes": 0}
    objects = 0
    for record in records:
        geometry = processor.geometry(images / record.image)
        totals["vrt"] += len(processor.encode_text(teacher_forced_answer(record, 5)))  # as the model writes
        totals["text-boxes"] += len(processor.encode_text(record_text_box_answer(record, geometry)))
        objects += len(record.referenced_objects())
    return {name: total / objects for name, total in totals.items()}


def constant_box_baseline(train_records: list, eval_records: list) -> dict[str, float]:
    """A model-free reference: every held-out answer is the mean training box (normalised), scored the same way."""
    from padt.losses.box_ops import normalised_to_pixels
    from padt.metrics import RECAccuracy

    boxes = [r.objects[r.referenced_objects()[0]].bbox for r in train_records]
    mean = torch.tensor([statistics.fmean(b[i] for b in boxes) for i in range(4)], dtype=torch.float64)
    metric = RECAccuracy((0.5,))
    for record in eval_records:
        gt = torch.tensor(record.objects[0].bbox, dtype=torch.float64)
        predicted = normalised_to_pixels(mean, record.image_hw).tolist()
        metric.update([[predicted]], [[normalised_to_pixels(gt, record.image_hw).tolist()]])
    values = metric.compute()
    return {"acc@0.5": values["acc@0.5"], "mean_iou": values["mean_iou"]}


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, None
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else None)


def format_mean_sd(mean: float, sd: float | None, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


