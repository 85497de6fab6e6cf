"""RefCOCO / RefCOCO+ / RefCOCOg -> referring expression (REC/RES) records, and a leakage guard.

Inputs are the files of the original release: ``refs(unc).p`` (refcoco, refcoco+) or ``refs(umd).p`` (refcocog),
a pickled list of plain dicts ``{ref_id, ann_id, image_id, split, sentences: [{sent, raw, tokens, sent_id}],
category_id, ...}``, and that dataset's ``instances.json`` (COCO train2014 images and annotations).

The pickle is read by :func:`load_refs` with an unpickler that refuses every global, so a crafted file cannot run
code: only dicts, lists, tuples, strings, numbers, booleans and ``None`` come back.

One record per (ref, sentence), as in the official PaDT REC data: the mask is the union of the referred annotation's
polygons, the box its ``bbox``, the sentence lowercased. The patch threshold is strict (``>``), as in the
official RefCOCO script. A ref whose mask selects no cell is skipped (counted once per ref).
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from padt.datasets.annotations import CocoIndex, annotation_object, check_image, image_hw, load_instances
from padt.datasets.patches import DEFAULT_MIN_COVERAGE
from padt.datasets.records import GridSpec, GroundingObject, GroundingRecord, PathLike
from padt.datasets.summary import ConversionSummary
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
