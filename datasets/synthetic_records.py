"""Synthetic scenes as record files: draw them, then convert them with the COCO and RefCOCO readers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from padt.datasets.coco import convert_coco
from padt.datasets.records import GroundingRecord, write_jsonl
from padt.datasets.refcoco import convert_refcoco
from padt.datasets.summary import ConversionSummary
from padt.datasets.synthetic import generate_synthetic


def convert_synthetic(
    out: Path, num_images: int, seed: int, *, grid: Any, official: bool = False, progress: bool = True,
    report: bool = True,
    **scene: Any,
) -> dict[str, Path]:
    """Draw synthetic scenes (``scene``: options of :func:`~padt.datasets.synthetic.generate_synthetic`) and
    convert them with the COCO and RefCOCO readers for the processor grid ``grid``.

    Writes ``records_ovd_{train,val}.jsonl`` and ``records_rec_{train,val}.jsonl`` next to ``images/``,
    ``instances.json`` and ``refs.p``; returns ``{"ovd_train": path, "rec_val": path, ...}``. ``progress`` shows
    progress bars, ``report`` prints what was written and the conversion summaries.
    """
    out = Path(out)
    dataset = generate_synthetic(out, num_images, seed, **scene)
    if report:
        print(
            f"wrote {dataset.num_images} images, {dataset.num_objects} objects, {dataset.num_refs} refs "
            f"({dataset.objects_without_ref} objects without a unique expression) to {dataset.root}"
        )
    paths = {}
    for split, image_ids in dataset.split_image_ids.items():
        records, summary = convert_coco(
            dataset.instances_path, dataset.images_dir, split, seed, grid=grid, image_ids=image_ids,
            progress=progress,
        )
        summary.name = f"synthetic ovd {split}"
        paths[f"ovd_{split}"] = out / f"records_ovd_{split}.jsonl"
        write_records(paths[f"ovd_{split}"], records, summary, official=official, report=report)
        records, summary = convert_refcoco(
            dataset.refs_path, dataset.instances_path, dataset.images_dir, split, name="synthetic", grid=grid,
            progress=progress,
        )
        summary.name = f"synthetic rec {split}"
        paths[f"rec_{split}"] = out / f"records_rec_{split}.jsonl"
        write_records(paths[f"rec_{split}"], records, summary, official=official, report=report)
    return paths


def write_records(
    path: Path, records: list[GroundingRecord], summary: ConversionSummary, *, official: bool, report: bool = True
) -> None:
    """Write ``records`` to ``path`` (JSONL); with ``report``, print the conversion summary and the path."""
    write_jsonl(path, records, official=official)
    if not report:
        return
    print(summary.table())
    print(f"  -> {path}")
    sys.stdout.flush()
