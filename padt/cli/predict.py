"""``padt predict``: ground images with a saved PaDT model; write overlay pictures and the objects' JSON.

```
padt predict --image street.jpg --detect person,horse --out vis.png --json objects.json
padt predict --model runs/padt-tiny --image shapes.png --refer "the red circle"
padt predict --image shapes.png --caption --heatmaps steps.png
padt predict --image photos/ --image 'more/*.jpg' --detect dog --out-dir results/   # many images
```

With several images (several ``--image``, a folder or a glob) the results go to ``--out-dir``: one line per
image in ``predictions.jsonl`` and one overlay ``STEM.padt.png`` each. A file that cannot be read is reported and
skipped, the others go on; the exit code is then 1.

Without ``--model`` the demo's tiny model is used (:func:`padt.apps.demo.demo_model_dir`: ``$PADT_DEMO_MODEL`` if
set, else the one ``padt demo --retrain`` trained, else the one shipped with padt).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from padt.apps.tasks import load_pipeline, output_record, render, resolve_model_dir, run_task, summary, task_prompt
from padt.cli.options import add_model_options, pipeline_options


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``padt predict`` to the ``padt`` command."""
    parser = subparsers.add_parser(
        "predict",
        help="ground one image: overlay picture + JSON of the objects",
        description=__doc__.splitlines()[0].replace("``", ""),
    )
    parser.add_argument("--model", help="model folder (default: the demo model, see `padt demo`)")
    parser.add_argument(
        "--image", required=True, action="append",
        help="image file, folder of images or glob pattern to ground; repeat for more (required)",
    )
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument(
        "--refer",
        metavar="TEXT",
        help="find the object TEXT describes (no default: give one of --refer/--detect/--caption)",
    )
    task.add_argument(
        "--detect", metavar="NAMES", help="find every instance of comma-separated NAMES, e.g. person,horse (no default)"
    )
    task.add_argument(
        "--caption", action="store_true", help="describe the image, grounding its nouns (default: off)"
    )
    parser.add_argument(
        "--out", help="one image: overlay picture to write (default: IMAGE_STEM.padt.png in the current folder)"
    )
    parser.add_argument(
        "--out-dir", type=Path,
        help="several images: folder for predictions.jsonl and one overlay per image (required then)",
    )
    parser.add_argument(
        "--json", dest="json_path", metavar="FILE", help="also write the objects as JSON to FILE (default: none)"
    )
    parser.add_argument(
        "--heatmaps", metavar="FILE", help="also write a gallery of per-VRT-step heatmaps to FILE (default: none)"
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")
    add_model_options(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    paths = expand_images(args.image)
    task = "refer" if args.refer is not None else "detect" if args.detect is not None else "caption"
    text = args.refer if args.refer is not None else args.detect
    task_prompt(task, text)  # reject an empty expression / category list before loading the model
    several = len(paths) > 1 or any(Path(p).is_dir() or _is_glob(p) for p in args.image)
    if several:
        if args.out_dir is None:
            raise ValueError(f"{len(paths)} images: pass --out-dir FOLDER for their predictions and overlays")
        if args.out or args.json_path or args.heatmaps:
            raise ValueError("--out, --json and --heatmaps are for one image; with several, --out-dir holds them")
    else:
        _check_readable(paths[0])  # before loading the model, which takes longer than reading this message
    model_dir = resolve_model_dir(args.model)
    pipeline = load_pipeline(model_dir, args.device, **pipeline_options(args))
    if several:
        return _predict_many(pipeline, paths, task, text, args.out_dir, model_dir)
    return _predict_one(pipeline, paths[0], task, text, args, model_dir)


def expand_images(patterns: list[str]) -> list[Path]:
    """Image files named by ``--image`` arguments: files as given, folders' image files and glob matches sorted.

    Raises ``FileNotFoundError`` for a file, folder or pattern that gives nothing.
    """
    paths: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif _is_glob(pattern):
            found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        else:
            found = [path]
        if not found:
            raise FileNotFoundError(f"--image {pattern}: no image files there")
        paths += found
    return paths


#: What a folder given to ``--image`` contributes (a glob or a file name may name any format PIL reads).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _check_readable(path: Path) -> None:
    """A missing file, one PIL cannot identify, or one above the pixel limit: a ValueError naming it."""
    from padt.vision.images import open_image

    with open_image(path):
        pass


def _predict_one(pipeline, image_path: Path, task: str, text: str | None, args, model_dir) -> int:
    from padt.visualize import make_gallery, save_image, vrt_step_heatmaps

    image = pipeline.processor.load(image_path)
    output, prompt, require_labels = run_task(pipeline, image, task, text)
    print(summary(output))
    out_path = Path(args.out) if args.out else Path(f"{image_path.stem}.padt.png")
    save_image(out_path, render(image, output))
    print(f"overlay: {out_path}")
    if args.json_path:
        record = output_record(output, task=task, prompt=prompt, image=str(image_path), model=str(model_dir))
        json_path = Path(args.json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"json: {json_path}")
    if args.heatmaps:
        steps = vrt_step_heatmaps(pipeline, image, prompt, output=output, require_labels=require_labels)
        tiles = [(render(image, output), "answer")]
        tiles += [(heatmap, f"step {n}: {token}") for n, (token, heatmap) in enumerate(steps)]
        save_image(args.heatmaps, make_gallery(tiles, columns=4))
        print(f"heatmaps: {args.heatmaps} ({len(steps)} VRT steps)")
    return 0


def _predict_many(pipeline, paths: list[Path], task: str, text: str | None, out_dir: Path, model_dir) -> int:
    """Every readable image through ``pipeline.map`` (batched, in order); the unreadable ones reported, skipped."""
    from padt.visualize import save_image

    prompt, _ = task_prompt(task, text)
    readable, skipped = [], []
    for path in paths:
        try:
            readable.append((path, pipeline.processor.load(path)))
        except (ValueError, FileNotFoundError) as error:
            skipped.append(path)
            print(f"padt predict: skipped {path}: {error}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {"expression": text} if task == "refer" else {"categories": _names(text)} if task == "detect" else {}
    outputs = pipeline.map([image for _, image in readable], task=task, **options)
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as jsonl:
        for (path, image), output in zip(readable, outputs, strict=True):
            record = output_record(output, task=task, prompt=prompt, image=str(path), model=str(model_dir))
            jsonl.write(json.dumps(record) + "\n")
            save_image(out_dir / f"{path.stem}.padt.png", render(image, output))
    print(f"{len(readable)} images: {out_dir / 'predictions.jsonl'} and their overlays; {len(skipped)} skipped")
    return 1 if skipped else 0


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]
