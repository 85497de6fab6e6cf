"""padt train: settings, checkpoints that resume exactly, no-object samples, errors, LoRA/freezing, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import padt.train.loop as loop_module
from padt.datasets.records import read_jsonl, write_jsonl
from padt.datasets.synthetic_records import convert_synthetic
from padt.datasets.training import GroundingCollator, GroundingDataset
from padt.losses import PaDTCriterion
from padt.pipeline import PaDTPipeline
from padt.processing import PaDTProcessor
from padt.testing import parameters_without_gradient, tiny_pipeline
from padt.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from padt.train.config import TrainConfig
from padt.train.loop import train
from padt.train.objective import PaDTObjective


def _config(records: Path, images: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        records=[str(records)], images=str(images), output_dir=str(out), tiny=True, max_steps=4,
        batch_size=2, lr=1e-3, decoder_warmup_steps=1, seed=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _losses(out: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_yaml_config_with_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("records: [a.jsonl]\nlr: 0.5\nbatch_size: 3\ntiny: true\nmax_steps: 10\n")
    config = TrainConfig.from_yaml(path, lr=0.25)
    assert (config.lr, config.batch_size, config.records) == (0.25, 3, ["a.jsonl"])
    path.write_text("lr: 0.5\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ValueError, match="vrt_sampling must be one of"):
        TrainConfig(vrt_sampling="centre")
    with pytest.raises(ValueError, match="no training records"):
        TrainConfig().check_ready()
    with pytest.raises(ValueError, match="exactly one of --model DIR and --tiny"):
        TrainConfig(records=["a"], max_steps=1).check_ready()
    assert TrainConfig().warmup_steps(100) == 25 and TrainConfig().warmup_steps(4000) == 300


def test_resume_reproduces_the_uninterrupted_losses(synthetic_records, images_dir, tmp_path: Path) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    final = train(_config(synthetic_records["rec_train"], images_dir, full, save_every=2))
    # An interrupted run: only the step-2 checkpoint survived.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000002", resumed / "checkpoints" / "step-0000002")
    (resumed / "checkpoints" / "latest").write_text("step-0000002")
    train(_config(synthetic_records["rec_train"], images_dir, resumed, save_every=2, resume=True))
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        for term in ("loss", "ce", "box_l1", "mask_dice"):
            assert b[step][term] == pytest.approx(a[step][term], rel=1e-6, abs=1e-7)
    # The final folder is a model that from_pretrained loads.
    pipe = PaDTPipeline.from_pretrained(final)
    assert pipe.model.config.model_type == "padt_qwen2_5_vl"


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {})
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {})
    monkeypatch.undo()
    folder = latest_checkpoint(tmp_path)
    assert folder is not None and folder.name == "step-0000001"
    state = load_checkpoint(folder, model, optimizer, scheduler)
    assert state["step"] == 1 and torch.equal(model.weight, before)
    # The next save succeeds despite the leftover temporary folder.
    assert save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {}).name == "step-0000002"
    assert latest_checkpoint(tmp_path).name == "step-0000002"


def _tiny_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_pruning_removes_only_older_checkpoints_of_the_same_run(tmp_path: Path) -> None:
    model, optimizer, scheduler = _tiny_optimizer()
    for step in (16, 20):  # an earlier, longer run in the same folder
        save_checkpoint(tmp_path, step, model, optimizer, scheduler, {}, run_id="old")
    names = lambda: sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))  # noqa: E731
    save_checkpoint(tmp_path, 4, model, optimizer, scheduler, {}, run_id="new")
    save_checkpoint(tmp_path, 8, model, optimizer, scheduler, {}, run_id="new")
    # Name order would have kept step-16 and step-20 and deleted both of the new run's checkpoints.
    assert names() == ["step-0000004", "step-0000008", "step-0000016", "step-0000020"]
    assert load_checkpoint(latest_checkpoint(tmp_path), model, optimizer, scheduler)["run_id"] == "new"
    save_checkpoint(tmp_path, 12, model, optimizer, scheduler, {}, run_id="new")
    assert names() == ["step-0000008", "step-0000012", "step-0000016", "step-0000020"]
    assert latest_checkpoint(tmp_path).name == "step-0000012"


def test_overwrite_starts_a_new_run_that_resumes(synthetic_records, images_dir, tmp_path: Path) -> None:
    records = synthetic_records["rec_train"]
    train(_config(records, images_dir, tmp_path, max_steps=4, save_every=1))
    train(_config(records, images_dir, tmp_path, max_steps=2, save_every=1, overwrite=True))
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["latest", "step-0000001", "step-0000002"]
    assert sorted(_losses(tmp_path)) == [1, 2]
    train(_config(records, images_dir, tmp_path, max_steps=3, save_every=1, resume=True))
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert latest_checkpoint(tmp_path).name == "step-0000003"


def test_metrics_after_a_resume_hold_each_step_once(synthetic_records, images_dir, tmp_path: Path) -> None:
    train(_config(synthetic_records["rec_train"], images_dir, tmp_path, save_every=2))
    before = (tmp_path / "metrics.jsonl").read_text().splitlines()
    # The run died after logging steps 3 and 4 but before their checkpoint (and with half a line written).
    shutil.rmtree(tmp_path / "checkpoints" / "step-0000004")
    (tmp_path / "checkpoints" / "latest").write_text("step-0000002")
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')
    train(_config(synthetic_records["rec_train"], images_dir, tmp_path, save_every=2, resume=True))
    after = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in after] == [1, 2, 3, 4]
    assert after[:2] == [json.loads(line) for line in before[:2]]


def test_samples_without_objects_train_on_text_alone(no_object_records, images_dir, tmp_path: Path) -> None:
    train(_config(no_object_records, images_dir, tmp_path, max_steps=2))
    rows = _losses(tmp_path)
    for row in rows.values():
        assert row["box_l1"] == 0.0 and row["mask_dice"] == 0.0 and row["score"] == 0.0
        assert row["ce"] > 0.0 and row["loss"] == pytest.approx(row["ce"])


def test_clear_errors(synthetic_records, images_dir, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        train(_config(tmp_path / "missing.jsonl", images_dir, tmp_path / "a"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no records"):
        train(_config(empty, images_dir, tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match=r"of the \d+ images named by the records are missing under .*no-im"):
        train(_config(synthetic_records["rec_train"], tmp_path / "no-images", tmp_path / "c"))

    original = PaDTCriterion.forward

    def poisoned(self, **kwargs):
        terms = original(self, **kwargs)
        terms["box_giou"] = terms["box_giou"] * float("nan")
        return terms

    monkeypatch.setattr(PaDTCriterion, "forward", poisoned)
    with pytest.raises(ValueError, match=r"step 1: loss term 'box_giou' is not finite"):
        train(_config(synthetic_records["rec_train"], images_dir, tmp_path / "d"))


def test_every_trainable_parameter_gets_a_gradient(synthetic_records, images_dir) -> None:
    pipe = tiny_pipeline(seed=1)
    model = pipe.model.train()
    dataset = GroundingDataset(read_jsonl(synthetic_records["rec_train"]), images_dir, pipe.processor, mask_scale=4)
    batch = GroundingCollator(pipe.processor, 4)([dataset[i] for i in range(3)])
    # Rows of text tokens that never occur get no gradient, but every tensor must get some.
    assert parameters_without_gradient(PaDTObjective(model, PaDTCriterion()), batch) == []


def test_decoder_trains_vision_off_detaches_the_decoder_memory_only(
    synthetic_records, images_dir, tmp_path: Path, monkeypatch
) -> None:
    pipe = tiny_pipeline(seed=1)
    model = pipe.model.train()
    dataset = GroundingDataset(read_jsonl(synthetic_records["rec_train"]), images_dir, pipe.processor, mask_scale=4)
    batch = GroundingCollator(pipe.processor, 4)([dataset[i] for i in range(3)])
    seen = []
    decode = model.vrt_decoder.forward

    def recording(vrt_states, vrt_counts, object_image, memory, **kwargs):
        seen.append(memory)
        return decode(vrt_states, vrt_counts, object_image, memory, **kwargs)

    monkeypatch.setattr(model.vrt_decoder, "forward", recording)
    losses = {}
    for trains_vision in (True, False):
        objective = PaDTObjective(model, PaDTCriterion(), decoder_trains_vision=trains_vision)
        objective.zero_grad()
        terms = objective(batch)
        terms["loss"].backward()
        losses[trains_vision] = {k: float(v) for k, v in terms.items()}
        decoder_grads = [p.grad for p in model.vrt_decoder.parameters()]
        assert all(g is not None for g in decoder_grads) and any(g.abs().sum() > 0 for g in decoder_grads)
    attached, detached = seen
    assert attached.low_res.requires_grad and attached.high_res.requires_grad
    assert not detached.low_res.requires_grad and not detached.high_res.requires_grad
    assert losses[True] == losses[False]  # the same forward pass; only the gradients' paths differ
    # The training loop hands the setting to its objective.
    built = []
    monkeypatch.setattr(loop_module, "PaDTObjective", lambda *args: built.append(args) or PaDTObjective(*args))
    train(_config(synthetic_records["rec_train"], images_dir, tmp_path, max_steps=1, decoder_trains_vision=False))
    assert [args[2] for args in built] == [False]


def test_lora_and_frozen_vision(synthetic_records, images_dir, tmp_path: Path) -> None:
    config = _config(
        synthetic_records["rec_train"], images_dir, tmp_path, max_steps=2, lora=True, lora_rank=4, freeze_vision=True
    )
    final = train(config)
    start = tiny_pipeline(seed=0).model.state_dict()
    trained = load_file(str(final / "model.safetensors"))
    assert not any("lora" in name for name in trained), "LoRA weights must be merged into the saved model"
    vision, box = "model.visual.blocks.0.attn.qkv.weight", "vrt_decoder.box_head.layers.0.weight"
    assert torch.equal(trained[vision], start[vision])
    assert not torch.equal(trained[box], start[box])
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained[q], start[q])  # LoRA merged into the targeted projection
    PaDTPipeline.from_pretrained(final)


@pytest.mark.skipif(sys.platform != "linux", reason="the gloo multi-process test runs on Linux")
def test_two_process_ddp_follows_the_single_process_run(synthetic_records, images_dir, tmp_path: Path) -> None:
    common = [
        "train", "--tiny", "--records", str(synthetic_records["rec_train"]), "--images", str(images_dir),
        "--max-steps", "2", "--lr", "1e-3", "--decoder-warmup-steps", "1", "--seed", "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "padt.cli", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "one")],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = subprocess.run(
        [*torchrun, "-m", "padt.cli", *common, "--batch-size", "2", "--output-dir", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    # Step 1 is the same global batch on the same weights; step 2 checks that the first update was the same.
    # (Later steps drift by float noise that Adam amplifies where gradients are ~0; see docs/training.md.)
    for step in (1, 2):
        for term in ("loss", "ce", "box_l1", "box_giou", "mask_dice"):
            assert two[step][term] == pytest.approx(one[step][term], rel=1e-4, abs=1e-6)


def test_training_starts_from_a_released_checkpoint_layout(synthetic_records, images_dir, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "padt" / "official"))
    try:
        from official_fixture import write_tiny_official_checkpoint
    finally:
        sys.path.pop(0)
    (tmp_path / "official").mkdir()
    write_tiny_official_checkpoint(tmp_path / "official")
    # Released checkpoints resize every image to a 644-px longest side: their records are converted for that grid.
    grid = PaDTProcessor.from_pretrained(tmp_path / "official").grid_spec
    assert grid.longest_side == 644
    records = convert_synthetic(tmp_path / "scenes", 4, seed=3, grid=grid, progress=False, report=False,
                                image_size=(112, 112), object_size=(28, 56), val_fraction=0.25)
    config = _config(records["rec_train"], records["rec_train"].parent / "images", tmp_path / "run", max_steps=1,
                     tiny=False, model=str(tmp_path / "official"))
    final = train(config)
    pipe = PaDTPipeline.from_pretrained(final)
    assert pipe.model.config.patch_order == "official" and pipe.model.config.vrt_norm_eps == 1e-5
    assert pipe.processor.longest_side == 644  # saved with the fine-tuned model


def test_the_tiny_model_overfits_a_few_samples(synthetic_records, images_dir, tmp_path: Path) -> None:
    """Four referring expressions, learnt to Acc@0.5 = 1 on themselves (scored by evaluation during training)."""
    records = read_jsonl(synthetic_records["rec_train"])[:4]
    four = tmp_path / "four.jsonl"
    write_jsonl(four, records)
    train(_config(four, images_dir, tmp_path / "run", max_steps=150, batch_size=4, lr=2e-3, schedule="constant",
                  decoder_warmup_steps=0, eval_records=str(four), eval_every=150))
    evaluations = [row["eval"] for row in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
                   if "eval" in row]
    assert len(evaluations) == 1
    assert evaluations[0]["rec/acc@0.5"] == 1.0
