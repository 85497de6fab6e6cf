"""``padt predict`` on a saved tiny model: overlay PNG, JSON of the objects, errors as exit code 2."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from padt.cli import main
from padt.pipeline import PaDTPipeline
from padt.testing import tiny_pipeline

H, W = 200, 300
ANSWER = 'There are 2 "circle" (<|VRT_3|><|VRT_4|>, <|VRT_40|>) in this image.'
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture()
def image_path(tmp_path) -> Path:
    image = np.full((H, W, 3), 235, dtype=np.uint8)
    cv2.circle(image, (100, 100), 40, (200, 30, 30), -1)
    path = tmp_path / "shapes.png"
    Image.fromarray(image).save(path)
    return path


@pytest.fixture()
def forced_answer(monkeypatch):
    """Make every ask() answer ANSWER (teacher-forced through the real model and decoder).

    A random tiny model writes no VRTs, so without this the objects list would be empty and the checks on
    boxes, masks and patches would check nothing.
    """

    def ask(self, images, prompts, *, require_labels=True, **generate_kwargs):
        return [self.decode_answer(i, ANSWER, p, require_labels=require_labels) for i, p in zip(images, prompts)]

    monkeypatch.setattr(PaDTPipeline, "ask", ask)


def test_writes_overlay_json_and_summary(model_dir, image_path, tmp_path, capsys, forced_answer):
    out, js, heat = tmp_path / "vis.png", tmp_path / "out" / "objects.json", tmp_path / "steps.png"
    code = main([
        "predict", "--model", str(model_dir), "--image", str(image_path), "--detect", "circle, square",
        "--out", str(out), "--json", str(js), "--heatmaps", str(heat), "--device", "cpu",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "'circle'" in printed and "score" in printed and str(out) in printed

    record = json.loads(js.read_text())
    assert record["task"] == "detect" and '["circle", "square"]' in record["prompt"]
    assert record["image_sizes"] == [[H, W]]
    assert [o["label"] for o in record["objects"]] == ["circle", "circle"]
    assert [o["patches"] for o in record["objects"]] == [[3, 4], [40]]
    for obj in record["objects"]:
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 <= x2 <= W and 0 <= y1 <= y2 <= H
        assert 0.0 <= obj["score"] <= 1.0
        assert obj["mask_rle"]["size"] == [H, W] and isinstance(obj["mask_rle"]["counts"], str)

    overlay = np.asarray(Image.open(out).convert("RGB"))
    original = np.asarray(Image.open(image_path).convert("RGB"))
    assert overlay.shape == original.shape
    assert (overlay != original).any(axis=-1).sum() > 100, "nothing was drawn"
    # Gallery of the answer plus one tile per VRT step (3), four per row: one row of 4 tiles of 256 px.
    assert np.asarray(Image.open(heat)).shape[:2] == (256 + 24, 4 * 256)


def test_random_model_end_to_end(model_dir, image_path, tmp_path, monkeypatch):
    """The real generation path (no forced answer); the default overlay name lands in the current folder."""
    monkeypatch.chdir(tmp_path)
    code = main([
        "predict", "--model", str(model_dir), "--image", str(image_path), "--refer", "the red circle",
        "--json", "r.json", "--max-new-tokens", "4",
    ])  # fmt: skip
    assert code == 0
    assert (tmp_path / "shapes.padt.png").is_file()
    record = json.loads((tmp_path / "r.json").read_text())
    assert {"task", "prompt", "image", "model", "text", "objects", "problems", "image_sizes"} <= set(record)
    assert record["task"] == "refer" and "the red circle" in record["prompt"]


def test_missing_model_folder_exits_2_and_names_it(image_path, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["predict", "--model", str(missing), "--image", str(image_path), "--caption"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_missing_demo_model_tells_how_to_make_it(image_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PADT_DEMO_MODEL", str(tmp_path / "demo-model"))
    assert main(["predict", "--image", str(image_path), "--caption"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "demo-model") in err and "padt demo --retrain" in err and "--model" in err


def test_bad_inputs_exit_2(model_dir, image_path, tmp_path, capsys):
    assert main(["predict", "--model", str(model_dir), "--image", str(tmp_path / "none.png"), "--caption"]) == 2
    assert "none.png" in capsys.readouterr().err
    assert main(["predict", "--model", str(model_dir), "--image", str(image_path), "--detect", " , "]) == 2
    assert "no category names" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: exactly one task
        main(["predict", "--model", str(model_dir), "--image", str(image_path), "--caption", "--refer", "x"])


def test_quickstart_script_runs(tmp_path, monkeypatch, capsys):
    """demos/quickstart.py (the README quick start) with the tiny random model."""
    monkeypatch.syspath_prepend(str(REPO / "demos"))  # as when run as `python demos/quickstart.py`
    script = runpy.run_path(str(REPO / "demos" / "quickstart.py"), run_name="quickstart")
    assert script["main"](["--tiny", "--out", str(tmp_path / "qs.png"), "--max-new-tokens", "4"]) == 0
    # Four tiles (input, detect, refer, caption), two per row, 320 px each.
    assert np.asarray(Image.open(tmp_path / "qs.png")).shape[:2] == (2 * (320 + 24), 2 * 320)
    printed = capsys.readouterr().out
    assert "detect circle, square, triangle:" in printed and "caption:" in printed
