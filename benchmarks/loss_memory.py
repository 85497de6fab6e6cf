"""Peak memory and time of the robust token CE against a naive full-sequence float32 logits path.

Both variants compute the same loss (per-token CE over [text; VRT] logits, per-image VRT mask,
exclusion of an object's other GT patches, per-sample mean) from the same inputs, forward + backward
into hidden states, LM-head weight and prototypes:

* ``naive``: float32 logits ``[B, T, V+P]`` for every position (prompt and image included), masked
in place,
  then ``F.cross_entropy`` -- what a model that returns full logits and a trainer that slices them
  do.
* ``ours``: :func:`padt.losses.robust_token_cross_entropy`, logits only at the supervised positions.

Each variant runs in a fresh subprocess. On CPU the peak is ``ru_maxrss`` after the measured step
minus the resident set size just before it (setup allocations excluded; Linux only); on CUDA it is
``max_memory_allocated`` above what was allocated before the step. The output ends with one JSON
line.

Usage: ``python benchmarks/loss_memory.py [--hidden 256] [--device cpu|cuda] [--dtype
    float32|bfloat16]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from padt.losses import object_exclusion_pairs, robust_token_cross_entropy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=151936, help="text vocabulary V (Qwen2.5-VL-3B embedding rows)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size D (2048 for the 3B model)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-tokens", type=int, default=600, help="merged patches per image (= VRTs per image)")
    p.add_argument("--prompt-tokens", type=int, default=60)
    p.add_argument("--answer-tokens", type=int, default=40)
    p.add_argument("--objects", type=int, default=3, help="objects per answer, 5 VRTs each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="hidden/weight dtype")
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed steps per variant (the first also measures memory)",
    )
    p.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_inputs(args: argparse.Namespace) -> dict:
    """Deterministic batch: image tokens, then prompt, then an answer of text and 5-VRT object groups."""
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    B, N_img, V, D = args.batch, args.image_tokens, args.vocab, args.hidden
    T = N_img + args.prompt_tokens + args.answer_tokens
    P = B * N_img
    labels = torch.full((B, T), -100, dtype=torch.long)
    allowed = torch.zeros(B, P, dtype=torch.bool)
    exclude = []
    first = T - 1 - args.answer_tokens  # position predicting the first answer token
    for b in range(B):
        allowed[b, b * N_img : (b + 1) * N_img] = True
        answer = torch.randint(0, V, (args.answer_tokens,), generator=g)
        for j in range(args.objects):
            gt = b * N_img + torch.randperm(N_img, generator=g)[:30]  # an object covering 30 patches
            picked = gt[torch.randperm(30, generator=g)[:5]]
            start = 2 + j * 8
            answer[start : start + 5] = V + picked
            exclude.append(object_exclusion_pairs(b, range(first + start, first + start + 5), gt))
        labels[b, first : first + args.answer_tokens] = answer
    scale = D**-0.5

    def leaf(*shape: int) -> torch.Tensor:
        # scaled in place: no setup temporaries that would raise the process's peak before the
        # measurement
        return torch.randn(*shape, generator=g).mul_(scale).to(dev, dtype).requires_grad_(True)

    return dict(
        hidden=leaf(B, T, D),
        text_weight=leaf(V, D),
        prototypes=leaf(P, D),
        labels=labels.to(dev),
        vrt_allowed=allowed.to(dev),
        vrt_exclude=torch.cat(exclude).to(dev),
    )


def naive_loss(hidden, labels, text_weight, prototypes, vrt_allowed, vrt_exclude) -> torch.Tensor:
    """Full-sequence float32 logits, then the same masking and per-sample mean."""
    V = text_weight.shape[0]
    logits = torch.cat((F.linear(hidden, text_weight), F.linear(hidden, prototypes)), dim=-1).float()
    logits.masked_fill_(F.pad(~vrt_allowed, (V, 0))[:, None, :], float("-inf"))
    b, t, p = vrt_exclude.unbind(1)
    keep = labels[b, t] != V + p
    logits[b[keep], t[keep], V + p[keep]] = float("-inf")
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    count = (labels != -100).sum(1)
    return (nll.sum(1) / count).mean()


def ours_loss(hidden, labels, text_weight, prototypes, vrt_allowed, vrt_exclude, chunk_size=512) -> torch.Tensor:
    return robust_token_cross_entropy(
        hidden, labels, text_weight, prototypes, vrt_allowed, vrt_exclude, chunk_size=chunk_size
    ).loss


def current_rss_bytes() -> int:
    """Resident set size now (Linux), the baseline the step's peak ``ru_maxrss`` is compared with."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict:
    # A tiny warm-up step of the same variant first, so one-off costs (autograd engine threads,
    # lazily loaded kernels and libraries) are not charged to the measured step.
    tiny = argparse.Namespace(**{**vars(args), "vocab": 64, "hidden": 8, "batch": 2, "image_tokens": 40})
    tiny_inputs = make_inputs(tiny)
    (ours_loss(**tiny_inputs) if args.worker == "ours" else naive_loss(**tiny_inputs)).backward()
    del tiny_inputs
    inputs = make_inputs(args)
    leaves = [inputs["hidden"], inputs["text_weight"], inputs["prototypes"]]
    if args.worker == "ours":
        fn = lambda: ours_loss(**inputs, chunk_size=args.chunk_size)  # noqa: E731
    else:
        fn = lambda: naive_loss(**inputs)  # noqa: E731
    cuda = args.device.startswith("cuda")
    times, loss_value, peak = [], None, None
    for i in range(args.repeats):
        for leaf in leaves:
            leaf.grad = None
        sync(args.device)
        if i == 0:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            else:
                before = current_rss_bytes()
        t0 = time.perf_counter()
        loss = fn()
        loss.backward()
        sync(args.device)
        times.append(time.perf_counter() - t0)
        if i == 0:
            if cuda:
                peak = torch.cuda.max_memory_allocated() - before
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
            loss_value = loss.item()
        del loss
    return {"peak_bytes": peak, "time_s": statistics.median(times), "loss": loss_value}


def run_variant(name: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--worker", name]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    T = args.image_tokens + args.prompt_tokens + args.answer_tokens
    P = args.batch * args.image_tokens
    results = {name: run_variant(name, argv) for name in ("naive", "ours")}
    mib = 2**20
    print(
        f"B={args.batch} T={T} (image {args.image_tokens} + prompt {args.prompt_tokens} + answer "
        f"{args.answer_tokens}) V={args.vocab} P={P} D={args.hidden} dtype={args.dtype} device={args.device} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"{'variant':<8} {'peak MiB':>10} {'time s':>9} {'loss':>12}")
    for name, r in results.items():
        print(f"{name:<8} {r['peak_bytes'] / mib:>10.1f} {r['time_s']:>9.3f} {r['loss']:>12.6f}")
    ratio = results["ours"]["peak_bytes"] / results["naive"]["peak_bytes"]
    print(
        f"peak ratio ours/naive = {ratio:.4f} (target <= 0.3); time ratio = "
        f"{results['ours']['time_s'] / results['naive']['time_s']:.3f}"
    )
    print(
        json.dumps(
            {
                "device": args.device,
                "dtype": args.dtype,
                "B": args.batch,
                "T": T,
                "V": args.vocab,
                "P": P,
                "D": args.hidden,
                "ours_peak_mib": round(results["ours"]["peak_bytes"] / mib, 1),
                "naive_peak_mib": round(results["naive"]["peak_bytes"] / mib, 1),
                "peak_ratio": round(ratio, 4),
                "ours_time_s": round(results["ours"]["time_s"], 3),
                "naive_time_s": round(results["naive"]["time_s"], 3),
                "loss_abs_diff": abs(results["ours"]["loss"] - results["naive"]["loss"]),
            }
        )
    )


if __name__ == "__main__":
    main()
