"""GroundedOutput adapters (COCO, dict/JSON, supervision), against hand-computed values."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from padt.results import GroundedObject, GroundedOutput

H, W = 6, 8


def box_mask(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


@pytest.fixture
def output() -> GroundedOutput:
    objects = [
        GroundedObject("Person", [0, 1], (1.0, 2.0, 5.0, 6.0), 0.9, box_mask(1, 2, 5, 6)),
        GroundedObject("dog", [7], (0.5, 0.0, 2.5, 1.5), 0.25, box_mask(0, 0, 3, 2)),
        GroundedObject("unicorn", [3, 3], (0.0, 0.0, 8.0, 6.0), 0.5, box_mask(0, 0, 8, 6)),
    ]
    return GroundedOutput('There are 1 "Person" ...', objects, ["a problem"], [(H, W)])


# ---- COCO -------------------------------------------------------------------------------------------------
def test_to_coco_maps_categories_and_writes_xywh(output):
    results = output.to_coco(42, {"person": 1, "dog": 18})
    assert [r["category_id"] for r in results] == [1, 18]  # "unicorn" is no category: dropped
    first, second = results
    assert first["image_id"] == 42 and first["bbox"] == [1.0, 2.0, 4.0, 4.0] and first["score"] == 0.9
    assert second["bbox"] == [0.5, 0.0, 2.0, 1.5] and second["score"] == 0.25
    # a list means ids 1..n in order; labels compare case-insensitively
    by_list = output.to_coco(7, ["cat", "DOG", "person"])
    assert [(r["category_id"], r["image_id"]) for r in by_list] == [(3, 7), (2, 7)]
    # without categories every object is kept, with id 1
    assert [r["category_id"] for r in output.to_coco(1)] == [1, 1, 1]


def test_to_coco_rle_decodes_back_to_the_mask(output):
    results = output.to_coco(1, include_masks=True)
    for obj, entry in zip(output.objects, results, strict=True):
        rle = entry["segmentation"]
        assert rle["size"] == [H, W] and isinstance(rle["counts"], str)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        assert decoded.shape == (H, W) and np.array_equal(decoded.astype(bool), obj.mask)
        assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == obj.mask.sum()
    assert all("segmentation" not in r for r in output.to_coco(1, include_masks=False))


def test_to_coco_and_to_dict_are_json_serialisable_even_from_numpy_values():
    box = tuple(np.array([1, 2, 3, 4], dtype=np.float32))
    obj = GroundedObject("cat", [1], box, np.float32(0.5), box_mask(1, 2, 3, 4))
    out = GroundedOutput("x", [obj], [], [(H, W)])
    coco = json.loads(json.dumps(out.to_coco(3, ("cat",))))
    assert coco[0]["bbox"] == [1.0, 2.0, 2.0, 2.0] and coco[0]["category_id"] == 1
    as_dict = json.loads(json.dumps(out.to_dict(include_masks=True)))
    assert as_dict["objects"][0]["box"] == [1.0, 2.0, 3.0, 4.0]
    rle = as_dict["objects"][0]["mask_rle"]
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), obj.mask)


def test_to_dict_content(output):
    data = json.loads(json.dumps(output.to_dict()))
    assert data["text"] == output.text and data["problems"] == ["a problem"] and data["image_sizes"] == [[H, W]]
    assert [o["label"] for o in data["objects"]] == ["Person", "dog", "unicorn"]
    expected = {"label": "unicorn", "patches": [3, 3], "box": [0.0, 0.0, 8.0, 6.0], "score": 0.5, "image_index": 0}
    assert data["objects"][2] == expected
    assert all("mask_rle" not in o for o in data["objects"])
    assert len(output) == 3


# ---- supervision ------------------------------------------------------------------------------------------
def test_to_supervision(output):
    sv = pytest.importorskip("supervision")
    detections = output.to_supervision()
    assert isinstance(detections, sv.Detections) and len(detections) == 3
    assert np.allclose(detections.xyxy, [o.box for o in output.objects])
    assert np.allclose(detections.confidence, [0.9, 0.25, 0.5])
    assert detections.mask.shape == (3, H, W) and np.array_equal(detections.mask[0], output.objects[0].mask)
    assert list(detections.data["class_name"]) == ["Person", "dog", "unicorn"]
    assert detections.class_id.tolist() == [0, 0, 0]  # without categories: one class


def test_to_supervision_class_ids_come_from_the_categories_and_do_not_depend_on_the_image(output):
    pytest.importorskip("supervision")
    categories = ["dog", "person"]
    detections = output.to_supervision(categories)
    assert detections.class_id.tolist() == [1, 0]  # "Person" -> 1, "dog" -> 0; "unicorn" is no category: dropped
    assert list(detections.data["class_name"]) == ["Person", "dog"] and len(detections.xyxy) == 2
    # another image with only a dog: the dog keeps its id
    only_dog = GroundedOutput("", [output.objects[1]], [], [(H, W)])
    assert only_dog.to_supervision(categories).class_id.tolist() == [0]
    assert output.to_supervision({"person": 7}).class_id.tolist() == [7]


def test_to_supervision_without_the_package_says_how_to_install(output, monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # makes `import supervision` fail
    with pytest.raises(ImportError, match=r"needs the supervision package: pip install 'padt\[demo\]'"):
        output.to_supervision()


def test_from_dict_reads_back_what_to_dict_writes(output):
    from padt.vision.geometry import GridSpec

    output.geometries = [GridSpec().geometry(H, W)]
    for include_masks in (False, True):
        data = json.loads(json.dumps(output.to_dict(include_masks=include_masks)))
        back = GroundedOutput.from_dict(data)
        assert back.text == output.text and back.problems == output.problems
        assert back.image_sizes == output.image_sizes and back.geometries == output.geometries
        for got, want in zip(back.objects, output.objects, strict=True):
            assert (got.label, got.patches, got.box, got.score, got.image_index) == (
                want.label, want.patches, want.box, want.score, want.image_index
            )
            assert (got.mask is None) if not include_masks else np.array_equal(got.mask, want.mask)
