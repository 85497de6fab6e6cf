"""Synthetic scenes of coloured shapes, written in the real COCO and RefCOCO formats.

``generate_synthetic(out_dir, ...)`` writes::

    out_dir/images/000001.png ...   RGB scenes: a light background with mild grainy noise and flat-coloured shapes
    out_dir/instances.json          COCO instances: categories are the shape types (circle, square, triangle);
                                    each annotation also carries its colour as "color" (an attribute, not a category);
                                    segmentation = RLE of the visible part (after occlusion), bbox/area of that part;
                                    each image entry carries its "split"
    out_dir/refs.p                  RefCOCO-style refs (pickle of plain dicts/lists/str/int only)

Images are assigned to ``"train"`` or ``"val"`` as a whole (fraction ``val_fraction``), so the two splits never
share an image; every ref of an image has that image's split.

Referring expressions name an object by attribute (``the red circle``, ``the square``, ``the blue shape``) or by
relation within a group (``the leftmost square``, ``the topmost shape``, ``the largest triangle``). Every candidate
is evaluated against all objects of its image and kept only when it denotes exactly one: an attribute expression
must match a single object, a superlative must have a single extreme object, ahead of the runner-up by
``position_margin`` pixels (box centres) or ``size_ratio`` (visible areas).

Everything is drawn from one ``numpy`` generator seeded with ``seed``: the same arguments give byte-identical
files.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from padt.datasets.records import PathLike
from padt.losses.box_ops import box_xywh_to_xyxy, box_xyxy_to_cxcywh, box_xyxy_to_xywh
from padt.vision.masks import mask_to_box, mask_to_rle

SHAPES = ("circle", "square", "triangle")
#: Named colours (RGB); the defaults use the first four, all far apart in hue.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 20),
}
ColorSpec = Sequence[str] | Mapping[str, tuple[int, int, int]]


@dataclass
class SyntheticDataset:
    """Where :func:`generate_synthetic` wrote its files, and what they hold."""

    root: Path
    images_dir: Path
    instances_path: Path
    refs_path: Path
    num_images: int
    num_objects: int
    num_refs: int
    objects_without_ref: int
    split_image_ids: dict[str, list[int]]


@dataclass(eq=False)
class _Shape:
    shape: str
    color: str
    full: np.ndarray  # (H, W) bool, the whole shape
    visible: np.ndarray | None = None
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x, y, w, h of the visible part
    area: int = 0

    @property
    def centre(self) -> tuple[float, float]:
        xyxy = box_xywh_to_xyxy(torch.tensor(self.box, dtype=torch.float64))
        cx, cy, _, _ = box_xyxy_to_cxcywh(xyxy).tolist()
        return cx, cy


def generate_synthetic(
    out_dir: PathLike,
    num_images: int,
    seed: int = 0,
    *,
    image_size: tuple[int, int] = (224, 224),
    shapes: Sequence[str] = SHAPES,
    colors: ColorSpec = ("red", "green", "blue", "yellow"),
    objects_per_image: tuple[int, int] = (1, 4),
    object_size: tuple[int, int] = (32, 96),
    allow_occlusion: bool = False,
    min_visible_fraction: float = 0.5,
    noise: float = 6.0,
    val_fraction: float = 0.2,
    sentences_per_ref: int = 2,
    position_margin: float = 8.0,
    size_ratio: float = 1.25,
) -> SyntheticDataset:
    """Draw ``num_images`` scenes and write them with COCO instances and RefCOCO refs under ``out_dir``.

    Args:
        image_size: ``(min_side, max_side)``: height and width are each drawn from this range (inclusive).
        shapes: shape types, a subset of :data:`SHAPES`; they become the COCO categories in this order.
        colors: colour names from :data:`COLORS`, or a mapping name -> RGB.
        objects_per_image: inclusive range of objects per scene (fewer when they do not fit without overlap).
        object_size: inclusive range of the shape's side/diameter in pixels.
        allow_occlusion: let later shapes cover earlier ones; each keeps at least ``min_visible_fraction`` of
            its area visible. Otherwise shapes never touch (2 px gap).
        noise: standard deviation of the background's Gaussian noise, in 4x4-pixel grains (0: plain).
        val_fraction: fraction of images (and of their refs) in the ``"val"`` split.
        sentences_per_ref: at most this many expressions per referred object.
        position_margin, size_ratio: how clearly a superlative's object must win (see the module docstring).
    """
    palette = _checked_palette(shapes, colors, objects_per_image, object_size)
    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(shapes)]
    scenes = _Scenes({c["name"]: c["id"] for c in categories}, sentences_per_ref)
    for image_id in range(1, num_images + 1):
        height, width = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, size=2))
        split = "val" if rng.random() < val_fraction else "train"
        objects = _place_shapes(rng, height, width, shapes, palette, objects_per_image, object_size,
                                allow_occlusion, min_visible_fraction)
        file_name = f"{image_id:06d}.png"
        # Level 1: level 6 saves ~10 % of the bytes at twice the encoding time.
        _render(rng, objects, palette, height, width, noise).save(images_dir / file_name, compress_level=1)
        first_ann = scenes.add_image(image_id, file_name, height, width, split, objects)
        expressions = referring_expressions(objects, position_margin=position_margin, size_ratio=size_ratio)
        scenes.add_refs(rng, image_id, file_name, split, objects, expressions, first_ann)
    instances_path, refs_path = scenes.write(root, seed, categories)
    return SyntheticDataset(root, images_dir, instances_path, refs_path, num_images, len(scenes.annotations),
                            len(scenes.refs), scenes.without_ref, scenes.splits)


def _checked_palette(
    shapes: Sequence[str], colors: ColorSpec, objects_per_image: tuple[int, int], object_size: tuple[int, int]
) -> dict[str, tuple[int, int, int]]:
    """The name -> RGB palette of ``colors``, once the shape, colour and range arguments are known to be valid."""
    palette = {name: COLORS[name] for name in colors} if not isinstance(colors, Mapping) else dict(colors)
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes or not palette:
        raise ValueError(f"shapes must be a non-empty subset of {SHAPES} and colors non-empty; got {shapes}")
    if not (1 <= objects_per_image[0] <= objects_per_image[1]) or not (4 <= object_size[0] <= object_size[1]):
        raise ValueError(f"bad ranges: objects_per_image={objects_per_image}, object_size={object_size}")
    return palette


@dataclass
class _Scenes:
    """The COCO images and annotations and the RefCOCO refs of the scenes drawn so far, in drawing order."""

    category_of: dict[str, int]
    sentences_per_ref: int
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    refs: list[dict[str, Any]] = field(default_factory=list)
    splits: dict[str, list[int]] = field(default_factory=lambda: {"train": [], "val": []})
    without_ref: int = 0

    def add_image(
        self, image_id: int, file_name: str, height: int, width: int, split: str, objects: Sequence[_Shape]
    ) -> int:
        """Record one scene's image entry and an annotation per object; returns the id of its first annotation."""
        self.splits[split].append(image_id)
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, "split": split})
        first_ann = len(self.annotations) + 1
        for offset, obj in enumerate(objects):
            self.annotations.append({
                "id": first_ann + offset,
                "image_id": image_id,
                "category_id": self.category_of[obj.shape],
                "segmentation": mask_to_rle(obj.visible),
                "area": obj.area,
                "bbox": list(obj.box),
                "iscrowd": 0,
                "color": obj.color,
            })
        return first_ann

    def add_refs(
        self,
        rng: np.random.Generator,
        image_id: int,
        file_name: str,
        split: str,
        objects: Sequence[_Shape],
        expressions: list[list[str]],
        first_ann: int,
    ) -> None:
        """One ref per object that has an expression, with up to ``sentences_per_ref`` of them drawn at random."""
        for offset, obj in enumerate(objects):
            candidates = expressions[offset]
            if not candidates:
                self.without_ref += 1
                continue
            count = min(self.sentences_per_ref, len(candidates))
            chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), size=count, replace=False))]
            ref_id = len(self.refs) + 1
            sentences = [
                {"sent": s, "raw": s, "tokens": s.split(), "sent_id": ref_id * 100 + k} for k, s in enumerate(chosen)
            ]
            self.refs.append({
                "ref_id": ref_id,
                "ann_id": first_ann + offset,
                "image_id": image_id,
                "split": split,
                "sentences": sentences,
                "sent_ids": [s["sent_id"] for s in sentences],
                "category_id": self.category_of[obj.shape],
                "file_name": file_name,
            })

    def write(self, root: Path, seed: int, categories: list[dict[str, Any]]) -> tuple[Path, Path]:
        """Write ``instances.json`` and ``refs.p`` under ``root``; returns their paths."""
        instances = {
            "info": {"description": "padt synthetic shapes", "seed": seed},
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
        }
        instances_path, refs_path = root / "instances.json", root / "refs.p"
        instances_path.write_text(json.dumps(instances), encoding="utf-8")
        refs_path.write_bytes(pickle.dumps(self.refs, protocol=4))
        return instances_path, refs_path

def referring_expressions(
    objects: Sequence[_Shape], *, position_margin: float = 8.0, size_ratio: float = 1.25
) -> list[list[str]]:
    """For each object, the candidate expressions that denote it and no other object of the scene."""
    candidates: list[tuple[str, list[int]]] = []
    shapes = sorted({o.shape for o in objects})
    colors = sorted({o.color for o in objects})
    everything = list(range(len(objects)))
    for color in colors:
        for shape in shapes:
            members = [i for i in everything if objects[i].shape == shape and objects[i].color == color]
            candidates.append((f"the {color} {shape}", members))
    for shape in shapes:
        candidates.append((f"the {shape}", [i for i in everything if objects[i].shape == shape]))
    for color in colors:
        candidates.append((f"the {color} shape", [i for i in everything if objects[i].color == color]))
    groups = [(shape, [i for i in everything if objects[i].shape == shape]) for shape in shapes]
    groups.append(("shape", everything))
    superlatives: list[tuple[str, Callable[[_Shape], float], bool, bool]] = [
        ("leftmost", lambda o: o.centre[0], False, False),
        ("rightmost", lambda o: o.centre[0], True, False),
        ("topmost", lambda o: o.centre[1], False, False),
        ("bottommost", lambda o: o.centre[1], True, False),
        ("largest", lambda o: float(o.area), True, True),
        ("smallest", lambda o: float(o.area), False, True),
    ]
    for noun, members in groups:
        if len(members) < 2:
            continue
        for word, key, highest, by_ratio in superlatives:
            candidates.append((f"the {word} {noun}", _extreme(objects, members, key, highest, by_ratio,
                                                                position_margin, size_ratio)))
    result: list[list[str]] = [[] for _ in objects]
    for text, denoted in candidates:
        if len(denoted) == 1:  # keep only expressions that identify exactly one object
            result[denoted[0]].append(text)
    return result


def _extreme(
    objects: Sequence[_Shape],
    members: list[int],
    key: Callable[[_Shape], float],
    highest: bool,
    by_ratio: bool,
    margin: float,
    ratio: float,
) -> list[int]:
    """Members tied (within the margin) for the extreme value of ``key``: one index when the superlative is clear."""
    sign = -1.0 if highest else 1.0
    best = min(sign * key(objects[i]) for i in members)
    if by_ratio:
        value = -best if highest else best
        return [
            i for i in members
            if (key(objects[i]) * ratio > value if highest else key(objects[i]) < value * ratio)
        ]
    return [i for i in members if sign * key(objects[i]) - best < margin]


def _place_shapes(
    rng: np.random.Generator,
    height: int,
    width: int,
    shapes: Sequence[str],
    palette: Mapping[str, tuple[int, int, int]],
    count_range: tuple[int, int],
    size_range: tuple[int, int],
    allow_occlusion: bool,
    min_visible: float,
) -> list[_Shape]:
    count = int(rng.integers(count_range[0], count_range[1] + 1))
    names = list(palette)
    placed: list[_Shape] = []
    occupied = np.zeros((height, width), dtype=bool)  # grown by 2 px around each shape when occlusion is off
    for _ in range(count):
        shape = shapes[int(rng.integers(len(shapes)))]
        color = names[int(rng.integers(len(names)))]
        for _attempt in range(30):  # rejection sampling; give up on this object when the scene is full
            side = int(rng.integers(size_range[0], min(size_range[1], height, width) + 1))
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            full = _shape_mask(shape, x, y, side, height, width)
            if allow_occlusion:
                if _keeps_visible(placed, full, min_visible):
                    placed.append(_Shape(shape, color, full))
                    break
            else:
                x0, y0 = max(x - 2, 0), max(y - 2, 0)
                if not occupied[y0 : y + side + 2, x0 : x + side + 2].any():
                    occupied[y0 : y + side + 2, x0 : x + side + 2] = True
                    placed.append(_Shape(shape, color, full))
                    break
    label = np.zeros((height, width), dtype=np.int32)
    for number, obj in enumerate(placed, start=1):
        label[obj.full] = number  # later shapes are painted over earlier ones
    for number, obj in enumerate(placed, start=1):
        obj.visible = label == number
        obj.box = tuple(box_xyxy_to_xywh(torch.tensor(mask_to_box(obj.visible))).tolist())
        obj.area = int(obj.visible.sum())
    return placed


def _keeps_visible(placed: list[_Shape], new: np.ndarray, min_visible: float) -> bool:
    """Whether every placed shape keeps ``min_visible`` of its area once ``new`` is painted on top."""
    cover = new.copy()
    for obj in reversed(placed):  # a shape is covered by everything painted after it
        if (obj.full & ~cover).sum() < min_visible * obj.full.sum():
            return False
        cover |= obj.full
    return True


def _shape_mask(shape: str, x: int, y: int, side: int, height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    corners = (x, y, x + side - 1, y + side - 1)
    if shape == "circle":
        draw.ellipse(corners, fill=1)
    elif shape == "square":
        draw.rectangle(corners, fill=1)
    else:
        draw.polygon([(x + (side - 1) / 2.0, y), (x + side - 1, y + side - 1), (x, y + side - 1)], fill=1)
    return np.asarray(canvas, dtype=np.uint8).astype(bool)


def _render(
    rng: np.random.Generator,
    objects: Sequence[_Shape],
    palette: Mapping[str, tuple[int, int, int]],
    height: int,
    width: int,
    noise: float,
) -> Image.Image:
    background = rng.integers(200, 246, size=3).astype(np.float32)
    pixels = np.broadcast_to(background, (height, width, 3)).copy()
    if noise > 0:
        # Grainy 4x4-pixel noise: per-pixel noise would make PNG encoding the slowest step of generation.
        coarse = rng.standard_normal(size=(-(-height // 4), -(-width // 4), 3), dtype=np.float32)
        grain = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:height, :width]
        pixels += grain * np.float32(noise)
    for obj in objects:
        pixels[obj.full] = palette[obj.color]  # painted in order, so pixels agree with the visible masks
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))

