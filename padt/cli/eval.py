"""``padt eval``: score a saved PaDT model on record files (REC, RES, OVD, RIC).

:func:`register` adds the command to the ``padt`` parser and :func:`run` executes it. Heavy imports (torch,
transformers) happen inside :func:`run`, so ``padt --help`` stays fast.

Launched with ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it joins a process group itself (NCCL on
CUDA, gloo on CPU), each rank evaluating a shard; only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from padt.cli.options import add_model_options, pipeline_options


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to ``subparsers`` (from ``parser.add_subparsers()``)."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a PaDT model on JSONL records (REC acc, RES IoU, COCO AP, RIC captions)",
        description="Evaluate a PaDT model folder on PaDT records and print a metrics table. "
        "Definitions: docs/metrics.md.",
    )
    parser.add_argument("--model", required=True, type=Path, help="model folder (save_pretrained output)")
    parser.add_argument("--records", required=True, type=Path, help="records .jsonl (padt convert output)")
    parser.add_argument("--images", required=True, type=Path, help="folder the records' image paths are under")
    parser.add_argument(
        "--task", required=True, help="rec, res, ovd or ric; several of one record kind with commas (rec,res)"
    )
    parser.add_argument(
        "--instances", type=Path, help="OVD ground truth: COCO instances json (default: rebuilt from the records)"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the metrics as JSON")
    parser.add_argument(
        "--predictions", type=Path, metavar="OUT",
        help="write predictions: .jsonl one per record; .json a list (OVD: COCO results)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="samples per generation batch (default 8)")
    add_model_options(parser)
    parser.add_argument("--limit", type=int, help="evaluate only the first N records")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="default: bfloat16 on CUDA, float32 on CPU"
    )
    parser.add_argument(
        "--teacher-forced", action="store_true",
        help="decode the ground-truth answers (VRTs sampled from each object) instead of generating",
    )
    parser.add_argument(
        "--protocol", choices=("padt", "paper"), default="padt",
        help="padt (default): score each answer against its own record; paper: the official scripts' scoring "
        "(labels must equal the GT, boxes rounded to pixels, images as stored), as in the paper's tables",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load model and records, evaluate, print the table and write the requested files (rank 0)."""
    from padt.evaluation import parse_tasks

    tasks = parse_tasks(args.task)  # a typo fails before the model loads
    if not args.model.is_dir():
        raise FileNotFoundError(f"model folder not found: {args.model}")
    if not args.records.is_file():
        raise FileNotFoundError(f"records file not found: {args.records}")
    if not args.images.is_dir():
        raise FileNotFoundError(f"images folder not found: {args.images}")
    if args.instances is not None and not args.instances.is_file():
        raise FileNotFoundError(f"COCO instances file not found: {args.instances}")
    for name in ("batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")

    import torch
    import torch.distributed as dist

    from padt.datasets.records import read_jsonl
    from padt.evaluation import evaluate
    from padt.pipeline import PaDTPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = _init_distributed(device)
    if started and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        default_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        dtype = getattr(torch, args.dtype) if args.dtype else default_dtype
        records = read_jsonl(args.records, images_root=args.images)
        pipeline = PaDTPipeline.from_pretrained(
            args.model, device=device, dtype=dtype, batch_size=args.batch_size, **pipeline_options(args)
        )
        result = evaluate(
            pipeline, records, args.images, tasks,
            instances=args.instances, max_new_tokens=pipeline.max_new_tokens, limit=args.limit,
            progress=not args.quiet, mode="teacher_forced" if args.teacher_forced else "generate",
            protocol=args.protocol,
        )
        if not dist.is_initialized() or dist.get_rank() == 0:
            _report(args, tasks, result)
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def _report(args: argparse.Namespace, tasks: tuple[str, ...], result: Any) -> None:
    """Print the metrics table and write the files asked for (rank 0's job)."""
    from padt.metrics import format_table

    print(format_table(result.metrics))
    if args.json is not None:
        summary = {
            "model": str(args.model), "records": str(args.records), "tasks": list(tasks),
            "mode": "teacher_forced" if args.teacher_forced else "generate", "protocol": args.protocol,
            "metrics": result.metrics,
        }
        _write_json(args.json, summary)
        print(f"metrics -> {args.json}")
    if args.predictions is not None:
        _write_predictions(args.predictions, result, coco="ovd" in tasks)
        print(f"predictions -> {args.predictions}")


def _init_distributed(device: str) -> bool:
    """Join the process group torchrun describes; False when not launched that way (or already joined)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from padt.evaluation import json_ready

    path.write_text(json.dumps(json_ready(data), indent=2) + "\n", encoding="utf-8")


def _write_predictions(path: Path, result: Any, *, coco: bool) -> None:
    """``.json``: a JSON list (for OVD the COCO results, what ``COCO.loadRes`` reads); else JSONL, one per record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(result.coco_results if coco else result.predictions) + "\n", encoding="utf-8")
        return
    with path.open("w", encoding="utf-8") as handle:
        for prediction in result.predictions:
            handle.write(json.dumps(prediction, ensure_ascii=False) + "\n")
