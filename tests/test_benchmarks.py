"""The benchmark scripts that CI does not run at full size still run: ``benchmarks/real_size.py --tiny`` and
``benchmarks/gpu_check.py --dry-run`` (the same code on the tiny configuration, on CPU) end with one JSON line
holding every figure, each a positive number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, timeout: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    return json.loads(last)


def _positive(figures: dict, *keys: str) -> None:
    for key in keys:
        value = figures[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, (key, value)


@pytest.fixture(scope="module")
def real_size() -> dict:
    return _run("real_size.py", "--tiny", "--threads", "1", timeout=240)


@pytest.fixture(scope="module")
def gpu_check() -> dict:
    return _run("gpu_check.py", "--dry-run", timeout=300)


def test_real_size_tiny_reports_every_phase(real_size):
    assert real_size["benchmark"] == "real_size" and real_size["shape"] == "tiny" and "skipped" not in real_size
    _positive(real_size, "parameters", "vocab_rows", "vrts_per_image", "peak_rss_gib")
    _positive(real_size["build_save_load"], "build_s", "save_s", "load_s", "build_save_load_s", "checkpoint_gib",
              "peak_rss_build_save_load_gib")
    for task in ("refer", "detect"):
        _positive(real_size[task], "first_token_s", "per_token_s", "total_s", "new_tokens", "peak_rss_gib")
        assert real_size[task]["new_tokens"] == real_size[task]["max_new_tokens"] == 32
    assert real_size["detect"]["categories"] == 10
    _positive(real_size["ground_answer"], "total_s", "objects", "peak_rss_gib")
    _positive(real_size["train_step"], "seconds_per_step", "peak_rss_gib", "loss", "trainable_parameters",
              "sequence_tokens")
    assert real_size["memory_check"]["fits"] is True


def test_gpu_check_dry_run_runs_every_part(gpu_check):
    parts = gpu_check["parts"]
    assert gpu_check["dry_run"] is True and gpu_check["failed"] == []
    assert {"gpu_tests", "finetune", "refer", "decoder", "ddp_cpu"} <= set(parts)
    assert all(parts[name]["ok"] for name in ("gpu_tests", "finetune", "refer", "decoder", "ddp_cpu"))
    assert parts["gpu_tests"]["failed"] == 0 and parts["gpu_tests"]["skipped"] > 0  # no CUDA here
    _positive(parts["finetune"], "seconds_per_step", "samples_per_second", "peak_memory_gib", "parameters")
    for batch in ("batch_1", "batch_4"):
        _positive(parts["refer"][batch], "seconds", "images_per_second", "peak_memory_gib")
    _positive(parts["decoder"]["sdpa"], "seconds", "peak_memory_gib")
    assert parts["ddp_cpu"]["steps"] == 3 and parts["ddp_cpu"]["final_model"] is True
    _positive(gpu_check, "total_seconds")


def test_vrt_vs_text_demo_recipe_quick_trains_both_formats_and_draws_the_curves(tmp_path):
    figures = _run("vrt_vs_text.py", "--recipe", "demo", "--quick", "--workdir", str(tmp_path), timeout=300)
    assert figures["recipe"] == "demo" and set(figures["formats"]) == {"vrt", "text-boxes"}
    for result in figures["formats"].values():
        assert [point["step"] for point in result["curve"]] == [20, 40]
        assert result["final"]["records"] == 8
        _positive(result["final"], "tokens_per_answer", "eval_seconds")
    assert Path(figures["plot"]).stat().st_size > 0
    # a second call reuses both results instead of training again
    again = _run("vrt_vs_text.py", "--recipe", "demo", "--quick", "--workdir", str(tmp_path), timeout=120)
    assert again["formats"]["vrt"]["train_seconds"] == figures["formats"]["vrt"]["train_seconds"]


def test_layer_pooling_quick_compares_both_settings(tmp_path):
    figures = _run("layer_pooling.py", "--quick", "--workdir", str(tmp_path), timeout=300)
    assert [(r["seed"], r["decoder reads"]) for r in figures["runs"]] == [(0, "last layer"), (0, "pooled")]
    assert isinstance(figures["pooling_wins_every_seed"], bool)
    saved = {reads: json.loads((tmp_path / "seed0" / reads / "final" / "config.json").read_text())
             for reads in ("last", "pooled")}
    assert saved["pooled"]["vrt_state_layers"] == [0, 1, 2, 3] and saved["last"]["vrt_state_layers"] is None
