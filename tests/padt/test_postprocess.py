"""GroundingPostProcessor: decoder outputs -> grounded objects in original pixels, against hand-computed values."""

from __future__ import annotations

import numpy as np
import torch

from padt.decoders import DecoderOutput
from padt.postprocess import GroundingPostProcessor
from padt.vision.codec import VRTCodec
from padt.vision.geometry import ImageGeometry
from padt.vision.queries import DecodedObjects

# Two images of one sample: image 0 is 100 x 200 (merged grid 2 x 4), image 1 is 56 x 56 (2 x 2).
GEOMETRIES = [ImageGeometry((100, 200), (56, 112), 14, 2), ImageGeometry((56, 56), (56, 56), 14, 2)]
CODEC = VRTCodec(1000, ((2, 4), (2, 2)), (0, 0), num_samples=1)


def decoded(boxes, scores, mask_logits=None, mask_hw=None, object_image=(0, 0, 0), rows=None, counts=None):
    k = len(object_image)
    output = DecoderOutput(
        torch.tensor(boxes), torch.tensor(scores), mask_logits,
        torch.tensor(mask_hw) if mask_hw is not None else torch.zeros(k, 2, dtype=torch.long),
    )
    rows = torch.tensor(rows if rows is not None else list(range(k)))
    counts = torch.tensor(counts if counts is not None else [1] * k)
    return DecodedObjects(output, torch.tensor(object_image), rows, counts)


def test_boxes_are_scaled_to_the_original_image_and_clipped():
    boxes = [[0.5, 0.5, 0.2, 0.4], [0.05, 0.9, 0.2, 0.4], [0.25, 0.75, 0.0, 0.0]]
    objects = GroundingPostProcessor()(decoded(boxes, [0.0, 2.0, -2.0]), CODEC, GEOMETRIES, ["a", "b", "c"])
    expected = [(80.0, 30.0, 120.0, 70.0), (0.0, 70.0, 30.0, 100.0), (50.0, 75.0, 50.0, 75.0)]  # H 100, W 200
    for obj, box in zip(objects, expected, strict=True):
        assert np.allclose(obj.box, box, atol=1e-4)
    assert [o.label for o in objects] == ["a", "b", "c"]
    assert np.allclose([o.score for o in objects], [0.5, 1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))])
    assert all(o.mask is None for o in objects)


def test_each_object_is_placed_on_its_own_image():
    boxes = [[0.5, 0.5, 1.0, 1.0]] * 2
    objects = GroundingPostProcessor()(
        decoded(boxes, [0.0, 0.0], object_image=(1, 0), rows=[9, 10, 3], counts=[2, 1]), CODEC, GEOMETRIES, ["x", "y"]
    )
    assert objects[0].box == (0.0, 0.0, 56.0, 56.0) and objects[0].image_index == 1
    assert objects[0].patches == [1, 2]  # global rows 9, 10: patches 1, 2 of image 1 (8 cells before it)
    assert objects[1].box == (0.0, 0.0, 200.0, 100.0) and objects[1].image_index == 0 and objects[1].patches == [3]


def test_masks_crop_the_valid_corner_resize_and_threshold():
    logits = torch.full((1, 6, 6), 100.0)  # padding outside the valid 4 x 4 corner must not leak in
    logits[0, :4, :4] = torch.tensor([[1.0, 1.0, -1.0, -1.0]] * 4)
    geometries = [ImageGeometry((8, 8), (28, 28), 14, 2)]
    codec = VRTCodec(1000, ((1, 1),), (0,), num_samples=1)
    (obj,) = GroundingPostProcessor()(
        decoded([[0.5] * 4], [0.0], logits, [[4, 4]], (0,)), codec, geometries, ["m"]
    )
    # bilinear x2 (half-pixel centres): output col 3 samples input col 1.25 -> 0.75 - 0.25 = 0.5 > 0; col 4 -> -0.5
    expected = np.zeros((8, 8), dtype=bool)
    expected[:, :4] = True
    assert obj.mask.dtype == bool and np.array_equal(obj.mask, expected)
    # a non-uniform resize keeps the split in proportion
    (obj,) = GroundingPostProcessor()(
        decoded([[0.5] * 4], [0.0], logits, [[4, 4]], (0,)), codec, [ImageGeometry((3, 2), (28, 28), 14, 2)], ["m"]
    )
    assert np.array_equal(obj.mask, np.array([[True, False]] * 3))
    # logit exactly 0 counts as background
    (obj,) = GroundingPostProcessor()(
        decoded([[0.5] * 4], [0.0], torch.zeros(1, 4, 4), [[4, 4]], (0,)), codec, geometries, ["m"]
    )
    assert not obj.mask.any()
