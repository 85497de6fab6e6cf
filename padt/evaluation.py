"""Evaluate a PaDT pipeline on grounding records: REC accuracy, RES mask IoU, COCO detection AP and RIC scores.

:func:`evaluate` runs the pipeline over records (one image and one prompt each, see
:mod:`padt.datasets.records`), scores every answer against the record's objects and returns the metrics of
:mod:`padt.metrics` together with one prediction per record. Definitions, and where this differs from the
official evaluation scripts, are in ``docs/metrics.md`` ("Evaluating a model: padt eval").

Under ``torch.distributed`` rank ``r`` of ``w`` evaluates records ``r, r + w, ...`` (RIC in generate mode: images);
the metrics reduce over ranks and the predictions are gathered, so every rank returns the dataset-wide result.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm.auto import tqdm

from padt.datasets.patches import sample_vrt_patches
from padt.datasets.records import GroundingObject, GroundingRecord, check_grid
from padt.losses.box_ops import box_area, box_xyxy_to_xywh, normalised_to_pixels
from padt.metrics import COCODetectionMetric, GroundedCaptionMetric, RECAccuracy, RESIoU
from padt.results import GroundedOutput
from padt.text.prompts import render_answer
from padt.vision.images import load_image
from padt.vision.masks import box_to_mask, box_to_rle, rle_to_mask

TASKS = ("rec", "res", "ovd", "ric")
#: The record task each evaluation task reads (RES is scored on REC records: they carry the masks).
RECORD_TASK = {"rec": "rec", "res": "rec", "ovd": "ovd", "ric": "ric"}
#: IoU thresholds of the REC accuracy; 0.5 is the paper's Acc@0.5.
REC_THRESHOLDS = (0.5, 0.75, 0.9)

Mode = Literal["generate", "teacher_forced"]
_OVD_CATEGORIES = re.compile(r"detect the following objects:\s*(\[.*\])\s*\.?\s*$", re.DOTALL)
_GROUNDING = re.compile(r"<\|(?:VRT|Obj)_\d+\|>")
_EMPTY_PARENS = re.compile(r"\s*\(\s*(?:,\s*)*\)")


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
    """
    tasks = parse_tasks(task)
    if mode not in ("generate", "teacher_forced"):
        raise ValueError(f"mode must be 'generate' or 'teacher_forced', got {mode!r}")
    records = list(records)[:limit] if limit is not None else list(records)
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
    images_root = Path(images_root)
    # Teacher forcing feeds the reference captions themselves: caption scores would be meaningless.
    scorer = _Scorer(records, tasks, images_root, instances, captions=mode == "generate")
    rank, world = _rank_and_world()
    # A unit is what one answer is generated for: RIC records that share image and prompt get one generation.
    units = _units(records, group=scorer.captions)[rank::world]
    step = batch_size or getattr(pipeline, "batch_size", 8)
    generate_kwargs = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    bar = tqdm(total=sum(len(u) for u in units), desc=f"eval {','.join(tasks)}", unit="record",
               disable=not progress or rank != 0)
    for start in range(0, len(units), step):
        batch = units[start : start + step]
        images = [_load(records[unit[0]], images_root) for unit in batch]
        outputs = _answer(pipeline, [records[u[0]] for u in batch], images, tasks, mode, generate_kwargs)
        for unit, image, output in zip(batch, images, outputs, strict=True):
            scorer.add(unit, output, image.height, image.width)
        bar.update(sum(len(u) for u in batch))
    bar.close()
    return scorer.result()


class _Scorer:
    """The metrics of the requested tasks, fed one answer at a time, and the predictions."""

    def __init__(self, records: list[GroundingRecord], tasks: tuple[str, ...], images_root: Path,
                 instances: str | os.PathLike | Mapping[str, Any] | None, captions: bool) -> None:
        self.records = records
        self.captions = "ric" in tasks and captions
        if self.captions:
            _require_caption_scorers()
        self.rec = RECAccuracy(REC_THRESHOLDS) if "rec" in tasks else None
        self.res = RESIoU() if "res" in tasks else None
        self.ric = GroundedCaptionMetric() if "ric" in tasks else None
        self.ovd_gt = _ovd_ground_truth(records, images_root, instances) if "ovd" in tasks else None
        self.references = _caption_references(records) if self.captions else {}
        self.predictions: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []

    def add(self, unit: list[int], output: GroundedOutput, height: int, width: int) -> None:
        """Score ``output`` for every record of ``unit`` (they share one image of ``height`` x ``width``)."""
        boxes = [o.box for o in output.objects]
        for position in unit:
            record = self.records[position]
            prediction = _prediction(position, record, output)
            if self.rec is not None:  # all objects of the answer: the best IoU counts (see docs/metrics.md)
                self.rec.update([boxes], [_gt_box(record.objects[0], height, width)])
            if self.res is not None:  # one mask per sample: the answer's first object
                first = output.objects[0].mask if output.objects else None
                self.res.update([first], [_gt_mask(record.objects[0], height, width)])
            if self.ric is not None:
                self.ric.update(pred_boxes=[boxes], gt_boxes=[[_gt_box(o, height, width) for o in record.objects]])
            if self.ovd_gt is not None:
                image_id = self.ovd_gt.image_ids[position]
                self.detections += output.to_coco(image_id, self.ovd_gt.categories)
                prediction["coco_image_id"] = image_id
            self.predictions.append(prediction)
        if self.ric is not None and self.captions:
            self.ric.update([strip_grounding(output.text)], [self.references[self.records[unit[0]].image]])

    def result(self) -> EvalResult:
        """Dataset-wide metrics and predictions (collective under torch.distributed: call on every rank)."""
        gathered = sorted(_gather(self.predictions), key=lambda p: p["_position"])
        predictions = [{k: v for k, v in p.items() if k != "_position"} for p in gathered]
        metrics: dict[str, float] = {}
        if self.rec is not None:
            metrics.update({f"rec/{k}": v for k, v in self.rec.compute().items()})
        if self.res is not None:
            metrics.update({f"res/{k}": v for k, v in self.res.compute().items()})
            _warn_without_masks(predictions)
        coco_results: list[dict[str, Any]] = []
        if self.ovd_gt is not None:
            coco_results = _gather(self.detections)
            # segm AP only when every detection carries a mask (a model without a mask head gives none).
            segm = all("segmentation" in d for d in coco_results)
            metric = COCODetectionMetric(self.ovd_gt.gt, iou_type=("bbox", "segm") if segm else "bbox")
            metric.update(self.detections)
            metrics.update({f"ovd/{k}": v for k, v in metric.compute().items()})
        if self.ric is not None:
            metrics.update({f"ric/{k}": v for k, v in self.ric.compute().items()})
        metrics["num_records"] = len(predictions)
        metrics["answers_with_problems"] = sum(1 for p in predictions if p["problems"])
        return EvalResult(metrics, predictions, coco_results)


def strip_grounding(text: str) -> str:
    """A caption without its grounding: VRTs and ``<|Obj_N|>`` removed, with the parentheses that held them.

    ``"A man (<|VRT_3|><|VRT_4|>) rides a horse (<|Obj_1|>)."`` -> ``"A man rides a horse."``
    """
    text = _EMPTY_PARENS.sub("", _GROUNDING.sub("", text))
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    return " ".join(text.split())


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
        return pipeline.ask(images, [r.prompt for r in records], require_labels=require_labels, **generate_kwargs)
    vrts = pipeline.vrts_per_object
    return [
        pipeline.decode_answer(image, teacher_forced_answer(r, vrts), r.prompt, require_labels=require_labels)
        for r, image in zip(records, images, strict=True)
    ]


def _units(records: list[GroundingRecord], group: bool) -> list[list[int]]:
    if not group:
        return [[i] for i in range(len(records))]
    units: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(records):
        units.setdefault((r.image, r.prompt), []).append(i)
    return list(units.values())


def _load(record: GroundingRecord, images_root: Path) -> Image.Image:
    path = images_root / record.image
    if not path.is_file():
        raise FileNotFoundError(f"record {record.id}: image file not found: {path}")
    image = load_image(path)
    if record.image_hw is not None and tuple(record.image_hw) != (image.height, image.width):
        raise ValueError(
            f"record {record.id}: image {path} is {(image.height, image.width)} (h, w) but the record says "
            f"{tuple(record.image_hw)}; its boxes and masks would not fit"
        )
    return image


# ---- ground truth --------------------------------------------------------------------------------------------
def _gt_box(obj: GroundingObject, height: int, width: int) -> list[float]:
    """The object's xyxy box in pixels of its ``height`` x ``width`` image."""
    # float64, so the pixels are those of Python float arithmetic on the record's numbers.
    return normalised_to_pixels(torch.tensor(obj.bbox, dtype=torch.float64), (height, width)).tolist()


def _gt_mask(obj: GroundingObject, height: int, width: int) -> np.ndarray:
    """The object's mask; a box-only object (``rle`` null) is scored against its box, as the reference does."""
    if obj.rle is not None:
        return rle_to_mask(obj.rle)
    return box_to_mask(_gt_box(obj, height, width), height, width)


def _caption_references(records: list[GroundingRecord]) -> dict[str, list[str]]:
    """Per image, every reference caption (answer template without its grounding), in record order."""
    references: dict[str, list[str]] = {}
    for r in records:
        references.setdefault(r.image, []).append(strip_grounding(r.answer_template))
    return references


@dataclass
class _OVDGroundTruth:
    gt: dict[str, Any]
    image_ids: list[int]  # per record position
    categories: dict[str, int]


def _ovd_ground_truth(
    records: list[GroundingRecord], images_root: Path, instances: str | os.PathLike | Mapping[str, Any] | None
) -> _OVDGroundTruth:
    if instances is not None:
        return _gt_from_instances(records, instances)
    # One GT image per record: record image ids when every record has a distinct one, positions otherwise.
    ids = [r.image_id for r in records]
    if any(i is None for i in ids) or len(set(ids)) != len(ids):
        ids = list(range(1, len(records) + 1))
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(_prompt_categories(r.prompt)))  # prompt order: COCO id order for val records
        names.update(dict.fromkeys(o.label for o in r.objects))
    categories = {name: k + 1 for k, name in enumerate(names)}
    images, annotations = [], []
    for r, image_id in zip(records, ids, strict=True):
        # Official records read without an images root carry no size: take it from the image.
        height, width = r.image_hw if r.image_hw is not None else _load(r, images_root).size[::-1]
        images.append({"id": image_id, "file_name": r.image, "height": height, "width": width})
        for obj in r.objects:
            box = torch.tensor(_gt_box(obj, height, width), dtype=torch.float64)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": categories[obj.label],
                "bbox": box_xyxy_to_xywh(box).tolist(),
                "area": obj.area or box_area(box).item(),
                "iscrowd": obj.iscrowd,
                "segmentation": obj.rle if obj.rle is not None else box_to_rle(box.tolist(), height, width),
            })
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    return _OVDGroundTruth(gt, ids, categories)


def _gt_from_instances(records: list[GroundingRecord], instances: str | os.PathLike | Mapping[str, Any]):
    if isinstance(instances, (str, os.PathLike)):
        path = Path(instances)
        if not path.is_file():
            raise FileNotFoundError(f"COCO instances file not found: {path}")
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        data = dict(instances)  # only read: the filtered lists below are new, COCODetectionMetric copies them
    missing = [r.id for r in records if r.image_id is None]
    if missing:
        raise ValueError(f"--instances needs COCO image ids in the records; record {missing[0]} has none")
    known = {img["id"] for img in data.get("images", [])}
    wanted = {r.image_id for r in records}
    if wanted - known:
        raise ValueError(f"image ids {sorted(wanted - known)[:5]} of the records are not in the COCO instances")
    # Only the evaluated images: the others were never shown to the model and would count as misses.
    gt = {
        "images": [img for img in data["images"] if img["id"] in wanted],
        "annotations": [a for a in data.get("annotations", []) if a["image_id"] in wanted],
        "categories": data.get("categories", []),
    }
    categories = {c["name"]: int(c["id"]) for c in gt["categories"]}
    return _OVDGroundTruth(gt, [int(r.image_id) for r in records], categories)


def _prompt_categories(prompt: str) -> list[str]:
    """The category names an OVD prompt lists (``[]`` for any other prompt)."""
    match = _OVD_CATEGORIES.search(prompt)
    try:
        names = json.loads(match.group(1)) if match else []
    except json.JSONDecodeError:
        names = []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


# ---- checks, predictions, distributed ------------------------------------------------------------------------
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
