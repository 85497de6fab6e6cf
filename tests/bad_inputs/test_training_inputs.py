"""Bad inputs to ``padt train`` and its records: each is refused early, with a message that names what to fix.

Covers: an output folder that holds an earlier run, missing images (all reported before the first step), the
step a non-finite loss names, duplicate record ids, and image paths that leave the images root.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import padt.train.loop as loop_module
from padt.datasets.records import GridSpec, read_jsonl, write_jsonl
from padt.datasets.synthetic_records import convert_synthetic
from padt.datasets.training import GroundingDataset
from padt.losses import PaDTCriterion
from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS, tiny_pipeline
from padt.train.config import TrainConfig
from padt.train.loop import train


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic records (our layout) of 8 small images; ``images`` is their folder."""
    out = tmp_path_factory.mktemp("scenes")
    paths = convert_synthetic(
        out, 8, seed=5, grid=GridSpec(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS),
        progress=False, report=False, image_size=(112, 112), object_size=(28, 56), val_fraction=0.25,
    )
    return {**paths, "images": out / "images"}


def _config(scenes: dict[str, Path], out: Path, records: Path | None = None, **overrides) -> TrainConfig:
    settings = dict(
        records=[str(records or scenes["rec_train"])], images=str(scenes["images"]), output_dir=str(out), tiny=True,
        max_steps=2, batch_size=2, lr=1e-3, decoder_warmup_steps=1, seed=0,
    )
    return TrainConfig(**{**settings, **overrides})


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_new_run_refuses_an_output_folder_holding_an_earlier_run(scenes, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(scenes, out, max_steps=4, save_every=2))
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"already holds an earlier run \(checkpoints/latest, checkpoints/step-0000002"
                                         r".*pass --resume to continue it, or --overwrite to delete"):
        train(_config(scenes, out, max_steps=2, save_every=1))
    # Nothing of the earlier run was touched, and it still resumes.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before and _steps(out) == [1, 2, 3, 4]


def test_resume_and_overwrite_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        TrainConfig(resume=True, overwrite=True)


def test_missing_images_are_all_reported_before_the_model_loads(scenes, tmp_path: Path, monkeypatch) -> None:
    records = read_jsonl(scenes["rec_train"])
    gone = sorted({r.image for r in records})[:2]
    for record in records:
        if record.image in gone:
            record.image = "gone/" + record.image
    path = write_jsonl_to(tmp_path / "records.jsonl", records)
    total = len({r.image for r in records})

    def never(config):
        raise AssertionError("the model loaded although images are missing")

    monkeypatch.setattr(loop_module, "load_starting_model", never)
    pattern = rf"2 of the {total} images named by the records are missing under .*: gone/{re.escape(gone[0])} \(record"
    with pytest.raises(FileNotFoundError, match=pattern) as caught:
        train(_config(scenes, tmp_path / "run", records=path))
    assert f"gone/{gone[1]}" in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_names_the_step_as_metrics_jsonl_numbers_it(scenes, tmp_path: Path, monkeypatch) -> None:
    original, calls = PaDTCriterion.forward, []

    def poisoned_on_the_second_step(self, **kwargs):
        terms = original(self, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # one micro-batch per step: the second call is the second step
            terms["box_giou"] = terms["box_giou"] * float("nan")
        return terms

    monkeypatch.setattr(PaDTCriterion, "forward", poisoned_on_the_second_step)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^step 2: loss term 'box_giou' is not finite"):
        train(_config(scenes, out, max_steps=3))
    assert _steps(out) == [1]  # the step before it, under the same number


def test_duplicate_record_ids_name_the_id_and_both_lines(scenes, tmp_path: Path) -> None:
    records = read_jsonl(scenes["rec_train"])[:3]
    records[2].id = records[0].id
    path = write_jsonl_to(tmp_path / "records.jsonl", records)
    with pytest.raises(ValueError, match=rf"records.jsonl:3: field 'id': duplicate id '{re.escape(records[0].id)}', "
                                         "already used on line 1; record ids must be unique within a file"):
        read_jsonl(path)


def test_the_official_layout_may_reuse_image_ids_as_record_ids(scenes, tmp_path: Path) -> None:
    records = read_jsonl(scenes["rec_train"])
    by_image = [r for r in records if r.image == records[0].image]
    path = tmp_path / "official.jsonl"
    write_jsonl(path, by_image, official=True)  # the official layout's id is the image id, shared by its refs
    assert len(by_image) > 1 and len(read_jsonl(path)) == len(by_image)


@pytest.mark.parametrize("image", ["../outside.png", "a/../../outside.png", "/etc/outside.png"])
def test_read_jsonl_refuses_image_paths_that_leave_the_images_root(scenes, tmp_path: Path, image: str) -> None:
    records = read_jsonl(scenes["rec_train"])[:2]
    records[1].image = image
    path = write_jsonl_to(tmp_path / "records.jsonl", records)
    message = (rf"records.jsonl:2: field 'image': record {re.escape(records[1].id)}: path '{re.escape(image)}' "
               r"leaves the images root .*images; give the image's path relative to the images root")
    with pytest.raises(ValueError, match=message):
        read_jsonl(path, images_root=scenes["images"])


@pytest.mark.parametrize("image", ["../outside.png", "/etc/outside.png"])
def test_the_training_dataset_refuses_image_paths_that_leave_the_images_root(scenes, image: str) -> None:
    records = read_jsonl(scenes["rec_train"])[:2]
    records[0].image = image
    message = rf"field 'image': record {re.escape(records[0].id)}: path '{re.escape(image)}' leaves the images root"
    with pytest.raises(ValueError, match=message):
        GroundingDataset(records, scenes["images"], tiny_pipeline(seed=0).processor, mask_scale=4)


def write_jsonl_to(path: Path, records) -> Path:
    write_jsonl(path, records)
    return path
