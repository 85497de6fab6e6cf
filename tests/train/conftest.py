"""Synthetic training data shared by the training tests (written once per session, small images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from padt.datasets.records import GridSpec, read_jsonl, write_jsonl
from padt.datasets.synthetic_records import convert_synthetic
from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synthetic")
    return convert_synthetic(
        out, 12, seed=3, grid=GridSpec(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS),
        progress=False, report=False,
        image_size=(112, 112), object_size=(28, 56), val_fraction=0.25,
    )


@pytest.fixture(scope="session")
def images_dir(synthetic_records: dict[str, Path]) -> Path:
    return synthetic_records["rec_train"].parent / "images"


@pytest.fixture(scope="session")
def no_object_records(synthetic_records: dict[str, Path]) -> Path:
    """OVD records whose answers name no object (the category asked for is absent)."""
    records = read_jsonl(synthetic_records["ovd_train"])
    for record in records:
        record.prompt = 'Please carefully check the image and detect the following objects: ["zebra"].'
        record.answer_template = "No objects from the list are present in the image."
        record.objects = []
    path = synthetic_records["ovd_train"].parent / "records_no_objects.jsonl"
    write_jsonl(path, records)
    return path
