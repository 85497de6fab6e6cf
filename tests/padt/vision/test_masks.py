"""Masks, COCO RLE, polygons and boxes (padt.vision.masks) against hand-made masks and hand-computed areas."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from padt.vision.masks import (
    box_to_mask,
    box_to_rle,
    compressed_rle,
    mask_to_box,
    mask_to_rle,
    polygons_to_rle,
    rle_to_mask,
    segmentation_to_rle,
)


def _area(rle: dict) -> int:
    return int(mask_utils.area(compressed_rle(rle)))


def test_random_masks_survive_mask_rle_mask() -> None:
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (7, 13), (30, 40)]:
        mask = (rng.random((height, width)) < 0.3).astype(np.uint8)
        rle = mask_to_rle(mask)
        assert rle["size"] == [height, width]
        decoded = rle_to_mask(rle)
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, mask)
        assert _area(rle) == mask.sum()


def test_any_non_zero_value_is_foreground() -> None:
    # bool masks (model output), uint8 0/255 (images) and label values all encode the same region
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:7] = True
    expected = mask_to_rle(mask)
    assert mask_to_rle(mask.astype(np.uint8) * 255) == expected
    assert mask_to_rle(mask.astype(np.int32) * 7) == expected
    assert mask_to_rle(mask.astype(np.float32) * 0.5) == expected
    assert _area(expected) == 15


def test_empty_mask_has_an_rle_of_area_zero() -> None:
    rle = mask_to_rle(np.zeros((3, 5), dtype=bool))
    assert rle["size"] == [3, 5] and _area(rle) == 0
    assert not rle_to_mask(rle).any()


def test_rle_is_json_ready_and_survives_json() -> None:
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:5, 3:9] = 1
    polygon = [3, 2, 9, 2, 9, 5, 3, 5]
    for rle in (mask_to_rle(mask), box_to_rle((3, 2, 9, 5), 10, 12), polygons_to_rle([polygon], 10, 12)):
        assert isinstance(rle["counts"], str) and all(type(v) is int for v in rle["size"])
        assert np.array_equal(rle_to_mask(json.loads(json.dumps(rle))), mask)


def test_rectangle_polygon_covers_its_hand_computed_area() -> None:
    # corners (2, 3) and (12, 8) in continuous pixel coordinates: 10 x 5 pixels, columns 2..11, rows 3..7
    rle = polygons_to_rle([[2, 3, 12, 3, 12, 8, 2, 8]], 20, 20)
    assert _area(rle) == 50
    expected = np.zeros((20, 20), dtype=np.uint8)
    expected[3:8, 2:12] = 1
    assert np.array_equal(rle_to_mask(rle), expected)
    assert mask_to_box(rle_to_mask(rle)) == (2, 3, 12, 8)


def test_rle_round_trip_and_helpers() -> None:
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:10, 7:20] = 1
    rle = mask_to_rle(mask)
    assert rle["size"] == [30, 40] and isinstance(rle["counts"], str)
    assert np.array_equal(rle_to_mask(rle), mask)
    assert np.array_equal(rle_to_mask(box_to_rle((7, 5, 20, 10), 30, 40)), mask)
    # edges round to whole pixels and clip to the image
    assert np.array_equal(box_to_mask((-5.2, 5, 20.4, 10), 30, 40), box_to_mask((0, 5, 20, 10), 30, 40))
    union = rle_to_mask(polygons_to_rle([[0, 0, 10, 0, 10, 10, 0, 10], [20, 20, 30, 20, 30, 30, 20, 30]], 40, 40))
    assert union[5, 5] == 1 and union[25, 25] == 1 and union[15, 15] == 0
    with pytest.raises(ValueError, match="degenerate"):
        polygons_to_rle([[0, 0, 10, 10]], 40, 40)


def test_box_to_mask_to_rle_by_hand() -> None:
    mask = box_to_mask((1.4, 2.6, 5.5, 4.0), 6, 8)  # rounds to columns 1..5 (x2 = 6), rows 3..3 (y2 = 4)
    expected = np.zeros((6, 8), dtype=np.uint8)
    expected[3:4, 1:6] = 1
    assert np.array_equal(mask, expected)
    rle = box_to_rle((1.4, 2.6, 5.5, 4.0), 6, 8)
    assert rle == mask_to_rle(expected) and _area(rle) == 5
    assert not box_to_mask((9, 7, 12, 9), 6, 8).any()  # entirely outside the image
    assert not box_to_mask((5, 4, 2, 1), 6, 8).any()  # inverted


def test_mask_to_box_is_the_tight_continuous_box() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2, 3] = mask[6, 9] = True
    assert mask_to_box(mask) == (3, 2, 10, 7)
    assert box_to_mask(mask_to_box(mask), 10, 12)[mask].all()  # the box covers every foreground pixel
    assert mask_to_box(np.zeros((4, 4), dtype=np.uint8)) is None


def test_segmentation_to_rle_accepts_every_coco_shape() -> None:
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:6, 3:9] = 1
    compressed = mask_to_rle(mask)
    assert segmentation_to_rle(compressed, 20, 20) == (compressed, 0)
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))  # run boundaries (2 closes the last)
    uncompressed = {"size": [20, 20], "counts": np.diff(np.concatenate([[0], changes])).tolist()}
    rle, dropped = segmentation_to_rle(uncompressed, 20, 20)
    assert dropped == 0 and np.array_equal(rle_to_mask(rle), mask)
    assert rle == compressed  # the uncompressed form comes back compressed, counts as str
    rle, dropped = segmentation_to_rle([[1, 1, 2, 2], [3, 2, 9, 2, 9, 6, 3, 6]], 20, 20)
    assert dropped == 1 and rle_to_mask(rle)[4, 5] == 1
    assert segmentation_to_rle([[1, 2, 3, 4]], 20, 20) == (None, 1)
    with pytest.raises(ValueError, match="differs"):
        segmentation_to_rle(mask_to_rle(np.zeros((5, 5), dtype=np.uint8)), 20, 20)


def test_compressed_rle_accepts_str_bytes_and_lists_and_refuses_the_rest() -> None:
    rle = mask_to_rle(np.eye(4, dtype=np.uint8))
    as_bytes = compressed_rle(rle)
    assert as_bytes == {"size": [4, 4], "counts": rle["counts"].encode("ascii")}
    assert compressed_rle(as_bytes) == as_bytes
    assert np.array_equal(rle_to_mask({"size": [2, 2], "counts": [1, 2, 1]}), [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="sum to 3"):
        compressed_rle({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="size"):
        compressed_rle({"size": [4], "counts": rle["counts"]})
    with pytest.raises(ValueError, match="counts must be"):
        compressed_rle({"size": [4, 4], "counts": 17})
