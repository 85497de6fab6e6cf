"""PaDT quick start as a script: detect, refer and caption on one image, then save a picture of the answers.

    python demos/quickstart.py                               # the demo model (make demo) on a drawn scene
    python demos/quickstart.py --model DIR --image street.jpg --detect person,horse --refer "the man on the left"
    python demos/quickstart.py --tiny                        # a random tiny model: runs anywhere, answers are noise

It uses only the public API (``padt.PaDTPipeline``, ``GroundedOutput``) and :mod:`padt.visualize`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
from _model_choice import add_model_arguments, pipeline_from_arguments  # demos/ is the script folder
from PIL import Image, ImageDraw

import padt
from padt.vision.images import load_image
from padt.visualize import draw_grounding, make_gallery, save_image


def drawn_scene(height: int = 224, width: int = 320) -> np.ndarray:
    """A light scene with a red circle, a blue square and a green triangle (what the demo model was taught)."""
    image = Image.new("RGB", (width, height), (236, 232, 224))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 60, 110, 140), fill=(220, 40, 40))
    draw.rectangle((140, 40, 210, 110), fill=(40, 80, 220))
    draw.polygon([(240, 190), (300, 190), (270, 130)], fill=(40, 160, 60))
    return np.asarray(image)


def show(task: str, output: padt.GroundedOutput) -> None:
    """Print what the model answered and where its objects are (original-image pixels)."""
    print(f"{task}: {output.text.strip()!r}")
    for obj in output.objects:
        x1, y1, x2, y2 = obj.box
        print(f"  {obj.label!r}: box ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}) score {obj.score:.2f} "
              f"patches {obj.patches}")
    if not output.objects:
        print("  (no objects)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--image", help="image file (default: a drawn scene of shapes)")
    parser.add_argument("--detect", default="circle,square,triangle", help="comma-separated categories")
    parser.add_argument("--refer", default="the red circle", help="referring expression")
    parser.add_argument("--out", default="quickstart.png", help="picture of the three answers")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)

    pipe = pipeline_from_arguments(args, "quickstart")
    if pipe is None:
        return 2
    image = np.asarray(load_image(args.image)) if args.image else drawn_scene()
    categories = [name.strip() for name in args.detect.split(",") if name.strip()]
    generation = {"max_new_tokens": args.max_new_tokens}

    answers = [
        (f"detect {', '.join(categories)}", pipe.detect(image, categories, **generation)),
        (f"refer: {args.refer}", pipe.refer(image, args.refer, **generation)),
        ("caption", pipe.caption(image, **generation)),
    ]
    tiles = [(image, "input")]
    for title, output in answers:
        show(title, output)
        tiles.append((draw_grounding(image, output), title))
    save_image(args.out, make_gallery(tiles, columns=2, tile_size=320))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
