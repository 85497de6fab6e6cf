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


def test_a_folder_with_a_corrupt_file_writes_the_others_and_reports_it(model_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(np.full((56, 84, 3), 60 * i, dtype=np.uint8)).save(photos / f"p{i}.png")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (photos / "notes.txt").write_text("not an image suffix: not taken from the folder")
    out = tmp_path / "results"
    code = main(["predict", "--model", str(model_dir), "--image", str(photos), "--caption", "--out-dir", str(out),
                 "--max-new-tokens", "4"])
    captured = capsys.readouterr()
    assert code == 1 and "skipped" in captured.err and "broken.png" in captured.err
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["p0.png", "p1.png", "p2.png"]  # in order
    assert all((out / f"p{i}.padt.png").is_file() for i in range(3))
    assert "3 images" in captured.out


def test_several_images_and_globs_need_an_out_dir(model_dir, tmp_path, image_path):
    other = tmp_path / "second.png"
    Image.fromarray(np.zeros((56, 56, 3), dtype=np.uint8)).save(other)
    assert main(["predict", "--model", str(model_dir), "--image", str(image_path), "--image", str(other),
                 "--caption"]) == 2
    assert main(["predict", "--model", str(model_dir), "--image", str(tmp_path / "*.png"), "--caption",
                 "--out-dir", str(tmp_path / "o"), "--max-new-tokens", "3", "--longest-side", "none"]) == 0
    assert len((tmp_path / "o" / "predictions.jsonl").read_text().splitlines()) == 2
    assert main(["predict", "--model", str(model_dir), "--image", str(tmp_path / "nothing*.jpg"), "--caption"]) == 2


def test_model_options_reach_the_pipeline(model_dir):
    from padt.cli import build_parser
    from padt.cli.options import pipeline_options

    parser = build_parser()
    args = parser.parse_args(["predict", "--image", "x.png", "--caption"])
    assert pipeline_options(args) == {}  # the model folder decides
    args = parser.parse_args(["predict", "--image", "x.png", "--caption", "--longest-side", "644",
                              "--max-new-tokens", "9"])
    assert pipeline_options(args) == {"longest_side": 644, "max_new_tokens": 9}
    assert pipeline_options(parser.parse_args(["eval", "--model", "m", "--records", "r", "--images", "i",
                                                "--task", "rec", "--longest-side", "None"])) == {"longest_side": None}
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--longest-side", "0"])
