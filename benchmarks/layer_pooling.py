"""Layer-wise attention pooling of VRT states (``PaDTConfig.vrt_state_layers``) on the demo task, with and without.

Per seed, two runs of the demo recipe (:data:`padt.apps.demo.RECIPE`: the same scenes, REC + OVD records,
optimiser and schedule) shortened to ``--steps``: one as shipped (the decoder reads the last layer's state of each
VRT), one with ``vrt_state_layers`` (the decoder reads a learned attention-pooled mix of those layers' outputs and
the last layer's state). The seed sets the tiny model's initial weights and the data order, the same for both
runs of a seed. Each final model is scored as ``padt demo`` scores (held-out REC Acc@0.5, RES cIoU, OVD AP).

    python benchmarks/layer_pooling.py [--steps 4000] [--seeds 0 1] [--layers 0 1 2 3] [--workdir DIR] [--quick]

A run whose ``result.json`` in the work folder came from the same settings is reused. Prints a table, whether
pooling won on every seed, then ONE JSON line with the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

FIGURES = ("REC Acc@0.5", "RES cIoU", "OVD AP")
QUICK = dict(steps=30, seeds=[0], num_images=60)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="optimizer steps per run (default 4000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="recipe seeds (default 0 1)")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3],
                        help="vrt_state_layers of the pooled runs (default 0 1 2 3: the embeddings and every layer "
                             "below the last of the demo model's 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--workdir", type=Path, help="runs and results (default ~/.cache/padt/layer-pooling)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 steps, seed 0, 60 scenes")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = QUICK["steps"], QUICK["seeds"]
    return args


def run_settings(args: argparse.Namespace, seed: int, pooled: bool) -> dict[str, Any]:
    from padt.apps.demo import RECIPE

    recipe = copy.deepcopy(RECIPE)
    if args.quick:
        recipe["scenes"]["num_images"] = QUICK["num_images"]
    recipe["train"].update(max_steps=args.steps, seed=seed)
    if pooled:
        recipe["train"]["model_overrides"]["vrt_state_layers"] = list(args.layers)
    return recipe


def train_and_score(recipe: dict[str, Any], out: Path, scenes: dict[str, Path]) -> dict[str, Any]:
    """Train the tiny model with ``recipe`` into ``out`` (or reuse its result) and score it as ``padt demo``."""
    from padt.apps.demo import evaluate_model
    from padt.pipeline import PaDTPipeline
    from padt.train.config import TrainConfig
    from padt.train.loop import train

    done = out / "result.json"
    if done.is_file() and json.loads(done.read_text())["recipe"] == recipe:
        return json.loads(done.read_text())
    config = TrainConfig(
        records=[str(scenes["rec_train"]), str(scenes["ovd_train"])], images=str(scenes["rec_train"].parent / "images"),
        output_dir=str(out), tiny=True, overwrite=True, **recipe["train"],
    )
    started = time.perf_counter()
    final = train(config)
    train_seconds = time.perf_counter() - started
    pipeline = PaDTPipeline.from_pretrained(final, max_new_tokens=64, batch_size=16)
    result = {"recipe": recipe, "train_seconds": train_seconds, "metrics": evaluate_model(pipeline, scenes)}
    done.write_text(json.dumps(result) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from padt.apps.demo import default_workdir, prepare_scenes

    workdir = (args.workdir or Path.home() / ".cache" / "padt" / "layer-pooling").expanduser()
    began = time.perf_counter()
    # Every run shares the scenes; the full recipe's are the demo's own cache, which smaller ones must not replace.
    scenes = prepare_scenes(workdir if args.quick else default_workdir(), run_settings(args, args.seeds[0], False))
    rows = []
    for seed in args.seeds:
        for pooled in (False, True):
            recipe = run_settings(args, seed, pooled)
            name = "pooled" if pooled else "last layer"
            result = train_and_score(recipe, workdir / f"seed{seed}" / ("pooled" if pooled else "last"), scenes)
            rows.append({"seed": seed, "decoder reads": name, **result["metrics"],
                         "train_seconds": result["train_seconds"]})
            print(f"seed {seed} {name:10s} " + "  ".join(f"{k} {result['metrics'][k]:.4f}" for k in FIGURES),
                  flush=True)
    wins = {seed: {figure: _by(rows, seed, "pooled")[figure] > _by(rows, seed, "last layer")[figure]
                   for figure in FIGURES} for seed in args.seeds}
    print("\n| seed | decoder reads | " + " | ".join(FIGURES) + " | training |")
    print("|---|---|" + "---|" * (len(FIGURES) + 1))
    for row in rows:
        print(f"| {row['seed']} | {row['decoder reads']} | " + " | ".join(f"{row[k]:.4f}" for k in FIGURES)
              + f" | {row['train_seconds'] / 60:.0f} min |")
    wins_everywhere = all(all(w.values()) for w in wins.values())
    print(f"pooling better on every figure of every seed: {'yes' if wins_everywhere else 'no'}; "
          f"total {time.perf_counter() - began:.0f} s")
    figures = {"benchmark": "layer_pooling", "steps": args.steps, "seeds": args.seeds, "layers": args.layers,
               "runs": rows, "pooling_wins": {str(k): v for k, v in wins.items()},
               "pooling_wins_every_seed": wins_everywhere}
    print(json.dumps(figures))
    return 0


def _by(rows: list[dict[str, Any]], seed: int, reads: str) -> dict[str, Any]:
    return next(r for r in rows if r["seed"] == seed and r["decoder reads"] == reads)


if __name__ == "__main__":
    sys.exit(main())
