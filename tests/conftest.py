"""Test-wide settings (never reach a hub, keep torch deterministic and small) and small fixture files in the real
formats (COCO instances JSON, PNG images), written per test into tmp_path, for the readers and ``padt convert``."""

import json
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

# One thread: the test models are tiny, and on a shared 2-core machine two OpenMP threads make their small
# matmuls many times slower (measured ~100x on a loaded machine).
torch.set_num_threads(1)


def write_png(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(path)


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (crowd annotations): run lengths of the column-major flattening, zeros first."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def square(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


@pytest.fixture
def coco_files(tmp_path: Path) -> dict[str, Any]:
    """A COCO instances file with one good image holding every kind of bad annotation, and bad images.

    Image 1 is 84 x 112 (H x W): its merged grid is 3 x 4 (28 px cells, no resize), so patch k = row * 4 + col.
    """
    images_dir = tmp_path / "images"
    write_png(images_dir / "a.png", 84, 112)
    write_png(images_dir / "wrong.png", 50, 50)
    write_png(images_dir / "empty.png", 56, 56)
    write_png(images_dir / "many.png", 56, 56)
    crowd = np.zeros((84, 112), dtype=np.uint8)
    crowd[56:84, 0:28] = 1  # cell (2, 0) -> patch 8
    annotations = [
        # person: cells (0,1) and (1,1) -> patches [1, 5]
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [28, 0, 28, 56], "area": 1568.0,
         "segmentation": [square(28, 0, 56, 56)], "iscrowd": 0},
        # dog without segmentation: box mask of cell (1, 2) -> patch 6
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [56, 28, 28, 28], "area": 784.0, "iscrowd": 0},
        # person whose box leaves the image: clipped to x 100..112, y 70..84 -> cell (2, 3) -> patch 11
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [100, 70, 30, 30], "area": 900.0, "iscrowd": 0},
        # dog with only a degenerate polygon (4 numbers would be misread as a box by pycocotools)
        {"id": 13, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 100.0,
         "segmentation": [[1, 2, 3, 4]], "iscrowd": 0},
        # person with a 2 x 2 px mask: below the 1/28 threshold -> no patch
        {"id": 14, "image_id": 1, "category_id": 1, "bbox": [2, 2, 2, 2], "area": 4.0,
         "segmentation": [square(2, 2, 4, 4)], "iscrowd": 0},
        # dog with one degenerate and one good part (cell (0, 3) -> patch 3)
        {"id": 15, "image_id": 1, "category_id": 2, "bbox": [84, 0, 28, 28], "area": 784.0,
         "segmentation": [[5, 5, 6, 6], square(84, 0, 112, 28)], "iscrowd": 0},
        # unknown category
        {"id": 16, "image_id": 1, "category_id": 99, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0},
        # crowd of persons as uncompressed RLE -> patch 8, kept with iscrowd=1
        {"id": 17, "image_id": 1, "category_id": 1, "bbox": [0, 56, 28, 28], "area": 784.0,
         "segmentation": uncompressed_rle(crowd), "iscrowd": 1},
        # box entirely outside the image
        {"id": 18, "image_id": 1, "category_id": 2, "bbox": [200, 200, 10, 10], "area": 100.0, "iscrowd": 0},
        # compressed RLE of another size
        {"id": 19, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0,
         "segmentation": {"size": [10, 10], "counts": "0"}},
        # annotation on an image that does not exist
        {"id": 20, "image_id": 999, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0},
    ]
    next_id = 100
    for _ in range(51):  # 51 dogs in many.png: over the 50-instance limit
        annotations.append({"id": next_id, "image_id": 6, "category_id": 2, "bbox": [0, 0, 28, 28],
                            "area": 784.0, "iscrowd": 0})
        next_id += 1
    annotations.append({"id": next_id, "image_id": 6, "category_id": 1, "bbox": [28, 28, 28, 28],
                        "area": 784.0, "iscrowd": 0})
    instances = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 84, "width": 112},
            {"id": 2, "file_name": "missing.png", "height": 56, "width": 56},
            {"id": 3, "file_name": "wrong.png", "height": 60, "width": 60},
            {"id": 4, "file_name": "big.png", "height": 1300, "width": 100},
            {"id": 5, "file_name": "empty.png", "height": 56, "width": 56},
            {"id": 6, "file_name": "many.png", "height": 56, "width": 56},
        ],
        "annotations": annotations,
        "categories": [
            {"id": 1, "name": "person", "supercategory": "x"},
            {"id": 2, "name": "dog", "supercategory": "x"},
            {"id": 3, "name": "cat", "supercategory": "x"},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    return {"instances": path, "images": images_dir, "data": instances, "root": tmp_path}
