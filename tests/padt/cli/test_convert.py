"""``padt convert ...`` through an argparse parser built here, as padt/cli.py will build it."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from padt.cli import convert as convert_cli
from padt.datasets.records import read_jsonl


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="padt")
    convert_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.run(args)


def test_coco_and_ric(coco_files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = coco_files["root"] / "ovd.jsonl"
    common = ["--images", str(coco_files["images"]), "--quiet"]
    assert run(["convert", "coco", "--instances", str(coco_files["instances"]), "--split", "val",
                "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert "== coco val ==" in printed and "image_size_mismatch" in printed
    assert [r.image_id for r in read_jsonl(out)] == [1, 5, 6]

    small = coco_files["root"] / "small.jsonl"
    assert run(["convert", "coco", "--instances", str(coco_files["instances"]), "--split", "train", "--seed", "3",
                "--max-pixels", str(28 * 28 * 4), "--out", str(small), *common]) == 0
    record = next(r for r in read_jsonl(small) if r.image_id == 1)
    assert record.grid.max_pixels == 28 * 28 * 4 and record.geometry().num_vrts <= 4

    data = coco_files["data"]
    data["images"][0]["captions"] = ["A person (<box_id: 10/>) waves."]
    captions = coco_files["root"] / "ric.json"
    captions.write_text(json.dumps(data))
    ric_out = coco_files["root"] / "ric.jsonl"
    assert run(["convert", "ric", "--captions", str(captions), "--instances", str(captions), "--out", str(ric_out),
                *common]) == 0
    (ric,) = read_jsonl(ric_out)
    assert ric.answer_template == "A person (<|Obj_0|>) waves." and ric.task == "ric"


def test_refcoco_with_leakage_guard(coco_files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    refs = [
        {"ref_id": 1, "ann_id": 10, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [{"sent": "the man", "sent_id": 1}]},
        {"ref_id": 2, "ann_id": 100, "image_id": 6, "split": "train", "category_id": 2,
         "sentences": [{"sent": "a dog", "sent_id": 2}]},
    ]
    refs_path = coco_files["root"] / "refs(umd).p"
    refs_path.write_bytes(pickle.dumps(refs))
    base = ["convert", "refcoco", "--refs", str(refs_path), "--instances", str(coco_files["instances"]),
            "--images", str(coco_files["images"]), "--split", "train", "--quiet"]
    out = coco_files["root"] / "rec.jsonl"
    assert run([*base, "--out", str(out)]) == 0
    assert [r.image_id for r in read_jsonl(out)] == [1, 6]

    evaluation = coco_files["root"] / "eval.jsonl"
    evaluation.write_text((coco_files["root"] / "rec.jsonl").read_text().splitlines()[0] + "\n")  # image 1
    guarded = coco_files["root"] / "rec_guarded.jsonl"
    capsys.readouterr()
    assert run([*base, "--out", str(guarded), "--exclude-images-of", str(evaluation)]) == 0
    assert [r.image_id for r in read_jsonl(guarded)] == [6]
    printed = capsys.readouterr().out
    assert "image_overlap" in printed and "dropped 1 records" in printed

    assert run([*base, "--out", str(guarded), "--warn-overlap-with", str(evaluation)]) == 0
    assert "WARNING: 1 image ids" in capsys.readouterr().out
    assert len(read_jsonl(guarded)) == 2


def test_refcoco_reads_a_vlm_r1_split_file(coco_files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    refs = [{"ref_id": 1, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
             "sentences": [{"sent": "the man", "sent_id": 1}, {"sent": "a person", "sent_id": 2}]}]
    refs_path = coco_files["root"] / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps(refs))
    # VLM-R1's rec_jsons_processed layout: a JSON list; padt reads image (for the id) and normal_caption.
    split_file = coco_files["root"] / "refcoco_val.json"
    split_file.write_text(json.dumps([
        {"image": "COCO_train2014_000000000001.jpg", "normal_caption": "a person", "problem": "...",
         "solution": [28, 0, 56, 56]},
        {"image": "COCO_train2014_000000000001.jpg", "normal_caption": "the woman", "solution": [0, 0, 9, 9]},
    ]))
    out = coco_files["root"] / "rec.jsonl"
    base = ["convert", "refcoco", "--refs", str(refs_path), "--instances", str(coco_files["instances"]),
            "--images", str(coco_files["images"]), "--split", "val", "--out", str(out), "--quiet"]
    assert run([*base, "--vlm-r1-split", str(split_file)]) == 0
    assert [r.id for r in read_jsonl(out)] == ["refcoco-1-2"]
    printed = capsys.readouterr().out
    assert "vlm_r1_unmatched" in printed and "2 VLM-R1 items, 1 records" in printed
    with pytest.raises(FileNotFoundError, match="--vlm-r1-split: file not found"):
        run([*base, "--vlm-r1-split", str(coco_files["root"] / "nope.json")])


def test_synthetic_writes_scenes_and_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synthetic"
    assert run(["convert", "synthetic", "--out", str(out), "--images", "10", "--seed", "4", "--val-fraction", "0.3",
                "--quiet"]) == 0
    assert (out / "instances.json").is_file() and (out / "refs.p").is_file()
    assert len(list((out / "images").glob("*.png"))) == 10
    counts = {}
    for task in ("ovd", "rec"):
        for split in ("train", "val"):
            counts[task, split] = len(read_jsonl(out / f"records_{task}_{split}.jsonl"))
    assert counts["ovd", "train"] + counts["ovd", "val"] == 10
    assert counts["rec", "train"] > 0
    assert "synthetic rec train" in capsys.readouterr().out


def test_subcommand_is_required() -> None:
    with pytest.raises(SystemExit):
        run(["convert"])
