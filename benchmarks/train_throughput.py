"""Samples per second and peak memory of the tiny model's training step (forward, backward, AdamW step).

    python benchmarks/train_throughput.py                      # CPU, batch 8, 224-px synthetic scenes
    python benchmarks/train_throughput.py --device cuda --precision bf16 --batch-size 32

A step is exactly what ``padt train`` runs (PaDTObjective on a collated batch of synthetic REC and OVD records).
Peak memory: the growth, from just before the first step, of ``torch.cuda.max_memory_allocated`` on CUDA or of the
process's peak resident memory (``ru_maxrss``, allocator caching included) on CPU. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from padt.datasets.records import GridSpec, read_jsonl
from padt.datasets.synthetic_records import convert_synthetic
from padt.datasets.training import GroundingCollator, GroundingDataset
from padt.losses import PaDTCriterion
from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS, tiny_pipeline
from padt.train.objective import PaDTObjective


def peak_rss_mib() -> float:
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / scale / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    workdir = Path(tempfile.mkdtemp(prefix="padt-throughput-"))
    grid = GridSpec(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    paths = convert_synthetic(
        workdir, 2 * args.batch_size, seed=0, grid=grid, progress=False, report=False,
        image_size=(args.image_size, args.image_size), val_fraction=0.0,
    )
    records = read_jsonl(paths["rec_train"]) + read_jsonl(paths["ovd_train"])
    pipe = tiny_pipeline()
    model = pipe.model.train().to(device)
    mask_scale = model.vrt_decoder.config.mask_subpixels
    dataset = GroundingDataset(records, workdir / "images", pipe.processor, mask_scale=mask_scale)
    batch = GroundingCollator(pipe.processor, mask_scale)([dataset[i % len(dataset)] for i in range(args.batch_size)])
    batch = batch.to(device)
    objective = PaDTObjective(model, PaDTCriterion())
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> None:
        with autocast:
            loss = objective(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Memory is measured from before the first step (model, optimizer-state creation and activations included).
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated() / 2**20
    else:
        base = peak_rss_mib()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mib()) - base
    median = statistics.median(times)
    figures = {
        "benchmark": "train_throughput", "device": str(device), "precision": args.precision,
        "batch_size": args.batch_size, "image_size": args.image_size, "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()), "steps": args.steps,
        "seconds_per_step": round(median, 4), "samples_per_second": round(args.batch_size / median, 2),
        "peak_memory_growth_mib": round(peak, 1),
        "memory_metric": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS (ru_maxrss)",
    }
    print(f"{'device':>8} {'batch':>6} {'s/step':>8} {'samples/s':>10} {'peak MiB':>9}")
    samples = figures["samples_per_second"]
    print(f"{figures['device']:>8} {args.batch_size:>6} {median:>8.3f} {samples:>10} {peak:>9.1f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
