"""Tiny synthetic COCO ground truth and detections shared by the COCO and distributed metric tests.

Also loaded by path from the subprocess in test_distributed.py, so it must not depend on pytest fixtures only.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

IMAGES = [{"id": 1, "width": 40, "height": 30}, {"id": 2, "width": 50, "height": 40}]
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
# (image_id, category_id, [x, y, w, h]) in pixels; every object is a filled rectangle, so mask area = w * h.
OBJECTS = [
    (1, 1, [2, 3, 10, 8]),
    (1, 2, [20, 5, 12, 15]),
    (2, 1, [5, 5, 20, 20]),
    (2, 2, [30, 10, 8, 8]),
    (2, 1, [0, 25, 10, 10]),
]


def rect_rle(image_id: int, xywh: list[float]) -> dict[str, Any]:
    """RLE (counts as str, as in a COCO json) of a filled rectangle in the given image."""
    img = next(i for i in IMAGES if i["id"] == image_id)
    m = np.zeros((img["height"], img["width"]), dtype=np.uint8)
    x, y, w, h = (round(v) for v in xywh)
    m[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def make_coco_gt() -> dict[str, Any]:
    anns = [
        {
            "id": k + 1,
            "image_id": img,
            "category_id": cat,
            "bbox": list(map(float, box)),
            "area": float(box[2] * box[3]),
            "iscrowd": 0,
            "segmentation": rect_rle(img, box),
        }
        for k, (img, cat, box) in enumerate(OBJECTS)
    ]
    return {"images": copy.deepcopy(IMAGES), "categories": copy.deepcopy(CATEGORIES), "annotations": anns}


def make_perfect_detections() -> list[dict[str, Any]]:
    return [
        {
            "image_id": img,
            "category_id": cat,
            "bbox": list(map(float, box)),
            "score": 0.9 - 0.1 * k,
            "segmentation": rect_rle(img, box),
        }
        for k, (img, cat, box) in enumerate(OBJECTS)
    ]


def make_noisy_detections() -> list[dict[str, Any]]:
    """Shifted boxes, a false positive, a wrong class, a missed object; distinct scores (no sort ties)."""
    raw = [
        (1, 1, [3, 3, 10, 8], 0.95),  # IoU 72/88 = .82 with GT cat: hit up to 0.8, miss from 0.85
        (1, 2, [20, 5, 12, 15], 0.40),  # exact
        (1, 2, [0, 0, 6, 6], 0.90),  # false positive ranked above the true dog
        (2, 1, [8, 8, 20, 20], 0.70),  # IoU 289/511: hit only at 0.5 and 0.55
        (2, 1, [30, 10, 8, 8], 0.60),  # wrong class on the dog
        (2, 2, [31, 11, 8, 8], 0.80),  # IoU 49/79
        # GT cat [0, 25, 10, 10] in image 2 is missed.
    ]
    return [
        {
            "image_id": img,
            "category_id": cat,
            "bbox": [float(v) for v in box],
            "score": score,
            "segmentation": rect_rle(img, box),
        }
        for img, cat, box, score in raw
    ]


@pytest.fixture
def coco_gt() -> dict[str, Any]:
    return make_coco_gt()


@pytest.fixture
def perfect_detections() -> list[dict[str, Any]]:
    return make_perfect_detections()


@pytest.fixture
def noisy_detections() -> list[dict[str, Any]]:
    return make_noisy_detections()
