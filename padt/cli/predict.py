"""``padt predict``: ground one image with a saved PaDT model; write the overlay picture and the objects' JSON.

```
padt predict --image street.jpg --detect person,horse --out vis.png --json objects.json
padt predict --model runs/padt-tiny --image shapes.png --refer "the red circle"
padt predict --image shapes.png --caption --heatmaps steps.png
```

Without ``--model`` the demo's tiny model is used (:func:`padt.apps.demo.demo_model_dir`: ``$PADT_DEMO_MODEL`` if
set, else the one ``padt demo --retrain`` trained, else the one shipped with padt).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from padt.apps.tasks import load_pipeline, output_record, render, resolve_model_dir, run_task, summary, task_prompt


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``padt predict`` to the ``padt`` command."""
    parser = subparsers.add_parser(
        "predict",
        help="ground one image: overlay picture + JSON of the objects",
        description=__doc__.splitlines()[0].replace("``", ""),
    )
    parser.add_argument("--model", help="model folder (default: the demo model, see `padt demo`)")
    parser.add_argument("--image", required=True, help="image file")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--refer", metavar="TEXT", help="referring expression: find the object it describes")
    task.add_argument("--detect", metavar="NAMES", help="comma-separated category names: find every instance")
    task.add_argument("--caption", action="store_true", help="describe the image, grounding its nouns")
    parser.add_argument("--out", help="overlay picture to write (default: IMAGE_STEM.padt.png in the current folder)")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="write the objects as JSON to FILE")
    parser.add_argument("--heatmaps", metavar="FILE", help="also write a gallery of per-VRT-step heatmaps")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    image_path = Path(args.image)
    if not image_path.is_file():  # before loading the model: that takes longer than reading this message
        raise FileNotFoundError(f"image file not found: {image_path}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    task = "refer" if args.refer is not None else "detect" if args.detect is not None else "caption"
    text = args.refer if args.refer is not None else args.detect
    task_prompt(task, text)  # reject an empty expression / category list before loading the model
    model_dir = resolve_model_dir(args.model)

    from padt.visualize import make_gallery, save_image, vrt_step_heatmaps

    pipeline = load_pipeline(model_dir, args.device)
    image = pipeline.processor.load(image_path)
    output, prompt, require_labels = run_task(pipeline, image, task, text, max_new_tokens=args.max_new_tokens)
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
