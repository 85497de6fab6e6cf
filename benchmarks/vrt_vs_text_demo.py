"""``vrt_vs_text.py --recipe demo``: both answer formats trained with the shipped demo model's full recipe.

The short mode (600 steps from random weights) shows that text boxes learn slower from scratch; this mode asks
what the paper's Tab. 5 asks, which format ends up better once trained. Each format gets exactly what the shipped
demo model got (:data:`padt.apps.demo.RECIPE`): the same 4,000 synthetic scenes, REC + OVD training records, the
same initial weights (the tiny model built from the recipe's seed), data order, optimiser, schedule and 30,000
steps; only ``answer_format`` differs. During training both are scored every ``--curve-every`` steps on the same
held-out REC records (the first 400 of the validation split, as ``padt demo`` scores), and the final models are
scored as the short mode scores them (Acc@0.5, mean IoU, tokens and seconds per object).

The formats train side by side in separate processes (one torch thread each) unless ``--sequential``. A format
whose ``result.json`` in the work folder was made by the same settings is reused, not trained again, so that an
interrupted comparison resumes at the format it had not finished.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from answer_format_scoring import constant_box_baseline, evaluate_run, qwen_tokens_per_object
from line_plot import line_plot

#: Held-out REC records scored along the way and at the end: those ``padt demo`` scores.
EVAL_RECORDS = 400
CURVE_EVERY = 2500
QUICK = dict(num_images=60, max_steps=40, curve_every=20, eval_records=8)


def demo_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe (scenes + training) and scoring settings of this comparison; ``--quick`` shrinks them."""
    from padt.apps.demo import RECIPE

    recipe = copy.deepcopy(RECIPE)
    settings = {"recipe": recipe, "curve_every": args.curve_every or CURVE_EVERY, "eval_records": EVAL_RECORDS,
                "max_new_tokens": args.max_new_tokens, "eval_batch_size": args.eval_batch_size, "quick": args.quick}
    if args.quick:
        recipe["scenes"]["num_images"] = QUICK["num_images"]
        recipe["train"]["max_steps"] = QUICK["max_steps"]
        settings.update(curve_every=QUICK["curve_every"], eval_records=QUICK["eval_records"])
    return settings


def prepare(workdir: Path, settings: dict[str, Any]) -> dict[str, Path]:
    """The scenes (the demo's cache for the full recipe, drawn once) and the held-out records file."""
    from padt.apps.demo import default_workdir, prepare_scenes
    from padt.datasets.records import read_jsonl, write_jsonl

    # The full recipe's scenes are the demo's own (shared cache); smaller ones must not replace them.
    scenes = prepare_scenes(workdir if settings["quick"] else default_workdir(), settings["recipe"])
    held_out = workdir / f"eval_rec_{settings['eval_records']}.jsonl"
    write_jsonl(held_out, read_jsonl(scenes["rec_val"])[: settings["eval_records"]])
    return {**scenes, "held_out": held_out}


def train_and_score(answer_format: str, workdir: Path, paths: dict[str, Path], settings: dict[str, Any]) -> dict:
    """Train one format with the recipe (or reuse its earlier result) and score it; returns its result."""
    torch.set_num_threads(1)
    from padt.datasets.records import read_jsonl
    from padt.train.config import TrainConfig
    from padt.train.loop import train

    out = workdir / answer_format
    done = out / "result.json"
    if done.is_file() and json.loads(done.read_text())["settings"] == settings:
        return json.loads(done.read_text())
    images = paths["rec_train"].parent / "images"
    config = TrainConfig(
        records=[str(paths["rec_train"]), str(paths["ovd_train"])], images=str(images), output_dir=str(out),
        tiny=True, answer_format=answer_format, eval_records=str(paths["held_out"]),
        eval_every=settings["curve_every"], overwrite=True, **settings["recipe"]["train"],
    )
    started = time.perf_counter()
    final = train(config)
    train_seconds = time.perf_counter() - started
    row = evaluate_run(final, read_jsonl(paths["held_out"]), images, batch_size=settings["eval_batch_size"],
                       max_new_tokens=settings["max_new_tokens"])
    result = {"settings": settings, "answer_format": answer_format, "train_seconds": train_seconds,
              "final": row, "curve": read_curve(out / "metrics.jsonl")}
    done.write_text(json.dumps(result, default=str) + "\n")
    return result


def read_curve(metrics_log: Path) -> list[dict[str, float]]:
    """The held-out scores logged during training: ``[{"step", "acc@0.5", "mean_iou"}, ...]`` by step."""
    curve = []
    for line in metrics_log.read_text().splitlines():
        entry = json.loads(line)
        if "eval" in entry:
            curve.append({"step": entry["step"], "acc@0.5": entry["eval"]["rec/acc@0.5"],
                          "mean_iou": entry["eval"]["rec/mean_iou"]})
    return curve


def run_demo_recipe(args: argparse.Namespace, formats: tuple[str, ...]) -> dict[str, Any]:
    """Train and score every format with the demo recipe; print the table; draw the curves; return the figures."""
    from padt.datasets.records import read_jsonl

    workdir = (args.workdir or Path.home() / ".cache" / "padt" / "vrt-vs-text-demo").expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(demo_settings(args)))  # JSON types, as a reused result stores them
    paths = prepare(workdir, settings)
    began = time.perf_counter()
    if args.sequential:
        results = [train_and_score(f, workdir, paths, settings) for f in formats]
    else:
        with ProcessPoolExecutor(len(formats), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(train_and_score, f, workdir, paths, settings) for f in formats]
            results = [future.result() for future in futures]
    held_out = read_jsonl(paths["held_out"])
    images = paths["rec_train"].parent / "images"
    figures = {
        "benchmark": "vrt_vs_text", "recipe": "demo", "settings": settings,
        "formats": {r["answer_format"]: {k: v for k, v in r.items() if k != "settings"} for r in results},
        "qwen_tokenizer_tokens_per_object": qwen_tokens_per_object(held_out, images),
        "constant_box_baseline": constant_box_baseline(read_jsonl(paths["rec_train"]), held_out),
        "wall_seconds": time.perf_counter() - began,
    }
    print_table(figures)
    plot = args.plot or workdir / "vrt_vs_text_curves.png"
    curves = {f"{name} (REC Acc@0.5)": [(p["step"], p["acc@0.5"]) for p in r["curve"]]
              for name, r in figures["formats"].items()}
    line_plot(plot, curves, title="Held-out REC Acc@0.5 while training with the demo recipe",
              x_label="optimizer step", y_label="Acc@0.5")
    print(f"curves: {plot}")
    figures["plot"] = str(plot)
    return figures


def print_table(figures: dict[str, Any]) -> None:
    formats = figures["formats"]
    steps = sorted({p["step"] for r in formats.values() for p in r["curve"]})
    print("\n| format | REC Acc@0.5 | mean IoU | answer tokens / object | s / object | answers with problems "
          "| training |")
    print("|---|---|---|---|---|---|---|")
    for name, result in formats.items():
        row = result["final"]
        print(f"| {name} | {row['acc@0.5']:.3f} | {row['mean_iou']:.3f} | {row['tokens_per_object']:.1f} "
              f"| {row['seconds_per_object']:.4f} | {row['answers_with_problems']} "
              f"| {result['train_seconds'] / 60:.0f} min |")
    print("\n| step | " + " | ".join(formats) + " |")
    print("|---|" + "---|" * len(formats))
    for step in steps:
        cells = [next((f"{p['acc@0.5']:.3f}" for p in r["curve"] if p["step"] == step), "") for r in formats.values()]
        print(f"| {step} | " + " | ".join(cells) + " |")
    qwen, constant = figures["qwen_tokenizer_tokens_per_object"], figures["constant_box_baseline"]
    if qwen is not None:
        print(f"ground-truth answers, real Qwen2.5-VL tokenizer: {qwen['vrt']:.1f} tokens/object with VRTs, "
              f"{qwen['text-boxes']:.1f} as JSON text")
    print(f"model-free reference (the mean training box): acc@0.5 {constant['acc@0.5']:.3f}, "
          f"mean IoU {constant['mean_iou']:.3f}")
