"""Records against the model's patch grid, and ``padt convert --model``: records are compared by the grid their
image gets (not by the settings they were converted with), a mismatch names the record and says how to convert
again, and ``--model DIR`` takes the grid settings from a model folder instead of numbers copied by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from padt.cli import main
from padt.datasets.records import GridSpec, check_grid, read_jsonl
from padt.datasets.synthetic_records import convert_synthetic
from padt.datasets.training import GroundingDataset
from padt.testing import TINY_MAX_PIXELS, tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def model_dir(pipe, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grids") / "model"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def default_records(tmp_path_factory) -> list:
    """112-px synthetic scenes converted with the default pixel budget (not the tiny model's)."""
    out = tmp_path_factory.mktemp("default_grid")
    paths = convert_synthetic(out, 4, seed=1, grid=GridSpec(), progress=False, report=False, image_size=(112, 112),
                              object_size=(28, 48), val_fraction=0.0)
    return read_jsonl(paths["rec_train"])


def convert(tmp_path: Path, *flags: str) -> int:
    return main(["convert", "synthetic", "--out", str(tmp_path / "scenes"), "--images", "2", "--image-size", "112",
                 "112", "--quiet", *flags])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_default_budget_records_fit_the_tiny_model_when_the_grid_is_the_same(default_records, pipe) -> None:
    # 112 px: the default budget and the tiny model's (224 x 224 px at most) both leave the image at 4 x 4 cells.
    assert default_records[0].grid.max_pixels != TINY_MAX_PIXELS
    check_grid(default_records, pipe.processor)  # the demo model's and padt eval's check
    dataset = GroundingDataset(default_records, "images", pipe.processor, mask_scale=4)  # padt train --tiny's
    assert len(dataset) == len(default_records)


def test_another_grid_is_refused_naming_the_record_and_the_fix(default_records, pipe) -> None:
    record = dataclasses.replace(default_records[0], grid=GridSpec(max_pixels=56 * 56))  # 2 x 2 cells
    with pytest.raises(ValueError) as raised:
        check_grid([record], pipe.processor)
    message = str(raised.value)
    assert message.startswith(f"record {record.id}: its patches lie on a 2x2 merged grid of its 112x112 image")
    assert "puts that image on a 4x4 grid" in message
    assert "convert the data again with --model <this model's folder>" in message
    assert f"--min-pixels 3136 --max-pixels {TINY_MAX_PIXELS}" in message


def test_a_record_without_size_and_other_settings_is_refused(default_records, pipe) -> None:
    record = dataclasses.replace(default_records[0], image_hw=None)
    with pytest.raises(ValueError, match=f"record {record.id}: .* has no image_hw to compare the grids"):
        check_grid([record], pipe.processor)


def test_convert_takes_the_grid_from_the_model_folder(model_dir, pipe, tmp_path) -> None:
    assert convert(tmp_path, "--model", str(model_dir)) == 0
    record = read_jsonl(tmp_path / "scenes" / "records_ovd_train.jsonl")[0]
    assert record.grid == pipe.processor.grid_spec and record.grid.max_pixels == TINY_MAX_PIXELS


def test_convert_takes_the_longest_side_from_the_model_folder(pipe, tmp_path) -> None:
    folder = tmp_path / "resizing"
    pipe.processor.longest_side = 224
    try:
        pipe.save_pretrained(folder)
    finally:
        pipe.processor.longest_side = None
    assert convert(tmp_path, "--model", str(folder), "--image-size", "56", "56") == 0
    record = read_jsonl(tmp_path / "scenes" / "records_ovd_train.jsonl")[0]
    assert record.grid.longest_side == 224 and record.geometry().merged_grid_hw == (8, 8)  # 56 px up to 224


@pytest.mark.parametrize("flag", ["--min-pixels", "--max-pixels"])
def test_model_and_an_explicit_pixel_budget_are_refused(model_dir, tmp_path, capsys, flag) -> None:
    assert convert(tmp_path, "--model", str(model_dir), flag, "3136") == 2
    err = one_line_error(capsys)
    assert f"--model {model_dir} already sets the pixel budget (its processor's); leave out {flag}" in err


def test_a_missing_model_folder_is_refused(tmp_path, capsys) -> None:
    assert convert(tmp_path, "--model", str(tmp_path / "nowhere")) == 2
    assert f"--model {tmp_path / 'nowhere'}: model folder not found" in one_line_error(capsys)


def test_a_folder_without_processor_settings_is_refused(tmp_path, capsys) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert convert(tmp_path, "--model", str(folder)) == 2
    assert f"--model {folder}: no processor_config.json or preprocessor_config.json" in one_line_error(capsys)
