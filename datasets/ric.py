"""Referring image captioning (RIC) captions with inline box tags -> RIC records.

The RIC release (``ric_instances_{train,val}2017.json``) is a COCO 2017 instances file whose image entries carry
``captions``: free text written by Qwen2.5-VL-72B from the box list, citing annotations with inline tags such as
``a man (<box_id: 2016798/>) walks two dogs (<box_id: 12/>, <box_id: 34/>).`` The generator did not always write
the tag right; :func:`parse_caption` repairs the shapes seen in the data:

* ``<box_id: 405710/>``, ``<box_id:405710>`` (canonical; the slash and spaces are optional);
* text before the id: ``<box_id: person_ann_id/2016798>``;
* several ids in one tag: ``<box_id: 405710/, 714044/>``, ``<box_id: 1057221,1561272>``;
* a missing ``>``: ``(<box_id: 405710/)``;
* a bare id list ``(405710, 714044)`` whose every number is an annotation of the image.

Each tag becomes ``<|Obj_k|>`` (k in reading order) with its object from the COCO annotation. A tag whose
annotation is unknown, on another image, or selects no merged-grid cell is removed with the separator or the
parentheses around it. Captions that do not end in ``.`` or ``"`` (truncated generations) are skipped, as in the
official script. The prompt is ``Please describe this image.``; object labels are ``""``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from padt.datasets.annotations import CocoIndex, annotation_object, check_image, image_hw, index_instances
from padt.datasets.patches import DEFAULT_MIN_COVERAGE
from padt.datasets.records import GridSpec, GroundingObject, GroundingRecord, PathLike, placeholder
from padt.datasets.summary import ConversionSummary
from padt.text.prompts import ric_prompt

# One tag: optional '<', 'box_id', optional ':', then either anything up to a '>' that comes before any other
# bracket ("closed"), or, for a tag that lost its '>', one or more ids where each id may carry junk without spaces
# before it ('person_ann_id/'), a trailing '/' and ',' between ids: that junk cannot contain spaces, so an unclosed
# tag does not swallow the words after it.
_TAG = re.compile(
    r"<?box_id\s*:?(?:(?P<closed>[^<>()]*?\d[^<>()]*?)>|(?P<ids>(?:\s*,?\s*[^\d\s<>(),]*\d+\s*/?)+)(?:\s*>)?)",
    re.IGNORECASE,
)
_CANONICAL = re.compile(r"<box_id:\s*\d+\s*/?>")
_BARE_GROUP = re.compile(r"\((?P<ids>\s*\d+(?:\s*,\s*\d+)*\s*)\)")
_TOKEN = re.compile(r"\x00(\d+)\x00")  # internal: one resolved tag id
_REMOVED = "\x01"
_STRAY = re.compile(r"\s*\(?\s*<?box_id[^()<>]*>?\s*\)?", re.IGNORECASE)

Resolver = Callable[[int], "GroundingObject | None"]


def parse_caption(
    caption: str, image_ann_ids: set[int], resolve: Resolver, summary: ConversionSummary
) -> tuple[str, list[GroundingObject]] | None:
    """Turn a tagged caption into ``(answer_template, objects)``, or ``None`` when it cannot be repaired.

    ``resolve(ann_id)`` returns the object of an annotation of this image, or ``None`` (after counting why) when
    it has none; ``image_ann_ids`` are the image's annotation ids, used to recognise bare id lists.
    """

    def canonicalise(match: re.Match[str]) -> str:
        # The id of each comma-separated piece is its last number ('person2/12345' -> 12345).
        pieces = (match.group("closed") or match.group("ids")).split(",")
        ids = [numbers[-1] for numbers in (re.findall(r"\d+", piece) for piece in pieces) if numbers]
        if len(ids) != 1 or not _CANONICAL.fullmatch(match.group(0)):
            summary.fix("tag_repaired")
        return ", ".join(f"\x00{i}\x00" for i in ids)

    def bare_group(match: re.Match[str]) -> str:
        ids = re.findall(r"\d+", match.group("ids"))
        if not all(int(i) in image_ann_ids for i in ids):
            return match.group(0)  # ordinary numbers in parentheses
        summary.fix("tag_repaired")
        return "(" + ", ".join(f"\x00{i}\x00" for i in ids) + ")"

    objects: list[GroundingObject] = []

    def resolve_token(match: re.Match[str]) -> str:
        obj = resolve(int(match.group(1)))
        if obj is None:
            summary.fix("tag_removed")
            return _REMOVED
        objects.append(obj)
        return placeholder(len(objects) - 1)

    text = _TAG.sub(canonicalise, caption)
    text = _BARE_GROUP.sub(bare_group, text)
    text = _TOKEN.sub(resolve_token, text)
    text = _remove_marks(text)
    if re.search("box_id", text, re.IGNORECASE):
        text, count = _STRAY.subn("", text)
        summary.fix("stray_tag_removed", count)
    if re.search("box_id", text, re.IGNORECASE) or "\x00" in text:
        summary.skip("unparseable_tags")
        return None
    return text, objects


def convert_ric(
    captions_json: PathLike,
    instances_json: PathLike | None = None,
    images_dir: PathLike | None = None,
    *,
    grid: GridSpec | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    strict: bool = False,
    skip_exif_rotated: bool = True,
    progress: bool = True,
) -> tuple[list[GroundingRecord], ConversionSummary]:
    """Convert RIC captions to records (one per caption) and a summary.

    Args:
        captions_json: the RIC file. Either a COCO instances file whose ``images[i].captions`` lists the captions
            (the official release), or COCO-captions style ``{"annotations": [{"image_id", "caption"}]}`` /
            a plain list of such entries.
        instances_json: the COCO instances (annotations cited by the tags); ``None`` uses ``captions_json``,
            which the official release makes both.
        images_dir: folder of the images; ``None`` skips the file checks.
        min_coverage, strict: patch threshold (official RIC: ``>=`` 1/28).
    """
    grid = grid or GridSpec()
    captions_data = _read_json(captions_json)
    instances_data = captions_data if instances_json is None else _read_json(instances_json)
    if not isinstance(instances_data, dict) or not isinstance(instances_data.get("images"), list):
        raise ValueError(f"{instances_json or captions_json}: expected a COCO instances object with 'images'")
    index: CocoIndex = index_instances(instances_data, str(instances_json or captions_json))
    captions = _captions_by_image(captions_data, str(captions_json))
    summary = ConversionSummary("ric")
    summary.skip("bad_annotation", index.malformed)
    records = []
    for image_id in tqdm(list(captions), desc=summary.name, unit="img", disable=not progress):
        summary.images += 1
        info = index.images.get(image_id)
        if info is None:
            summary.skip("unknown_image", len(captions[image_id]))
            continue
        if not check_image(images_dir, info, summary, skip_exif_rotated=skip_exif_rotated):
            continue
        hw = image_hw(info)
        assert hw is not None  # check_image refused images without a size
        anns = {ann["id"]: ann for ann in index.by_image.get(image_id, [])}
        resolve = _resolver(anns, hw, grid, summary, min_coverage, strict)
        for position, caption in enumerate(captions[image_id]):
            if not isinstance(caption, str) or not caption.rstrip().endswith((".", '"')):
                summary.skip("caption_unterminated")
                continue
            parsed = parse_caption(caption.strip(), set(anns), resolve, summary)
            if parsed is None:
                continue
            template, objects = parsed
            records.append(
                GroundingRecord(
                    id=f"ric-{image_id}-{position}",
                    image=info["file_name"],
                    task="ric",
                    prompt=ric_prompt(),
                    answer_template=template,
                    objects=objects,
                    image_hw=hw,
                    grid=grid,
                    image_id=image_id,
                )
            )
            summary.records += 1
            summary.objects += len(objects)
    return records, summary


def _resolver(
    anns: dict[int, dict[str, Any]],
    hw: tuple[int, int],
    grid: GridSpec,
    summary: ConversionSummary,
    min_coverage: float,
    strict: bool,
) -> Resolver:
    """``ann_id -> object`` for one image's tags; each mask is decoded once even when several captions cite it.

    A repeated citation of an annotation that was skipped counts the same reason again (one count per tag).
    """
    cache: dict[int, tuple[GroundingObject | None, str]] = {}

    def resolve(ann_id: int) -> GroundingObject | None:
        if ann_id not in anns:
            summary.skip("tag_unknown_ann")
            return None
        if ann_id not in cache:
            probe = ConversionSummary("probe")
            obj = annotation_object(anns[ann_id], hw, grid, "", probe, min_coverage=min_coverage, strict=strict)
            summary.fixed.update(probe.fixed)
            cache[ann_id] = (obj, next(iter(probe.skipped), ""))
        obj, reason = cache[ann_id]
        if obj is None:
            summary.skip(reason)
            return None
        return dataclasses.replace(obj, patches=list(obj.patches), bbox=list(obj.bbox))

    return resolve


def _remove_marks(text: str) -> str:
    """Delete removed-tag marks with their parentheses or comma separators."""
    mark = re.escape(_REMOVED)
    text = re.sub(rf"\s*\(\s*{mark}(?:\s*,\s*{mark})*\s*\)", "", text)  # a group whose every tag went
    text = re.sub(rf"\s*,\s*{mark}", "", text)  # a later member of a group
    text = re.sub(rf"{mark}\s*,\s*", "", text)  # the first member of a group
    return re.sub(rf"\s*{mark}", "", text)  # a tag on its own


def _read_json(path: PathLike) -> Any:
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error


def _captions_by_image(data: Any, source: str) -> dict[int, list[Any]]:
    """image id -> captions, from either supported layout (see :func:`convert_ric`)."""
    captions: dict[int, list[Any]] = {}
    if isinstance(data, dict) and isinstance(data.get("images"), list) and any(
        isinstance(image, dict) and "captions" in image for image in data["images"]
    ):
        for image in data["images"]:
            if isinstance(image, dict) and isinstance(image.get("captions"), list):
                captions.setdefault(image.get("id"), []).extend(image["captions"])
        return captions
    entries = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected images[].captions or a list of {{image_id, caption}} entries")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image_id"), int):
            raise ValueError(f"{source}: caption entry {position} lacks an integer 'image_id'")
        captions.setdefault(entry["image_id"], []).append(entry.get("caption"))
    return captions
