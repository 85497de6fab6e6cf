"""COCO instances -> open-vocabulary detection (OVD) records, prepared as the official PaDT COCO 2017 OVD data.

Per image:

* images whose longer side exceeds ``max_side`` (1288 px) are skipped;
* a category with more than ``max_instances`` (50) annotations in the image is removed from prompt and answer;
* ``split="val"``: the prompt lists every category in ascending category id order;
* ``split="train"``: the category order is shuffled per image, and with probability ``drop_prob`` (0.5) the first
  ``drop_fraction`` (half) of the shuffled categories leave the prompt unless present in the image, so only
  negatives are dropped; the shuffle comes from a generator seeded by ``(seed, image_id)``, so a record does not
  depend on which other images were converted;
* the answer lists the present categories in prompt order, each annotation once (file order) as ``<|Obj_N|>``;
* crowd annotations are kept (``iscrowd=1`` in the record), as in the official data; ``include_crowd=False``
  leaves them out of the answer (counted as ``crowd_excluded``).

Objects whose mask selects no merged-grid cell are removed (counted); a category left without objects is then
absent from the answer, but stays in the prompt (it is present in the image, so it is not a dropped negative).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from padt.datasets.annotations import CocoIndex, annotation_object, check_image, image_hw, load_instances
from padt.datasets.patches import DEFAULT_MIN_COVERAGE
from padt.datasets.records import GridSpec, GroundingObject, GroundingRecord, PathLike
from padt.datasets.summary import ConversionSummary
from padt.text.prompts import ovd_answer_template, ovd_prompt


def convert_coco(
    instances_json: PathLike | CocoIndex,
    images_dir: PathLike | None,
    split: str,
    seed: int = 0,
    *,
    grid: GridSpec | None = None,
    max_side: int | None = 1288,
    max_instances: int = 50,
    drop_prob: float = 0.5,
    drop_fraction: float = 0.5,
    include_crowd: bool = True,
    image_ids: Collection[int] | None = None,
    exclude_image_ids: Collection[int] = (),
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    strict: bool = False,
    skip_exif_rotated: bool = True,
    progress: bool = True,
) -> tuple[list[GroundingRecord], ConversionSummary]:
    """Convert a COCO instances file to OVD records (one per image) and a summary of what was skipped.

    Args:
        instances_json: path of ``instances_*.json`` (or an index from :func:`load_instances`).
        images_dir: folder holding the ``file_name`` images; ``None`` skips the file checks (existence, size).
        split: ``"train"`` (shuffled, negatives dropped) or ``"val"`` (fixed order).
        seed: seeds the per-image shuffle of ``split="train"``.
        grid: processor settings for the patches (default: Qwen2.5-VL's).
        max_side: skip images whose longer side exceeds it (``None``: keep all).
        max_instances: drop a category from prompt and answer when the image has more annotations of it.
        image_ids: convert only these images (default: all); ``exclude_image_ids``: never these (leakage guard).
        min_coverage, strict: patch threshold (see :func:`padt.datasets.patches.select_patches`).
        progress: show a tqdm progress bar.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    grid = grid or GridSpec()
    index = instances_json if isinstance(instances_json, CocoIndex) else load_instances(instances_json)
    summary = ConversionSummary(f"coco {split}")
    summary.skip("bad_annotation", index.malformed)
    summary.skip("unknown_image", index.orphans)
    settings = _OvdSettings(
        list(index.categories), split, seed, grid, max_instances, drop_prob, drop_fraction, include_crowd,
        min_coverage, strict,
    )
    wanted_ids = None if image_ids is None else set(image_ids)
    wanted = [i for i in index.images if wanted_ids is None or i in wanted_ids]
    excluded = set(exclude_image_ids)
    records = []
    for image_id in tqdm(wanted, desc=summary.name, unit="img", disable=not progress):
        info = index.images[image_id]
        summary.images += 1
        hw = _convertible_hw(image_id, info, excluded, max_side, images_dir, summary, skip_exif_rotated)
        if hw is None:
            continue
        record = _image_record(index, image_id, info, hw, settings, summary)
        records.append(record)
        summary.records += 1
        summary.objects += len(record.objects)
    return records, summary


@dataclass(frozen=True)
class _OvdSettings:
    """The per-image conversion settings of :func:`convert_coco`."""

    category_ids: list[int]  # every category of the instances file, in file order
    split: str
    seed: int
    grid: GridSpec
    max_instances: int
    drop_prob: float
    drop_fraction: float
    include_crowd: bool
    min_coverage: float
    strict: bool


def _convertible_hw(
    image_id: int,
    info: dict[str, Any],
    excluded: set[int],
    max_side: int | None,
    images_dir: PathLike | None,
    summary: ConversionSummary,
    skip_exif_rotated: bool,
) -> tuple[int, int] | None:
    """The image's ``(height, width)`` when it is to be converted; ``None`` (the reason counted) when it is skipped."""
    if image_id in excluded:
        summary.skip("image_overlap")
        return None
    hw = image_hw(info)
    if hw is not None and max_side is not None and max(hw) > max_side:
        summary.skip("image_too_large")
        return None
    if not check_image(images_dir, info, summary, skip_exif_rotated=skip_exif_rotated) or hw is None:
        return None
    return hw


def _image_record(
    index: CocoIndex,
    image_id: int,
    info: dict[str, Any],
    hw: tuple[int, int],
    settings: _OvdSettings,
    summary: ConversionSummary,
) -> GroundingRecord:
    """The OVD record of one image: its prompt categories, and the answer objects in prompt order."""
    anns = [a for a in index.by_image[image_id] if _known_category(a, index, summary)]
    counts = Counter(a["category_id"] for a in anns)
    over_limit = {c for c, n in counts.items() if n > settings.max_instances}
    summary.skip("category_over_limit", sum(counts[c] for c in over_limit))
    order = _category_order(
        settings.category_ids, counts, settings.split, settings.seed, image_id, settings.drop_prob,
        settings.drop_fraction,
    )
    prompt_ids = [c for c in order if c not in over_limit]
    groups: list[tuple[str, int]] = []
    objects: list[GroundingObject] = []
    for category_id in prompt_ids:
        if category_id not in counts:
            continue
        label = index.categories[category_id]
        kept = _add_category_objects(objects, anns, category_id, label, hw, settings, summary)
        if kept:
            groups.append((label, kept))
    return GroundingRecord(
        id=str(image_id),
        image=info["file_name"],
        task="ovd",
        prompt=ovd_prompt([index.categories[c] for c in prompt_ids]),
        answer_template=ovd_answer_template([label for label, count in groups for _ in range(count)]),
        objects=objects,
        image_hw=hw,
        grid=settings.grid,
        image_id=image_id,
    )


def _add_category_objects(
    objects: list[GroundingObject],
    anns: list[dict[str, Any]],
    category_id: int,
    label: str,
    hw: tuple[int, int],
    settings: _OvdSettings,
    summary: ConversionSummary,
) -> int:
    """Append to ``objects`` the usable annotations of one category (file order); returns how many were added."""
    kept = 0
    for ann in anns:
        if ann["category_id"] != category_id:
            continue
        if not settings.include_crowd and ann.get("iscrowd") in (1, True):
            summary.skip("crowd_excluded")
            continue
        obj = annotation_object(
            ann, hw, settings.grid, label, summary, min_coverage=settings.min_coverage, strict=settings.strict
        )
        if obj is not None:
            objects.append(obj)
            kept += 1
    return kept

def _category_order(
    category_ids: list[int],
    present: Counter[int],
    split: str,
    seed: int,
    image_id: int,
    drop_prob: float,
    drop_fraction: float,
) -> list[int]:
    """Prompt category order of one image (before the over-limit filter)."""
    if split == "val":
        return list(category_ids)
    rng = np.random.default_rng([seed, image_id])
    order = [category_ids[i] for i in rng.permutation(len(category_ids))]
    if rng.random() < drop_prob:
        head = set(order[: int(drop_fraction * len(order))])
        order = [c for c in order if c not in head or c in present]
    return order


def _known_category(ann: dict[str, Any], index: CocoIndex, summary: ConversionSummary) -> bool:
    if ann.get("category_id") in index.categories:
        return True
    summary.skip("bad_annotation")
    return False
