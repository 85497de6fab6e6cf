"""``padt demo``: synthetic scenes -> the tiny PaDT (shipped, or trained again) -> held-out scores -> a gallery PNG.

The recipe and the steps live in :mod:`padt.apps.demo`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from padt.apps import demo
from padt.backbones import BACKBONE_NAMES


def run(args: argparse.Namespace) -> int:
    from padt.metrics import format_table
    from padt.pipeline import PaDTPipeline

    workdir = Path(args.workdir).expanduser() if args.workdir else demo.default_workdir()
    recipe = demo.backbone_recipe(args.backbone)
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        recipe["train"]["max_steps"] = args.steps
    scenes = demo.prepare_scenes(workdir, recipe)
    model_dir = demo.prepare_model(workdir, scenes, recipe, args.retrain or args.steps is not None)
    pipeline = PaDTPipeline.from_pretrained(model_dir, max_new_tokens=64, batch_size=16)
    metrics = demo.evaluate_model(pipeline, scenes)
    print(format_table(metrics))
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    gallery = demo.write_gallery(pipeline, scenes, workdir / "gallery.png")
    print(f"gallery of held-out predictions: {gallery}")
    print(f"metrics: {workdir / 'metrics.json'}; model: {model_dir} (padt predict / padt serve use it)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="train, evaluate and show the tiny PaDT on synthetic scenes",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--workdir", help="where scenes, training run, metrics and gallery go")
    parser.add_argument("--retrain", action="store_true",
                        help="train the model again with the recipe instead of using the shipped one")
    parser.add_argument(
        "--backbone", choices=BACKBONE_NAMES, default=demo.DEFAULT_BACKBONE,
        help=f"backbone of the tiny model (default {demo.DEFAULT_BACKBONE}, the shipped one; qwen3-vl needs --retrain)",
    )
    parser.add_argument("--steps", type=int, help="train (implies --retrain) for this many steps, not the recipe's")
    parser.set_defaults(run=run)
