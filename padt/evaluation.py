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
from padt.metrics import COCODetectionMetric, GroundedCaptionMetric, KeyedReferringMetric, RECAccuracy, RESIoU
from padt.results import GroundedOutput
from padt.text.prompts import render_answer
from padt.vision.images import load_image, open_image
from padt.vision.masks import box_to_mask, box_to_rle, rle_to_mask

TASKS = ("rec", "res", "ovd", "ric")
#: The record task each evaluation task reads (RES is scored on REC records: they carry the masks).
RECORD_TASK = {"rec": "rec", "res": "rec", "ovd": "ovd", "ric": "ric"}
#: IoU thresholds of the REC accuracy; 0.5 is the paper's Acc@0.5.
REC_THRESHOLDS = (0.5, 0.75, 0.9)

Mode = Literal["generate", "teacher_forced"]
#: ``"padt"``: ours, by record; ``"paper"``: the official scripts' scoring (see the module docstring).
Protocol = Literal["padt", "paper"]
PROTOCOLS = ("padt", "paper")
_EXIF_ORIENTATION = 0x0112
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
        images = [_load(records[unit[0]], images_root, protocol) for unit in batch]
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
        self.ovd_gt = _ovd_ground_truth(records, images_root, instances, protocol) if "ovd" in tasks else None
        self.references = _caption_references(records) if self.captions else {}
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
                self.ric.update(pred_boxes=[boxes], gt_boxes=[[_gt_box(o, height, width) for o in record.objects]])
            if self.ovd_gt is not None:
                image_id = self.ovd_gt.image_ids[position]
                self.detections += _detections(output, image_id, self.ovd_gt.categories, self.protocol)
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
            self.rec.update([[o.box for o in output.objects]], [_gt_box(gt, height, width)])
        if self.res is not None:  # one mask per sample: the answer's first object
            first = output.objects[0].mask if output.objects else None
            self.res.update([first], [_gt_mask(gt, height, width)])
        if self.keyed is not None:
            masks = self.keyed.masks
            self.keyed.update(
                [record.image_id if record.image_id is not None else record.image], [gt.label],
                [paper_gt_box(gt.bbox, height, width)], [[o.label for o in output.objects]],
                [[paper_pred_box(o.box) for o in output.objects]],
                gt_masks=[gt.rle if gt.rle is not None else _gt_mask(gt, height, width)] if masks else None,
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


def _load(record: GroundingRecord, images_root: Path, protocol: Protocol = "padt") -> Image.Image:
    """The record's image: as padt shows it to the model (EXIF orientation applied), or as stored (``"paper"``)."""
    path = images_root / record.image
    if not path.is_file():
        raise FileNotFoundError(f"record {record.id}: image file not found: {path}")
    if protocol == "paper":
        image = load_image(_stored_image(path))
    else:
        orientation = _exif_orientation(path)
        if orientation not in (None, 1):
            # Annotations (COCO's, the official records') describe the stored pixels; padt would rotate them.
            raise ValueError(
                f"record {record.id}: image {path} has EXIF orientation {orientation}, which padt applies, but the "
                "record's boxes and masks refer to the stored pixels (padt convert skips such images unless "
                "--keep-exif-rotated); evaluate with --protocol paper, which reads images as stored"
            )
        image = load_image(path)
    if record.image_hw is not None and tuple(record.image_hw) != (image.height, image.width):
        raise ValueError(
            f"record {record.id}: image {path} is {(image.height, image.width)} (h, w) but the record says "
            f"{tuple(record.image_hw)}; its boxes and masks would not fit"
        )
    return image


def _stored_image(path: Path) -> Image.Image:
    """The file's pixels as stored: a copy without the EXIF/XMP metadata that names an orientation.

    Opened through :func:`~padt.vision.images.open_image`, so the pixel limit against decompression bombs holds."""
    with open_image(path) as opened:
        try:
            opened.seek(0)  # the first frame of an animation, as load_image takes
            opened.load()
            stored = opened.copy()
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
    # load_image (and the pipeline after it) applies whatever orientation the metadata still names: leave none.
    for key in ("exif", "XML:com.adobe.xmp", "xmp", "Raw profile type exif"):
        stored.info.pop(key, None)
    return stored


def _exif_orientation(path: Path) -> int | None:
    """The EXIF orientation tag of an image file (header only); ``None`` when absent or unreadable."""
    try:
        with open_image(path) as opened:
            return opened.getexif().get(_EXIF_ORIENTATION)
    except (OSError, SyntaxError, ValueError):
        return None  # load_image reports an unreadable or too large file itself, naming it


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
    records: list[GroundingRecord], images_root: Path, instances: str | os.PathLike | Mapping[str, Any] | None,
    protocol: Protocol = "padt",
) -> _OVDGroundTruth:
    """COCO ground truth of OVD records: the original annotations (``instances``, ours) or the records' objects.

    The paper's script always scores against the records' objects (the preprocessed, filtered annotations) with
    boxes rounded to whole pixels and no masks; ``instances`` then only supplies the category ids.
    """
    paper = protocol == "paper"
    data = _read_instances(instances) if instances is not None else None
    if data is not None and not paper:
        return _gt_from_instances(records, data)
    if data is not None:
        ids = _coco_image_ids(records, data)
        categories = {c["name"]: int(c["id"]) for c in data.get("categories", [])}
    else:
        ids, categories = _record_image_ids(records), _record_categories(records)
    images, annotations = [], []
    for r, image_id in zip(records, ids, strict=True):
        # Official records read without an images root carry no size: take it from the image.
        height, width = r.image_hw if r.image_hw is not None else _load(r, images_root, protocol).size[::-1]
        images.append({"id": image_id, "file_name": r.image, "height": height, "width": width})
        for obj in r.objects:
            if obj.label not in categories:
                raise ValueError(f"record {r.id}: object label {obj.label!r} is not a category of the instances")
            entry = {"id": len(annotations) + 1, "image_id": image_id, "category_id": categories[obj.label],
                     "iscrowd": obj.iscrowd}
            entry.update(_paper_annotation(obj, height, width) if paper else _padt_annotation(obj, height, width))
            annotations.append(entry)
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    return _OVDGroundTruth(gt, ids, categories)


def _record_image_ids(records: list[GroundingRecord]) -> list[int]:
    """One GT image per record: the records' image ids when every record has a distinct one, positions otherwise."""
    ids = [r.image_id for r in records]
    if any(i is None for i in ids) or len(set(ids)) != len(ids):
        return list(range(1, len(records) + 1))
    return [int(i) for i in ids]


def _record_categories(records: list[GroundingRecord]) -> dict[str, int]:
    """Category ids 1..n in order of first appearance: the prompts' lists (COCO id order for val), then labels."""
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(_prompt_categories(r.prompt)))
        names.update(dict.fromkeys(o.label for o in r.objects))
    return {name: k + 1 for k, name in enumerate(names)}


def _padt_annotation(obj: GroundingObject, height: int, width: int) -> dict[str, Any]:
    """Box in float pixels, the mask (a box-only object's box as its mask), the area (the box's if unknown)."""
    box = torch.tensor(_gt_box(obj, height, width), dtype=torch.float64)
    return {"bbox": box_xyxy_to_xywh(box).tolist(), "area": obj.area or box_area(box).item(),
            "segmentation": obj.rle if obj.rle is not None else box_to_rle(box.tolist(), height, width)}


def _paper_annotation(obj: GroundingObject, height: int, width: int) -> dict[str, Any]:
    """As ``eval_coco.py`` rebuilds it: ``x, y, w, h`` rounded to pixels, the record's area as it is, no mask."""
    x1, y1, x2, y2 = paper_gt_box(obj.bbox, height, width)
    return {"bbox": [x1, y1, x2 - x1, y2 - y1], "area": obj.area}


def paper_gt_box(bbox: Sequence[float], height: int, width: int) -> list[int]:
    """The official scripts' GT box: ``x, y, w, h`` of the normalised box rounded to pixels, returned as xyxy.

    Each of the four is rounded on its own (``round((x2 - x1) * W)``, Python's half-to-even), as the scripts do.
    """
    x1, y1, x2, y2 = bbox
    x, y = round(x1 * width), round(y1 * height)
    return [x, y, x + round((x2 - x1) * width), y + round((y2 - y1) * height)]


def paper_pred_box(box: Sequence[float]) -> list[int]:
    """A predicted xyxy pixel box as the official inference writes it: ``x, y, w, h`` rounded, returned as xyxy."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x, y = round(x1), round(y1)
    return [x, y, x + round(x2 - x1), y + round(y2 - y1)]


def _detections(output: GroundedOutput, image_id: int, categories: dict[str, int], protocol: Protocol):
    """COCO results of one answer. Ours: ``to_coco`` (labels compared case-insensitively, masks kept). The
    paper's: the label lowercased must equal a category name, boxes rounded to pixels, no masks."""
    if protocol == "padt":
        return output.to_coco(image_id, categories)
    results = []
    for obj in output.objects:
        category = categories.get(obj.label.lower())
        if category is not None:
            x1, y1, x2, y2 = paper_pred_box(obj.box)
            results.append({"image_id": image_id, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(obj.score)})
    return results


def _read_instances(instances: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(instances, (str, os.PathLike)):
        path = Path(instances)
        if not path.is_file():
            raise FileNotFoundError(f"COCO instances file not found: {path}")
        return json.loads(path.read_text(encoding="utf-8"))
    return dict(instances)  # only read: the filtered lists below are new, COCODetectionMetric copies them


def _coco_image_ids(records: list[GroundingRecord], data: Mapping[str, Any]) -> list[int]:
    """The records' COCO image ids, each checked to be an image of the instances file."""
    missing = [r.id for r in records if r.image_id is None]
    if missing:
        raise ValueError(f"--instances needs COCO image ids in the records; record {missing[0]} has none")
    known = {img["id"] for img in data.get("images", [])}
    wanted = {r.image_id for r in records}
    if wanted - known:
        raise ValueError(f"image ids {sorted(wanted - known)[:5]} of the records are not in the COCO instances")
    return [int(r.image_id) for r in records]


def _gt_from_instances(records: list[GroundingRecord], data: Mapping[str, Any]) -> _OVDGroundTruth:
    ids = _coco_image_ids(records, data)
    wanted = set(ids)
    # Only the evaluated images: the others were never shown to the model and would count as misses.
    gt = {
        "images": [img for img in data["images"] if img["id"] in wanted],
        "annotations": [a for a in data.get("annotations", []) if a["image_id"] in wanted],
        "categories": data.get("categories", []),
    }
    categories = {c["name"]: int(c["id"]) for c in gt["categories"]}
    return _OVDGroundTruth(gt, ids, categories)


def _prompt_categories(prompt: str) -> list[str]:
    """The category names an OVD prompt lists (``[]`` for any other prompt)."""
    match = _OVD_CATEGORIES.search(prompt)
    try:
        names = json.loads(match.group(1)) if match else []
    except json.JSONDecodeError:
        names = []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


# ---- checks, predictions, distributed ------------------------------------------------------------------------
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
