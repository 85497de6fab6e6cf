"""How the PaDT decoder's time and memory grow with the number of objects decoded from one image.

Real-size decoder (hidden 1280, 16 heads, LLM width 2048) on one 644x644 image (46x46 patch grid, 23x23
merged cells), random weights and memory, 1 / 10 / 100 objects of 5 VRTs each, all objects in one batched call.

Memory figure: on CUDA, ``torch.cuda.max_memory_allocated`` minus the allocation before the call (tensors only);
on CPU, the growth of the process's peak resident set size (``ru_maxrss``) over the RSS before the first run,
which includes allocator caching: object counts run in increasing order, so each peak is that run's.

    python benchmarks/decoder_scaling.py [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--quick]

The decoder's work is linear in the number of objects by design: after the first memory update every object
has its own high-res memory (46*46 rows of 1280 here), ~32 GFLOP per object, so on a 2-core CPU 100 objects
take minutes; ``--quick`` on CPU therefore stops at 10 objects unless ``--objects`` says otherwise.

Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from padt.decoders import (
    DecoderMemory,
    PaDTDecoder,
    PaDTDecoderConfig,
    RotaryPE,
    first_subpatch_pe,
)
from padt.vision.geometry import merge_block_positions

PATCH_PX = 14  # Qwen2.5-VL vision patch side, only to turn the image size into a patch grid here


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_memory(cfg: PaDTDecoderConfig, grid: int, device: torch.device, dtype: torch.dtype) -> DecoderMemory:
    grid_hw = torch.tensor([[grid, grid]])
    token_rc = merge_block_positions(grid_hw, cfg.spatial_merge_size)
    freqs = 1.0 / (10000 ** (torch.arange(cfg.head_dim // 4) / (cfg.head_dim // 4)))
    angles = torch.cat((token_rc[:, :1] * freqs, token_rc[:, 1:] * freqs), dim=-1)
    full = torch.cat((angles, angles), dim=-1)
    high_pe = RotaryPE(full.cos().to(device), full.sin().to(device))
    n = token_rc.shape[0]
    return DecoderMemory(
        low_res=torch.randn(n // cfg.spatial_merge_size**2, cfg.llm_hidden_size, device=device, dtype=dtype),
        low_pe=first_subpatch_pe(high_pe, cfg.spatial_merge_size),
        high_res=torch.randn(n, cfg.hidden_size, device=device, dtype=dtype),
        high_pe=high_pe,
        grid_hw=grid_hw.to(device),
        token_rc=token_rc.to(device),
    )


def run_once(dec, memory, num_obj, vrts, device, dtype):
    states = torch.randn(num_obj * vrts, dec.config.llm_hidden_size, device=device, dtype=dtype)
    counts = torch.full((num_obj,), vrts, device=device)
    images = torch.zeros(num_obj, dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = dec(states, counts, images, memory)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--objects", default=None, help="comma-separated object counts (default 1,10,100; 1,10 for --quick on CPU)"
    )
    parser.add_argument("--vrts", type=int, default=5, help="VRTs per object")
    parser.add_argument("--image", type=int, default=644, help="square image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one timed run per count; on CPU also stop at 10 objects (100 take minutes there)",
    )
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "flash_attention_2", "auto"])
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.objects is None:
        args.objects = "1,10" if args.quick and device.type == "cpu" else "1,10,100"
    counts = sorted(int(c) for c in args.objects.split(","))
    repeats = 1 if args.quick else args.repeats
    torch.manual_seed(0)
    cfg = PaDTDecoderConfig(attn_implementation=args.attn)
    dec = PaDTDecoder(cfg).to(device=device, dtype=dtype).eval()
    grid = args.image // PATCH_PX
    memory = make_memory(cfg, grid, device, dtype)

    rows = []
    with torch.inference_mode():
        run_once(dec, memory, counts[0], args.vrts, device, dtype)  # warm-up (kernels, allocator)
        base_rss = current_rss_mb()
        for k in counts:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            if not args.quick and repeats > 1:
                run_once(dec, memory, k, args.vrts, device, dtype)
            times = [run_once(dec, memory, k, args.vrts, device, dtype) for _ in range(repeats)]
            if device.type == "cuda":
                peak_mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
            else:
                peak_mb = peak_rss_mb() - base_rss
            rows.append({"objects": k, "time_s": statistics.median(times), "peak_mem_mb": peak_mb})

    metric = "cuda max_memory_allocated delta" if device.type == "cuda" else "process peak RSS (ru_maxrss) growth"
    print(
        f"PaDT decoder, {args.image}x{args.image} image ({grid}x{grid} patches), {args.vrts} VRTs/object, "
        f"{device} {args.dtype}, {cfg.attn_implementation}, median of {repeats}"
    )
    print(f"{'objects':>8} {'time (s)':>10} {'ms/object':>10} {'peak mem (MiB)':>15}")
    for r in rows:
        print(
            f"{r['objects']:>8} {r['time_s']:>10.4f} {1000 * r['time_s'] / r['objects']:>10.2f} "
            f"{r['peak_mem_mb']:>15.1f}"
        )
    t = {r["objects"]: r["time_s"] for r in rows}
    ratios = {f"time_ratio_{k}_over_{counts[0]}": t[k] / t[counts[0]] for k in counts[1:]}
    print(
        json.dumps(
            {
                "benchmark": "decoder_scaling",
                "device": str(device),
                "dtype": args.dtype,
                "attn": cfg.attn_implementation,
                "image": args.image,
                "grid": grid,
                "vrts_per_object": args.vrts,
                "repeats": repeats,
                "memory_metric": metric,
                "results": rows,
                **ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
