"""padt train --answer-format text-boxes: JSON answers, token CE only, the format saved; padt eval reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from padt.cli import main
from padt.datasets.records import read_jsonl
from padt.datasets.training import GroundingCollator, GroundingDataset
from padt.evaluation import evaluate
from padt.losses import PaDTCriterion
from padt.pipeline import PaDTPipeline
from padt.testing import tiny_pipeline
from padt.text.text_boxes import parse_text_boxes
from padt.train.config import TrainConfig
from padt.train.objective import PaDTObjective


def test_config_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="answer_format"):
        TrainConfig(answer_format="json")


def test_dataset_renders_json_answers_and_the_decoder_gets_no_gradient(synthetic_records, images_dir) -> None:
    pipe = tiny_pipeline(seed=0, answer_format="text-boxes")
    records = read_jsonl(synthetic_records["ovd_train"])[:2] + read_jsonl(synthetic_records["rec_train"])[:2]
    dataset = GroundingDataset(records, images_dir, pipe.processor, mask_scale=4, answer_format="text-boxes")
    examples = [dataset[i] for i in range(len(dataset))]
    for record, example in zip(records, examples):
        assert example.objects == [] and "<|VRT_" not in example.answer
        parsed, problems = parse_text_boxes(example.answer, pipe.processor.geometry(images_dir / record.image))
        assert problems == [] and len(parsed) == len(record.objects)
        h, w = record.image_hw
        x1, y1, x2, y2 = record.objects[record.referenced_objects()[0]].bbox
        assert parsed[0][1] == pytest.approx((x1 * w, y1 * h, x2 * w, y2 * h), abs=1.0)
    batch = GroundingCollator(pipe.processor, 4)(examples)
    assert batch.num_objects == 0
    model = pipe.model.train()
    terms = PaDTObjective(model, PaDTCriterion())(batch)
    terms["loss"].backward()
    assert terms["loss"] == terms["ce"] and terms["ce"] > 0
    assert all(p.grad is None or not p.grad.any() for p in model.vrt_decoder.parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.vrt_prototypes.parameters())
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.any()


def test_train_and_eval_cli(synthetic_records, images_dir, tmp_path: Path) -> None:
    init = tmp_path / "init"
    tiny_pipeline(seed=0).save_pretrained(init)  # a VRT-format folder: the run switches it to text boxes
    out = tmp_path / "run"
    code = main([
        "train", "--model", str(init), "--records", str(synthetic_records["rec_train"]), "--images", str(images_dir),
        "--output-dir", str(out), "--max-steps", "2", "--batch-size", "2", "--lr", "1e-3",
        "--answer-format", "text-boxes",
    ])
    assert code == 0
    assert json.loads((out / "final" / "config.json").read_text())["answer_format"] == "text-boxes"
    assert json.loads((out / "train_config.json").read_text())["answer_format"] == "text-boxes"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["box_giou"] == 0 and r["mask_dice"] == 0 and r["loss"] == r["ce"] for r in rows)

    metrics = tmp_path / "metrics.json"
    code = main([
        "eval", "--model", str(out / "final"), "--records", str(synthetic_records["rec_val"]), "--images",
        str(images_dir), "--task", "rec", "--max-new-tokens", "12", "--json", str(metrics), "--quiet",
    ])
    assert code == 0
    values = json.loads(metrics.read_text())["metrics"]
    assert all(0.0 <= values[k] <= 1.0 for k in values if k.startswith("rec/"))

    pipeline = PaDTPipeline.from_pretrained(out / "final", max_new_tokens=12)
    assert pipeline.answer_format.name == "text-boxes"
    with pytest.raises(ValueError, match="teacher-forced"):
        evaluate(pipeline, read_jsonl(synthetic_records["rec_val"]), images_dir, "rec", mode="teacher_forced")
