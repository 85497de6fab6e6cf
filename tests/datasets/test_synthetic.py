"""Synthetic scenes: determinism, masks that match the pixels, unique referring expressions, real-format output."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padt.datasets.coco import convert_coco
from padt.datasets.refcoco import convert_refcoco, load_refs
from padt.datasets.synthetic import COLORS, generate_synthetic
from padt.vision.masks import rle_to_mask


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", 12, seed=5, image_size=(180, 260), allow_occlusion=True)
    generate_synthetic(tmp_path / "b", 12, seed=5, image_size=(180, 260), allow_occlusion=True)
    generate_synthetic(tmp_path / "c", 12, seed=6, image_size=(180, 260), allow_occlusion=True)
    first, second, other = (file_bytes(tmp_path / name) for name in "abc")
    assert len(first) == 12 + 2 and first == second
    assert first["instances.json"] != other["instances.json"]


def test_hundred_images_are_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    dataset = generate_synthetic(tmp_path, 100, seed=0)
    assert time.perf_counter() - start < 3.0
    assert dataset.num_images == 100 and len(list(dataset.images_dir.glob("*.png"))) == 100


def test_masks_match_pixels_and_never_overlap(tmp_path: Path) -> None:
    dataset = generate_synthetic(tmp_path, 20, seed=1, objects_per_image=(3, 6), allow_occlusion=True)
    instances = json.loads(dataset.instances_path.read_text())
    assert [c["name"] for c in instances["categories"]] == ["circle", "square", "triangle"]
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in instances["annotations"]:
        by_image[ann["image_id"]].append(ann)
    overlapping_boxes = 0
    for image in instances["images"]:
        pixels = np.asarray(Image.open(dataset.images_dir / image["file_name"]).convert("RGB"))
        assert pixels.shape[:2] == (image["height"], image["width"])
        union = np.zeros(pixels.shape[:2], dtype=np.int32)
        boxes = []
        for ann in by_image[image["id"]]:
            mask = rle_to_mask(ann["segmentation"]).astype(bool)
            assert mask.sum() == ann["area"] > 0
            assert (pixels[mask] == COLORS[ann["color"]]).all()  # the visible part has the object's colour
            rows, cols = np.nonzero(mask)
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            union += mask
            boxes.append(ann["bbox"])
        assert union.max() <= 1  # visible parts are disjoint
        overlapping_boxes += sum(_boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert overlapping_boxes > 0  # occlusion really happens


def _boxes_overlap(a: list[int], b: list[int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _denotes(sentence: str, anns: list[dict[str, Any]], names: dict[int, str]) -> list[int]:
    """An interpreter independent of the generator: the annotation ids the sentence can mean."""
    words = sentence.split()
    assert words[0] == "the" and len(words) in (2, 3), sentence
    shape_of = {a["id"]: names[a["category_id"]] for a in anns}
    if len(words) == 2:  # "the circle"
        return [a["id"] for a in anns if shape_of[a["id"]] == words[1]]
    word, noun = words[1], words[2]
    if word in COLORS:  # "the red circle", "the red shape"
        return [a["id"] for a in anns if a["color"] == word and noun in ("shape", shape_of[a["id"]])]
    keys = {
        "leftmost": lambda a: a["bbox"][0] + a["bbox"][2] / 2,
        "rightmost": lambda a: -(a["bbox"][0] + a["bbox"][2] / 2),
        "topmost": lambda a: a["bbox"][1] + a["bbox"][3] / 2,
        "bottommost": lambda a: -(a["bbox"][1] + a["bbox"][3] / 2),
        "largest": lambda a: -a["area"],
        "smallest": lambda a: a["area"],
    }
    assert word in keys, sentence
    group = sorted((keys[word](a), a["id"]) for a in anns if noun in ("shape", shape_of[a["id"]]))
    assert len(group) >= 2, sentence  # a superlative needs something to beat
    return [group[0][1]] if group[0][0] < group[1][0] else [g[1] for g in group if g[0] == group[0][0]]


def test_referring_expressions_identify_exactly_one_object(tmp_path: Path) -> None:
    dataset = generate_synthetic(tmp_path, 40, seed=2, objects_per_image=(2, 6), allow_occlusion=True)
    instances = json.loads(dataset.instances_path.read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in instances["annotations"]:
        by_image[ann["image_id"]].append(ann)
    refs = load_refs(dataset.refs_path)  # the restricted unpickler reads what the generator wrote
    assert len(refs) == dataset.num_refs > 0
    kinds = set()
    for ref in refs:
        assert 1 <= len(ref["sentences"]) <= 2
        for entry in ref["sentences"]:
            assert _denotes(entry["sent"], by_image[ref["image_id"]], names) == [ref["ann_id"]], entry["sent"]
            kinds.add(entry["sent"].split()[1])
    assert {"leftmost", "largest"} & kinds and set(COLORS) & kinds  # relations and attributes both occur
    image_split = {image["id"]: image["split"] for image in instances["images"]}
    assert all(ref["split"] == image_split[ref["image_id"]] for ref in refs)


def test_output_converts_with_the_coco_and_refcoco_readers(tmp_path: Path) -> None:
    dataset = generate_synthetic(tmp_path, 15, seed=3, image_size=(200, 300), val_fraction=0.3)
    assert dataset.split_image_ids["val"] and dataset.split_image_ids["train"]
    ovd, ovd_summary = convert_coco(
        dataset.instances_path, dataset.images_dir, "val", image_ids=dataset.split_image_ids["val"], progress=False
    )
    assert len(ovd) == len(dataset.split_image_ids["val"]) and not ovd_summary.skipped
    rec, rec_summary = convert_refcoco(dataset.refs_path, dataset.instances_path, dataset.images_dir, "train",
                                       progress=False)
    train_refs = [r for r in load_refs(dataset.refs_path) if r["split"] == "train"]
    assert len(rec) == sum(len(r["sentences"]) for r in train_refs) and not rec_summary.skipped
    assert all(r.image_id in dataset.split_image_ids["train"] for r in rec)
    assert all(r.image_hw is not None and o.patches and o.rle for r in ovd + rec for o in r.objects)
