"""COCO instances -> open-vocabulary detection (OVD) records, following PADT_REFERENCE §4.3.

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
    category_ids = list(index.categories)
    wanted_ids = None if image_ids is None else set(image_ids)
    wanted = [i for i in index.images if wanted_ids is None or i in wanted_ids]
    excluded = set(exclude_image_ids)
    records = []
    for image_id in tqdm(wanted, desc=summary.name, unit="img", disable=not progress):
        info = index.images[image_id]
        summary.images += 1
        if image_id in excluded:
            summary.skip("image_overlap")
            continue
        hw = image_hw(info)
        if hw is not None and max_side is not None and max(hw) > max_side:
            summary.skip("image_too_large")
            continue
        if not check_image(images_dir, info, summary, skip_exif_rotated=skip_exif_rotated) or hw is None:
            continue
        anns = [a for a in index.by_image[image_id] if _known_category(a, index, summary)]
        counts = Counter(a["category_id"] for a in anns)
        over_limit = {c for c, n in counts.items() if n > max_instances}
        summary.skip("category_over_limit", sum(counts[c] for c in over_limit))
        order = _category_order(category_ids, counts, split, seed, image_id, drop_prob, drop_fraction)
        prompt_ids = [c for c in order if c not in over_limit]
        groups: list[tuple[str, int]] = []
        objects: list[GroundingObject] = []
        for category_id in prompt_ids:
            if category_id not in counts:
                continue
            label = index.categories[category_id]
            kept = 0
            for ann in anns:
                if ann["category_id"] != category_id:
                    continue
                if not include_crowd and ann.get("iscrowd") in (1, True):
                    summary.skip("crowd_excluded")
                    continue
                obj = annotation_object(
                    ann, hw, grid, label, summary, min_coverage=min_coverage, strict=strict
                )
                if obj is not None:
                    objects.append(obj)
                    kept += 1
            if kept:
                groups.append((label, kept))
        records.append(
            GroundingRecord(
                id=str(image_id),
                image=info["file_name"],
                task="ovd",
                prompt=ovd_prompt([index.categories[c] for c in prompt_ids]),
                answer_template=ovd_answer_template([label for label, count in groups for _ in range(count)]),
                objects=objects,
                image_hw=hw,
                grid=grid,
                image_id=image_id,
            )
        )
        summary.records += 1
        summary.objects += len(objects)
    return records, summary


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
