"""``padt demo``: the shipped model, where the demo model is looked up, and the whole command on a small recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from padt.apps import demo
from padt.cli import main

SMALL_RECIPE = {
    "scenes": {"num_images": 24, "seed": 3, "image_size": [112, 140], "objects_per_image": [1, 3],
               "object_size": [28, 56], "val_fraction": 0.4},
    "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "schedule": "cosine", "seed": 0, "vrts_per_object": 2},
}


def test_the_shipped_model_was_trained_with_the_recipe_and_is_small():
    assert demo.model_recipe(demo.SHIPPED_MODEL) == demo.RECIPE
    weights = demo.SHIPPED_MODEL / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 20 * 2**20
    assert not list(demo.SHIPPED_MODEL.glob("*.bin")) and not list(demo.SHIPPED_MODEL.glob("*.pt"))


def test_the_shipped_model_has_the_configuration_the_recipe_builds():
    """Its config.json is what the recipe's ``model_overrides`` make of the tiny configuration."""
    import copy

    from padt.configuration import PaDTConfig
    from padt.testing import tiny_config

    saved_only = ("architectures", "dtype")  # written by save_pretrained, absent from a config never saved
    shipped = {k: v for k, v in PaDTConfig.from_pretrained(demo.SHIPPED_MODEL).to_dict().items() if k not in saved_only}
    built = {k: v for k, v in tiny_config(**copy.deepcopy(demo.RECIPE["train"]["model_overrides"])).to_dict().items()
             if k not in saved_only}
    assert shipped == built


def test_the_shipped_model_grounds_scenes_it_never_saw(tmp_path):
    """Fresh scenes (another seed than the recipe's) drawn like the recipe's: the shipped model finds the objects."""
    from padt.datasets.records import read_jsonl
    from padt.evaluation import evaluate
    from padt.pipeline import PaDTPipeline

    recipe = {"scenes": {**demo.RECIPE["scenes"], "num_images": 30, "seed": 2024}}
    paths = demo.prepare_scenes(tmp_path, recipe)
    pipeline = PaDTPipeline.from_pretrained(demo.SHIPPED_MODEL, max_new_tokens=64, batch_size=16)
    records = read_jsonl(paths["rec_train"])[:40]
    metrics = evaluate(pipeline, records, paths["rec_train"].parent / "images", "rec,res", progress=False).metrics
    assert metrics["rec/acc@0.5"] >= 0.6 and metrics["res/ciou"] >= 0.6, metrics


def test_demo_model_dir_prefers_the_environment_then_a_retrained_model_then_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(demo.DEMO_MODEL_ENV, raising=False)
    assert demo.demo_model_dir() == demo.SHIPPED_MODEL
    cached = tmp_path / ".cache" / "padt" / "demo-model"
    cached.mkdir(parents=True)
    (cached / demo.RECIPE_FILE).write_text(json.dumps(SMALL_RECIPE))
    assert demo.demo_model_dir() == demo.SHIPPED_MODEL  # trained with another recipe: not the demo's model
    (cached / demo.RECIPE_FILE).write_text(json.dumps(demo.RECIPE))
    assert demo.demo_model_dir() == cached
    monkeypatch.setenv(demo.DEMO_MODEL_ENV, str(tmp_path / "elsewhere"))
    assert demo.demo_model_dir() == tmp_path / "elsewhere"


def test_demo_refuses_a_shipped_model_trained_with_another_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "RECIPE", SMALL_RECIPE)
    assert main(["demo", "--workdir", str(tmp_path)]) == 2
    assert "padt demo --retrain" in capsys.readouterr().err


def test_demo_retrain_trains_scores_and_draws(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "RECIPE", SMALL_RECIPE)
    monkeypatch.setattr(demo, "EVAL_LIMITS", {"rec": 6, "ovd": 4})
    monkeypatch.setenv(demo.DEMO_MODEL_ENV, str(tmp_path / "model"))
    assert main(["demo", "--workdir", str(tmp_path / "work"), "--retrain"]) == 0
    out = capsys.readouterr().out
    for name in ("REC Acc@0.5", "RES cIoU", "RES gIoU", "OVD AP", "OVD AP50"):
        assert name in out
    metrics = json.loads((tmp_path / "work" / "metrics.json").read_text())
    assert set(metrics) == {"REC Acc@0.5", "RES cIoU", "RES gIoU", "OVD AP", "OVD AP50"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert (tmp_path / "work" / "gallery.png").stat().st_size > 0
    assert demo.model_recipe(tmp_path / "model") == SMALL_RECIPE
    assert demo.demo_model_dir() == tmp_path / "model"
    # A second run reuses the scenes (same recipe) and, with --steps, trains again for that many steps.
    assert main(["demo", "--workdir", str(tmp_path / "work"), "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "reusing synthetic scenes" in out and "training the tiny PaDT (1 steps)" in out
    assert demo.model_recipe(tmp_path / "model")["train"]["max_steps"] == 1


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_demo_rejects_bad_step_counts(tmp_path, steps, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--steps", steps]) == 2
    assert "--steps" in capsys.readouterr().err


def test_the_tiny_demo_training_config_is_the_recipes_training_part():
    from padt.train.config import TrainConfig

    config = TrainConfig.from_yaml(Path(__file__).resolve().parents[3] / "configs" / "train_tiny_demo.yaml")
    assert config.tiny
    for name, value in demo.RECIPE["train"].items():
        assert getattr(config, name) == value, name


def test_demo_on_qwen3_vl_needs_retrain_and_trains_on_32_px_cells(tmp_path, monkeypatch, capsys):
    from padt.datasets.records import read_jsonl
    from padt.modeling import PaDTQwen3VLForConditionalGeneration
    from padt.pipeline import PaDTPipeline

    monkeypatch.setattr(demo, "RECIPE", SMALL_RECIPE)
    monkeypatch.setattr(demo, "EVAL_LIMITS", {"rec": 4, "ovd": 2})
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(demo.DEMO_MODEL_ENV, raising=False)
    assert main(["demo", "--workdir", str(tmp_path / "work"), "--backbone", "qwen3-vl"]) == 2
    assert "padt demo --backbone qwen3-vl --retrain" in capsys.readouterr().err
    assert main(["demo", "--workdir", str(tmp_path / "work"), "--backbone", "qwen3-vl", "--retrain"]) == 0
    assert "training the tiny qwen3-vl PaDT (2 steps)" in capsys.readouterr().out
    records = read_jsonl(tmp_path / "work" / "scenes-qwen3-vl" / "records_rec_train.jsonl")
    assert records and all(r.grid.patch_size == 16 for r in records)
    model_dir = tmp_path / ".cache" / "padt" / "demo-model-qwen3-vl"
    assert demo.model_recipe(model_dir) == demo.backbone_recipe("qwen3-vl")
    assert type(PaDTPipeline.from_pretrained(model_dir).model) is PaDTQwen3VLForConditionalGeneration
    assert not (tmp_path / ".cache" / "padt" / "demo-model").exists()  # the Qwen2.5-VL one is left alone
