"""Evaluate a PaDT pipeline on grounding records: REC accuracy, RES mask IoU, COCO detection AP and RIC scores.

:func:`evaluate` runs the pipeline over records (one image and one prompt each, see
:mod:`padt.datasets.records`), scores every answer against the record's objects and returns the metrics of
:mod:`padt.metrics` together with one prediction per record. Definitions, and where this differs from the
official evaluation scripts, are in ``docs/metrics.md`` ("Evaluating a model: padt eval").

Two scoring protocols: ``"padt"`` (ours, the default) matches every answer with the record it was generated for;
``"paper"`` reproduces the official evaluation scripts behind the paper's tables (labels must equal the ground
truth, boxes rounded to pixels, stored pixels without EXIF orientation). ``docs/metrics.md`` sets them side by side.

Under ``torch.distributed`` rank ``r`` of ``w`` evaluates records ``r, r + w, ...`` (RIC in generate mode: images);
the metrics reduce over ranks and the predictions are gathered, so every rank returns the dataset-wide result.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch.distributed as dist
from PIL import Image
from tqdm.auto import tqdm

from padt.datasets.patches import sample_vrt_patches
from padt.datasets.records import GroundingRecord, check_grid
from padt.evaluation.ground_truth import (
    caption_references,
    detections,
    gt_box,
    gt_mask,
    ovd_ground_truth,
    paper_gt_box,
    paper_pred_box,
    strip_grounding,
)
from padt.evaluation.images import PROTOCOLS, Protocol, load_record_image
from padt.metrics import COCODetectionMetric, GroundedCaptionMetric, KeyedReferringMetric, RECAccuracy, RESIoU
from padt.results import GroundedOutput
from padt.text.prompts import render_answer

__all__ = [
    "PROTOCOLS", "REC_THRESHOLDS", "TASKS", "EvalResult", "evaluate", "json_ready", "paper_gt_box", "paper_pred_box",
    "parse_tasks", "strip_grounding", "teacher_forced_answer",
]

TASKS = ("rec", "res", "ovd", "ric")
#: The record task each evaluation task reads (RES is scored on REC records: they carry the masks).
RECORD_TASK = {"rec": "rec", "res": "rec", "ovd": "ovd", "ric": "ric"}
#: IoU thresholds of the REC accuracy; 0.5 is the paper's Acc@0.5.
REC_THRESHOLDS = (0.5, 0.75, 0.9)

Mode = Literal["generate", "teacher_forced"]


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
        metrics: ``"<task>/<metric>"`` -> value (fractions in [0, 1]; COCO's ``-1`` passes through), plus
            ``num_records`` and ``answers_with_problems``.
        predictions: one dict per record, in record order: ``id``, ``image``, ``image_id``, ``prompt``, ``text``,
            ``objects`` (:meth:`~padt.results.GroundedObject.to_dict`, the mask as COCO RLE ``mask_rle``),
            ``problems`` and, for OVD, ``coco_image_id`` (the image id in ``coco_results``).
        coco_results: OVD only: COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``,
            ``segmentation``) against the evaluated ground truth.
    """

    metrics: dict[str, float]
    predictions: list[dict[str, Any]]
    coco_results: list[dict[str, Any]] = field(default_factory=list)


def parse_tasks(task: str | Sequence[str]) -> tuple[str, ...]:
    """``"rec,res"`` or ``["rec", "res"]`` -> ``("rec", "res")``; all must read records of one task."""
    names = task.split(",") if isinstance(task, str) else list(task)
    tasks = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise ValueError(f"unknown task {', '.join(unknown) or repr(task)}: expected one or more of {TASKS}")
    if len({RECORD_TASK[t] for t in tasks}) > 1:
        raise ValueError(f"tasks {tasks} read records of different kinds; evaluate them separately")
    return tasks


def evaluate(
    pipeline: Any,
    records: Sequence[GroundingRecord],
    images_root: str | os.PathLike,
    task: str | Sequence[str],
    *,
    instances: str | os.PathLike | Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    mode: Mode = "generate",
    protocol: Protocol = "padt",
) -> EvalResult:
    """Run ``pipeline`` over ``records`` and score the answers.

    Args:
        pipeline: a :class:`~padt.PaDTPipeline` or anything with its ``ask``, ``decode_answer`` and
            ``batch_size``.
        records: REC records for ``rec``/``res``, OVD records for ``ovd``, RIC records for ``ric``.
        images_root: folder the records' ``image`` paths are relative to.
        task: ``"rec"``, ``"res"``, ``"ovd"``, ``"ric"`` or several of one record kind (``"rec,res"``: one pass).
        instances: OVD ground truth: the original COCO annotations (path or dict), restricted to the records'
            images. ``None`` rebuilds it from the records' objects (what the synthetic data uses).
        batch_size: records per ``pipeline.ask`` call (default ``pipeline.batch_size``, which also caps the
            generation batch).
        max_new_tokens: generation budget (default: the pipeline's).
        limit: evaluate only the first ``limit`` records.
        progress: show a progress bar (rank 0 only).
        mode: ``"generate"`` answers the prompts; ``"teacher_forced"`` feeds the ground-truth answer with
            VRTs sampled from each object's patches and scores what the decoder makes of them.
        protocol: ``"padt"`` scores each answer against its own record; ``"paper"`` as the official scripts: REC
            and RES count only objects whose label equals the GT sentence (best IoU over those, pooled per image
            and label), GT and predicted boxes are rounded to whole pixels, OVD is bbox AP against the records'
            objects (the official preprocessing's filtered GT) with labels lowercased, and images are read as
            stored (no EXIF orientation). RIC is the same under both (no official script was released).
    """
    tasks = parse_tasks(task)
    records = list(records)[:limit] if limit is not None else list(records)
    _check_arguments(pipeline, records, tasks, mode, protocol)
    images_root = Path(images_root)
    # Teacher forcing feeds the reference captions themselves: caption scores would be meaningless.
    scorer = _Scorer(records, tasks, images_root, instances, captions=mode == "generate", protocol=protocol)
    rank, world = _rank_and_world()
    # A unit is what one answer is generated for: RIC records that share image and prompt get one generation.
    units = _units(records, group=scorer.captions)[rank::world]
    if mode == "generate" and hasattr(pipeline, "encode"):
        # Records about one image side by side, so that they share its encoding and prompt prefix (the scores
        # and the predictions' order do not depend on the order records are answered in).
        units.sort(key=lambda unit: records[unit[0]].image)
    step = batch_size or getattr(pipeline, "batch_size", 8)
    generate_kwargs = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    bar = tqdm(total=sum(len(u) for u in units), desc=f"eval {','.join(tasks)}", unit="record",
               disable=not progress or rank != 0)
    for start in range(0, len(units), step):
        batch = units[start : start + step]
        images = [load_record_image(records[unit[0]], images_root, protocol) for unit in batch]
        outputs = _answer(pipeline, [records[u[0]] for u in batch], images, tasks, mode, generate_kwargs)
        for unit, image, output in zip(batch, images, outputs, strict=True):
            scorer.add(unit, output, image.height, image.width)
        bar.update(sum(len(u) for u in batch))
    bar.close()
    return scorer.result()


class _Scorer:
    """The metrics of the requested tasks, fed one answer at a time, and the predictions."""

    def __init__(self, records: list[GroundingRecord], tasks: tuple[str, ...], images_root: Path,
                 instances: str | os.PathLike | Mapping[str, Any] | None, captions: bool, protocol: Protocol) -> None:
        self.records = records
        self.protocol = protocol
        self.captions = "ric" in tasks and captions
        if self.captions:
            _require_caption_scorers()
        paper = protocol == "paper"
        # The paper's REC and RES come from one keyed pass (eval_refcoco.py scores both from the same predictions).
        self.keyed = KeyedReferringMetric(REC_THRESHOLDS, masks="res" in tasks) if paper and (
            "rec" in tasks or "res" in tasks) else None
        self.rec = RECAccuracy(REC_THRESHOLDS) if "rec" in tasks and not paper else None
        self.res = RESIoU() if "res" in tasks and not paper else None
        self.tasks = tasks
        self.ric = GroundedCaptionMetric() if "ric" in tasks else None
        self.ovd_gt = ovd_ground_truth(records, images_root, instances, protocol) if "ovd" in tasks else None
        self.references = caption_references(records) if self.captions else {}
        self.predictions: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []

    def add(self, unit: list[int], output: GroundedOutput, height: int, width: int) -> None:
        """Score ``output`` for every record of ``unit`` (they share one image of ``height`` x ``width``)."""
        boxes = [o.box for o in output.objects]
        for position in unit:
            record = self.records[position]
            prediction = _prediction(position, record, output)
            self._add_referring(position, record, output, height, width)
            if self.ric is not None:
                self.ric.update(pred_boxes=[boxes], gt_boxes=[[gt_box(o, height, width) for o in record.objects]])
            if self.ovd_gt is not None:
                image_id = self.ovd_gt.image_ids[position]
                self.detections += detections(output, image_id, self.ovd_gt.categories, self.protocol)
                prediction["coco_image_id"] = image_id
            self.predictions.append(prediction)
        if self.ric is not None and self.captions:
            self.ric.update([strip_grounding(output.text)], [self.references[self.records[unit[0]].image]])

    def _add_referring(self, position: int, record: GroundingRecord, output: GroundedOutput, height: int,
                       width: int) -> None:
        """REC / RES of one record: by record (ours) or keyed by image and label (the paper's)."""
        if self.rec is None and self.res is None and self.keyed is None:
            return
        gt = record.objects[0]
        if self.rec is not None:  # all objects of the answer: the best IoU counts (see docs/metrics.md)
            self.rec.update([[o.box for o in output.objects]], [gt_box(gt, height, width)])
        if self.res is not None:  # one mask per sample: the answer's first object
            first = output.objects[0].mask if output.objects else None
            self.res.update([first], [gt_mask(gt, height, width)])
        if self.keyed is not None:
            masks = self.keyed.masks
            self.keyed.update(
                [record.image_id if record.image_id is not None else record.image], [gt.label],
                [paper_gt_box(gt.bbox, height, width)], [[o.label for o in output.objects]],
                [[paper_pred_box(o.box) for o in output.objects]],
                gt_masks=[gt.rle if gt.rle is not None else gt_mask(gt, height, width)] if masks else None,
                pred_masks=[[o.mask for o in output.objects]] if masks else None, order=[position],
            )

    def result(self) -> EvalResult:
        """Dataset-wide metrics and predictions (collective under torch.distributed: call on every rank)."""
        gathered = sorted(_gather(self.predictions), key=lambda p: p["_position"])
        predictions = [{k: v for k, v in p.items() if k != "_position"} for p in gathered]
        metrics: dict[str, float] = {}
        if self.rec is not None:
            metrics.update({f"rec/{k}": v for k, v in self.rec.compute().items()})
        if self.res is not None:
            metrics.update({f"res/{k}": v for k, v in self.res.compute().items()})
        if self.keyed is not None:
            for key, value in self.keyed.compute().items():
                task = "res" if key in ("ciou", "giou") else "rec"
                if task in self.tasks:
                    metrics[f"{task}/{key}"] = value
        if "res" in self.tasks:
            _warn_without_masks(predictions)
        coco_results: list[dict[str, Any]] = []
        if self.ovd_gt is not None:
            coco_results = _gather(self.detections)
            # segm AP only when every detection carries a mask (a model without a mask head gives none); the
            # paper reports bbox AP only, and its ground truth has no masks.
            segm = self.protocol == "padt" and all("segmentation" in d for d in coco_results)
            metric = COCODetectionMetric(self.ovd_gt.gt, iou_type=("bbox", "segm") if segm else "bbox")
            metric.update(self.detections)
            metrics.update({f"ovd/{k}": v for k, v in metric.compute().items()})
        if self.ric is not None:
            metrics.update({f"ric/{k}": v for k, v in self.ric.compute().items()})
        metrics["num_records"] = len(predictions)
        metrics["answers_with_problems"] = sum(1 for p in predictions if p["problems"])
        return EvalResult(metrics, predictions, coco_results)


def teacher_forced_answer(record: GroundingRecord, vrts_per_object: int) -> str:
    """The record's answer with up to ``vrts_per_object`` VRTs per object, drawn without replacement.

    The draw is seeded by the record id, so it is the same on every run, rank and ``limit``.
    """
    rng = np.random.default_rng(zlib.crc32(record.id.encode("utf-8")))
    vrts = [sample_vrt_patches(o.patches, min(vrts_per_object, len(o.patches)), "random", rng) for o in record.objects]
    return render_answer(record.answer_template, vrts)


# ---- running the pipeline ------------------------------------------------------------------------------------
def _answer(pipeline: Any, records: list[GroundingRecord], images: list[Image.Image], tasks: tuple[str, ...],
            mode: Mode, generate_kwargs: dict[str, Any]) -> list[GroundedOutput]:
    require_labels = "ric" not in tasks  # RIC objects are named by the phrase before them, not a quoted label
    if mode == "generate":
        if hasattr(pipeline, "encode"):
            images = _shared_encodings(pipeline, records, images)
        return pipeline.ask(images, [r.prompt for r in records], require_labels=require_labels, **generate_kwargs)
    vrts = pipeline.vrts_per_object
    return [
        pipeline.decode_answer(image, teacher_forced_answer(r, vrts), r.prompt, require_labels=require_labels)
        for r, image in zip(records, images, strict=True)
    ]


def _shared_encodings(pipeline: Any, records: list[GroundingRecord], images: list[Image.Image]) -> list[Any]:
    """Each run of records about the same image gets one encoded image (vision + prompt prefix) in place of it."""
    shared: list[Any] = []
    for _, run in itertools.groupby(zip(records, images), key=lambda pair: pair[0].image):
        run = list(run)
        if len(run) == 1:
            shared.append(run[0][1])
        else:
            shared += [pipeline.encode(run[0][1])] * len(run)
    return shared


def _units(records: list[GroundingRecord], group: bool) -> list[list[int]]:
    if not group:
        return [[i] for i in range(len(records))]
    units: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(records):
        units.setdefault((r.image, r.prompt), []).append(i)
    return list(units.values())


def _check_arguments(pipeline: Any, records: list[GroundingRecord], tasks: tuple[str, ...], mode: str,
                     protocol: str) -> None:
    """Fail before the first generation: unknown mode or protocol, no or wrong records, unforceable answers."""
    if mode not in ("generate", "teacher_forced"):
        raise ValueError(f"mode must be 'generate' or 'teacher_forced', got {mode!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not records:
        raise ValueError("no records to evaluate")
    _check_records(records, tasks)
    if mode == "teacher_forced":
        if not pipeline.answer_format.names_patches:
            raise ValueError(
                "teacher-forced evaluation decodes ground-truth VRTs with the PaDT decoder; a text-boxes model "
                "answers without VRTs: evaluate it in generate mode"
            )
        _check_grid(pipeline, records)


def _check_records(records: list[GroundingRecord], tasks: tuple[str, ...]) -> None:
    wanted = RECORD_TASK[tasks[0]]
    wrong = [r for r in records if r.task != wanted]
    if wrong:
        raise ValueError(
            f"task {','.join(tasks)} needs {wanted!r} records, but {len(wrong)} have another task "
            f"(record {wrong[0].id}: {wrong[0].task!r})"
        )
    empty = [r.id for r in records if wanted == "rec" and not r.objects]
    if empty:
        raise ValueError(f"REC record {empty[0]} has no object to compare with")


def _check_grid(pipeline: Any, records: list[GroundingRecord]) -> None:
    """Teacher forcing writes the records' patch indices into the answer: they must mean the model's cells."""
    processor = getattr(pipeline, "processor", None)
    if processor is not None:
        check_grid(records, processor)


def _require_caption_scorers() -> None:
    """Fail before generating for an hour, not at the end: caption scores need the optional pycocoevalcap."""
    if importlib.util.find_spec("pycocoevalcap") is None:
        raise ImportError("RIC caption scores need pycocoevalcap: pip install 'padt[eval]'")


def _prediction(position: int, record: GroundingRecord, output: GroundedOutput) -> dict[str, Any]:
    return {"_position": position, "id": record.id, "image": record.image, "image_id": record.image_id,
            "prompt": record.prompt, "text": output.text,
            "objects": [o.to_dict(include_mask=True) for o in output.objects], "problems": list(output.problems)}


def _warn_without_masks(predictions: list[dict[str, Any]]) -> None:
    maskless = sum(1 for p in predictions if p["objects"] and "mask_rle" not in p["objects"][0])
    if maskless:
        warnings.warn(f"res: {maskless} answers have an object but no mask (a model without a mask head?); "
                      "they were scored as empty masks", stacklevel=3)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order (a collective call under torch.distributed)."""
    world = _rank_and_world()[1]
    if world == 1:
        return list(items)
    parts: list[list[Any] | None] = [None] * world
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in (part or [])]


def json_ready(value: Any) -> Any:
    """NaN (a metric with no samples) is not JSON; write it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value
