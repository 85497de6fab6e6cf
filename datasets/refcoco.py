"""RefCOCO / RefCOCO+ / RefCOCOg -> referring expression (REC/RES) records, and a leakage guard.

Inputs are the files of the original release: ``refs(unc).p`` (refcoco, refcoco+) or ``refs(umd).p`` (refcocog),
a pickled list of plain dicts ``{ref_id, ann_id, image_id, split, sentences: [{sent, raw, tokens, sent_id}],
category_id, ...}``, and that dataset's ``instances.json`` (COCO train2014 images and annotations).

The pickle is read by :func:`load_refs` with an unpickler that refuses every global, so a crafted file cannot run
code: only dicts, lists, tuples, strings, numbers, booleans and ``None`` come back.

One record per (ref, sentence), as in the official PaDT REC data: the mask is the union of the referred annotation's
polygons, the box its ``bbox``, the sentence lowercased. The patch threshold is strict (``>``), as in the
official RefCOCO script. A ref whose mask selects no cell is skipped (counted once per ref).

The paper's REC/RES numbers are computed on VLM-R1's ``rec_jsons_processed`` split files (``refcoco_val.json``
...): :func:`convert_vlm_r1_split` makes the records of exactly their items (see ``docs/datasets.md``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from padt.datasets.annotations import CocoIndex, annotation_object, check_image, image_hw, load_instances
from padt.datasets.patches import DEFAULT_MIN_COVERAGE
from padt.datasets.records import GridSpec, GroundingObject, GroundingRecord, PathLike
from padt.datasets.summary import ConversionSummary
from padt.losses.box_ops import box_iou, normalised_to_pixels
from padt.text.prompts import rec_answer_template, rec_prompt

_PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None))


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler for plain containers: every global (class, function) is refused.

    Only ``find_class`` can bring a callable onto the pickle stack, and ``REDUCE``/``BUILD``/``INST``/``OBJ``
    need one, so refusing it blocks code execution (``os.system`` via ``__reduce__`` and the like).
    """

    def find_class(self, module: str, name: str) -> Any:
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal(f"persistent id {pid!r}")


def load_refs(path: PathLike) -> list[dict[str, Any]]:
    """Load a ``refs(*).p`` file (a list of ref dicts) without executing anything it contains.

    Python-2 strings are decoded as UTF-8. Raises ``ValueError`` naming the file and the refused ``module.name``
    when the pickle references any global, and naming the file for any other unreadable or non-plain content.
    """
    path = Path(path)
    with path.open("rb") as handle:
        try:
            data = _PlainDataUnpickler(handle, encoding="utf-8").load()
        except _RefusedGlobal as error:
            raise ValueError(
                f"{path}: refused to load global {error.name}: a refs file must hold only plain data "
                "(dict, list, tuple, str, int, float, bool, None)"
            ) from None
        except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, IndexError, KeyError) as error:
            raise ValueError(f"{path}: not a readable refs pickle: {error}") from error
    bad = _first_non_plain(data)
    if bad is not None:
        raise ValueError(f"{path}: refused value of type {type(bad).__name__}: a refs file must hold only plain data")
    if not isinstance(data, list) or not all(isinstance(ref, dict) for ref in data):
        raise ValueError(f"{path}: expected a list of ref dicts, got {type(data).__name__}")
    return data


def split_matches(wanted: str | None, ref_split: Any) -> bool:
    """Whether a ref of split ``ref_split`` belongs to ``wanted`` (``None``: every split).

    As the REFER API: ``"test"`` takes every ``test*`` split, ``"testA"`` also takes combined splits such as
    ``"testAB"``; other names match exactly.
    """
    if wanted is None:
        return True
    if not isinstance(ref_split, str):
        return False
    if wanted == "test":
        return ref_split.startswith("test")
    if wanted in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and wanted[-1] in ref_split[4:]
    return ref_split == wanted


def normalise_sentence(sentence: str) -> tuple[str, bool]:
    """Lowercase, strip and collapse whitespace; ``"`` becomes ``'`` (quotes delimit labels in prompts/answers).

    Returns ``(sentence, replaced_quote)``.
    """
    text = re.sub(r"\s+", " ", sentence).strip().lower()
    return text.replace('"', "'"), '"' in text


def convert_refcoco(
    refs: PathLike | list[dict[str, Any]],
    instances_json: PathLike | CocoIndex,
    images_dir: PathLike | None,
    split: str | None,
    *,
    name: str = "refcoco",
    grid: GridSpec | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    strict: bool = True,
    exclude_image_ids: Collection[int] = (),
    skip_exif_rotated: bool = True,
    progress: bool = True,
) -> tuple[list[GroundingRecord], ConversionSummary]:
    """Convert refs of one split to REC records (one per sentence) and a summary.

    Args:
        refs: the refs pickle path (read with :func:`load_refs`) or the loaded list.
        instances_json: that dataset's ``instances.json`` (or an index from :func:`load_instances`).
        images_dir: folder of the train2014 images; ``None`` skips the file checks.
        split: ``"train"``, ``"val"``, ``"test"``, ``"testA"``, ``"testB"`` (see :func:`split_matches`);
            ``None`` converts every ref.
        name: dataset name used in record ids and the summary title.
        strict: ``>`` threshold (official RefCOCO); ``min_coverage`` the fraction (1/28).
        exclude_image_ids: refs on these COCO image ids are skipped (``image_overlap``): the leakage guard.
    """
    grid = grid or GridSpec()
    ref_list = load_refs(refs) if isinstance(refs, (str, Path)) else refs
    index = instances_json if isinstance(instances_json, CocoIndex) else load_instances(instances_json)
    summary = ConversionSummary(f"{name} {split or 'all'}")
    images = _ImageCheck(images_dir, set(exclude_image_ids), skip_exif_rotated)
    records = []
    selected = [ref for ref in ref_list if split_matches(split, ref.get("split"))]
    for ref in tqdm(selected, desc=summary.name, unit="ref", disable=not progress):
        found = _referred_annotation(ref, index, images, summary)
        if found is None:
            continue
        info, ann = found
        hw = image_hw(info)
        assert hw is not None  # check_image refused images without a size
        obj = annotation_object(ann, hw, grid, "", summary, min_coverage=min_coverage, strict=strict)
        if obj is None:
            continue
        for position, entry in enumerate(ref["sentences"]):
            record = _sentence_record(name, ref, position, entry, info, obj, hw, grid, summary)
            if record is not None:
                records.append(record)
                summary.records += 1
                summary.objects += 1
    return records, summary


@dataclass
class _ImageCheck:
    """Whether a ref's image may be used: checked (and its skip counted) once per image id."""

    images_dir: PathLike | None
    excluded: set[int]
    skip_exif_rotated: bool
    ok: dict[int, bool] = field(default_factory=dict)

    def __call__(self, image_id: int, info: dict[str, Any], summary: ConversionSummary) -> bool:
        if image_id not in self.ok:
            summary.images += 1
            if image_id in self.excluded:
                summary.skip("image_overlap")
                self.ok[image_id] = False
            else:
                self.ok[image_id] = check_image(
                    self.images_dir, info, summary, skip_exif_rotated=self.skip_exif_rotated
                )
        return self.ok[image_id]


def _referred_annotation(
    ref: dict[str, Any], index: CocoIndex, images: _ImageCheck, summary: ConversionSummary
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(image info, annotation)`` of a well-formed ref on a usable image; ``None`` (the reason counted) otherwise."""
    ref_id, ann_id, image_id = ref.get("ref_id"), ref.get("ann_id"), ref.get("image_id")
    if not all(isinstance(v, int) for v in (ref_id, ann_id, image_id)) or not isinstance(ref.get("sentences"), list):
        summary.skip("bad_ref")
        return None
    info = index.images.get(image_id)
    if info is None:
        summary.skip("unknown_image")
        return None
    if not images(image_id, info, summary):
        return None
    ann = index.annotations.get(ann_id)
    if ann is None or ann.get("image_id") != image_id:
        summary.skip("ann_missing")
        return None
    return info, ann


def _sentence_record(
    name: str,
    ref: dict[str, Any],
    position: int,
    entry: Any,
    info: dict[str, Any],
    obj: GroundingObject,
    hw: tuple[int, int],
    grid: GridSpec,
    summary: ConversionSummary,
) -> GroundingRecord | None:
    """The REC record of one sentence of a ref; ``None`` (the reason counted) for an unusable sentence."""
    raw = entry.get("sent", entry.get("raw")) if isinstance(entry, dict) else None
    if not isinstance(raw, str):
        summary.skip("bad_ref")
        return None
    sentence, replaced = normalise_sentence(raw)
    if not sentence:
        summary.skip("empty_sentence")
        return None
    summary.fix("quote_replaced", int(replaced))
    sent_id = entry.get("sent_id", position)
    return GroundingRecord(
        id=f"{name}-{ref['ref_id']}-{sent_id}",
        image=info["file_name"],
        task="rec",
        prompt=rec_prompt(sentence),
        answer_template=rec_answer_template(sentence),
        objects=[dataclasses.replace(obj, patches=list(obj.patches), label=sentence)],
        image_hw=hw,
        grid=grid,
        image_id=ref["image_id"],
    )


# ---- VLM-R1's rec_jsons_processed split files: the lists the paper's REC/RES numbers are computed on -----------
@dataclass(frozen=True)
class VLMR1Item:
    """One item of a VLM-R1 ``rec_jsons_processed`` split file (the fields padt reads).

    Attributes:
        image: the item's ``image`` (a COCO train2014 file name, possibly under a folder).
        image_id: the COCO image id, the digits after the file name's last ``_`` (as the official script reads it).
        caption: ``normal_caption``, the referring expression; the official script matches it to the sentence.
        solution: ``solution``, the referred box ``[x1, y1, x2, y2]`` in pixels, or ``None`` when absent.
    """

    image: str
    image_id: int
    caption: str
    solution: tuple[float, float, float, float] | None = None


def read_vlm_r1_split(path: PathLike) -> list[VLMR1Item]:
    """Read a VLM-R1 split file: a JSON list (``.jsonl``: one object per line) of items with ``image``,
    ``normal_caption`` and optionally ``solution``; ``problem`` and ``normalized_solution`` are not read.

    Raises ``ValueError`` naming the file, the item's index and the field.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of items {{image, normal_caption, solution}}, got {type(data).__name__}"
        )
    return [_vlm_r1_item(entry, f"{path}: item {index}") for index, entry in enumerate(data)]


def _vlm_r1_item(entry: Any, where: str) -> VLMR1Item:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    image = entry.get("image")
    tail = Path(image).stem.rsplit("_", 1)[-1] if isinstance(image, str) else ""
    if not tail.isdigit():
        raise ValueError(
            f"{where}: field 'image': expected a COCO file name ending in _<image id> "
            f"(COCO_train2014_000000000009.jpg), got {image!r}"
        )
    caption = entry.get("normal_caption")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{where}: field 'normal_caption': expected the referring expression, got {caption!r}")
    solution = entry.get("solution")
    if solution is not None and not (
        isinstance(solution, list) and len(solution) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in solution)
    ):
        raise ValueError(f"{where}: field 'solution': expected [x1, y1, x2, y2] in pixels, got {solution!r}")
    box = None if solution is None else tuple(float(v) for v in solution)
    return VLMR1Item(image, int(tail), caption, box)


def convert_vlm_r1_split(
    split_file: PathLike | list[VLMR1Item],
    refs: PathLike | list[dict[str, Any]],
    instances_json: PathLike | CocoIndex,
    images_dir: PathLike | None,
    split: str | None,
    *,
    name: str = "refcoco",
    progress: bool = True,
    **options: Any,
) -> tuple[list[GroundingRecord], ConversionSummary]:
    """REC records for exactly the items of a VLM-R1 split file, in its order: the list the paper evaluates.

    The split file has boxes but no masks, so the records come from the refs as :func:`convert_refcoco` makes them
    (``options``: its ``grid``, ``min_coverage``, ``strict``, ``skip_exif_rotated``); each item takes the record of
    its image whose sentence is the item's ``normal_caption`` (both normalised by :func:`normalise_sentence`), as
    the official script keys them. Of several such records the one whose box is closest to the item's
    ``solution`` is taken (ties: the later one). Items without a record are counted (``vlm_r1_unmatched``: no
    such sentence; ``vlm_r1_ref_skipped``: the ref was skipped, reason counted above); the official script scores
    them as misses, which a summary note turns into the factor to apply.
    """
    items = read_vlm_r1_split(split_file) if isinstance(split_file, (str, Path)) else list(split_file)
    ref_list = load_refs(refs) if isinstance(refs, (str, Path)) else refs
    records, summary = convert_refcoco(ref_list, instances_json, images_dir, split, name=name, progress=progress,
                                       **options)
    by_key: dict[tuple[int, str], list[GroundingRecord]] = {}
    for record in records:
        by_key.setdefault((int(record.image_id), record.objects[0].label), []).append(record)
    sentences = _sentence_keys(ref_list, split)
    selected: list[GroundingRecord] = []
    uses: dict[str, int] = {}
    for item in items:
        key = (item.image_id, normalise_sentence(item.caption)[0])
        if key not in by_key:
            summary.skip("vlm_r1_ref_skipped" if key in sentences else "vlm_r1_unmatched")
            continue
        record = _closest(by_key[key], item.solution)
        uses[record.id] = uses.get(record.id, 0) + 1
        suffix = "" if uses[record.id] == 1 else f"-{uses[record.id]}"  # an item listed twice: unique ids
        selected.append(dataclasses.replace(record, id=record.id + suffix))
    summary.name += " (VLM-R1 list)"
    summary.records = summary.objects = len(selected)
    missed = len(items) - len(selected)
    summary.notes.append(
        f"{len(items)} VLM-R1 items, {len(selected)} records; the official script scores the {missed} items "
        f"without a record as misses: its number is --protocol paper's x {len(selected)}/{len(items)}"
    )
    return selected, summary


def _sentence_keys(ref_list: list[dict[str, Any]], split: str | None) -> set[tuple[Any, str]]:
    """(image id, normalised sentence) of every sentence of the split's refs, converted or not."""
    keys = set()
    for ref in ref_list:
        if split_matches(split, ref.get("split")) and isinstance(ref.get("sentences"), list):
            for entry in ref["sentences"]:
                raw = entry.get("sent", entry.get("raw")) if isinstance(entry, dict) else None
                if isinstance(raw, str):
                    keys.add((ref.get("image_id"), normalise_sentence(raw)[0]))
    return keys


def _closest(records: list[GroundingRecord], solution: tuple[float, float, float, float] | None) -> GroundingRecord:
    """The record whose box best overlaps ``solution`` (pixels); the last one without a solution or on ties."""
    if solution is None or len(records) == 1:
        return records[-1]
    boxes = torch.stack([
        normalised_to_pixels(torch.tensor(r.objects[0].bbox, dtype=torch.float64), r.image_hw) for r in records
    ])
    overlaps = box_iou(boxes, torch.tensor([solution], dtype=torch.float64))[:, 0].tolist()
    return records[max(range(len(records)), key=lambda i: (overlaps[i], i))]

@dataclass
class Overlap:
    """Images two record sets share: COCO image ids (when both records carry one) and image file names."""

    image_ids: set[int] = field(default_factory=set)
    files: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.image_ids or self.files)

    def contains(self, record: GroundingRecord) -> bool:
        return record.image_id in self.image_ids or Path(record.image).name in self.files


def find_overlap(train_records: Iterable[GroundingRecord], eval_records: Iterable[GroundingRecord]) -> Overlap:
    """Images used by both sets, e.g. RefCOCO val/test images inside a COCO or RefCOCOg training set.

    Files are compared by base name (folders differ between roots); COCO image ids also catch the same image under
    its 2014 and 2017 file names.
    """
    train = list(train_records)
    evaluation = list(eval_records)
    ids = {r.image_id for r in train if r.image_id is not None} & {
        r.image_id for r in evaluation if r.image_id is not None
    }
    files = {Path(r.image).name for r in train} & {Path(r.image).name for r in evaluation}
    return Overlap(ids, files)


def drop_overlap(records: Iterable[GroundingRecord], overlap: Overlap) -> tuple[list[GroundingRecord], int]:
    """``records`` without those on an overlapping image, and how many were dropped."""
    records = list(records)
    kept = [r for r in records if not overlap.contains(r)]
    return kept, len(records) - len(kept)


def _first_non_plain(data: Any) -> Any:
    """The first value that is not a plain container/scalar (iterative: refs files nest deeply)."""
    stack = [data]
    while stack:
        value = stack.pop()
        if type(value) not in _PLAIN_TYPES:
            return value
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return None
