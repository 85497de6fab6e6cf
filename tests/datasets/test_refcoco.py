"""RefCOCO refs: the restricted unpickler, REC conversion with the strict threshold, and the leakage guard."""

from __future__ import annotations

import collections
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from padt.datasets.coco import convert_coco
from padt.datasets.refcoco import (
    convert_refcoco,
    convert_vlm_r1_split,
    drop_overlap,
    find_overlap,
    load_refs,
    read_vlm_r1_split,
    split_matches,
)
from padt.text.prompts import rec_answer_template, rec_prompt
from padt.vision.masks import mask_to_rle


def sentence(text: str, sent_id: int) -> dict[str, Any]:
    return {"sent": text, "raw": text, "tokens": text.split(), "sent_id": sent_id}


@pytest.fixture
def refcoco_files(coco_files: dict[str, Any]) -> dict[str, Any]:
    data = coco_files["data"]
    thin = np.zeros((84, 112), dtype=np.uint8)
    thin[28, 0:28] = 1  # exactly 1/28 of cell (1, 0): selected by ">=", not by the strict ">"
    data["annotations"].append({"id": 30, "image_id": 1, "category_id": 1, "bbox": [0, 28, 28, 1],
                                "area": 28.0, "segmentation": mask_to_rle(thin), "iscrowd": 0})
    coco_files["instances"].write_text(json.dumps(data))
    refs = [
        {"ref_id": 1, "ann_id": 10, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [sentence("The MAN  on the Left", 1), sentence('man "in" red', 2)]},
        {"ref_id": 2, "ann_id": 99, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [sentence("ghost", 3)]},
        {"ref_id": 3, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 2,
         "sentences": [sentence("dog", 4)]},
        {"ref_id": 4, "ann_id": 10, "image_id": 2, "split": "train", "category_id": 1,
         "sentences": [sentence("lost", 5)]},
        {"ref_id": 5, "ann_id": 30, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [sentence("thin line", 6)]},
        {"ref_id": 6, "ann_id": 15, "image_id": 1, "split": "testA", "category_id": 2,
         "sentences": [sentence("  ", 7), sentence("right dog", 8)]},
        {"ref_id": 7, "image_id": 1, "split": "train", "sentences": []},
    ]
    path = coco_files["root"] / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    return {**coco_files, "refs": path, "ref_list": refs}


def test_load_refs_reads_plain_pickles(refcoco_files: dict[str, Any]) -> None:
    assert load_refs(refcoco_files["refs"]) == refcoco_files["ref_list"]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "payload": _Evil(marker)}]))
    with pytest.raises(ValueError) as raised:
        load_refs(path)
    assert str(path) in str(raised.value)
    assert f"{os.system.__module__}.system" in str(raised.value)  # posix.system on Linux
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        ([collections.OrderedDict(a=1)], "refused to load global collections.OrderedDict"),
        ([{1, 2}], "refused value of type set"),  # protocol 4 builds sets without a global
        ([b"raw"], "refused value of type bytes"),
        ({"not": "a list"}, "expected a list of ref dicts"),
    ],
)
def test_restricted_unpickler_refuses_non_plain_data(tmp_path: Path, payload: Any, refused: str) -> None:
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(ValueError, match=refused):
        load_refs(path)


def test_unreadable_pickle(tmp_path: Path) -> None:
    path = tmp_path / "refs.p"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable refs pickle"):
        load_refs(path)


def test_split_matching_follows_the_refer_api() -> None:
    assert split_matches("train", "train") and not split_matches("train", "val")
    assert split_matches("test", "testA") and split_matches("test", "test")
    assert split_matches("testA", "testA") and split_matches("testA", "testAB") and not split_matches("testA", "testB")
    assert split_matches(None, "anything")


def test_convert_train_split(refcoco_files: dict[str, Any]) -> None:
    records, summary = convert_refcoco(
        refcoco_files["refs"], refcoco_files["instances"], refcoco_files["images"], "train", progress=False
    )
    assert [r.id for r in records] == ["refcoco-1-1", "refcoco-1-2"]
    first, second = records
    assert first.task == "rec" and first.image == "a.png" and first.image_id == 1
    assert first.prompt == rec_prompt("the man on the left")
    assert first.answer_template == 'The "the man on the left" refers to <|Obj_0|> in this image.'
    assert first.objects[0].label == "the man on the left" and first.objects[0].patches == [1, 5]
    assert first.objects[0].bbox == pytest.approx([0.25, 0.0, 0.5, 2 / 3])
    assert second.answer_template == rec_answer_template("man 'in' red")
    assert dict(summary.skipped) == {"ann_missing": 1, "image_missing": 1, "no_patch": 1, "bad_ref": 1}
    assert dict(summary.fixed) == {"quote_replaced": 1}
    assert summary.records == 2 and summary.images == 2


def test_strict_threshold_is_a_choice(refcoco_files: dict[str, Any]) -> None:
    records, _ = convert_refcoco(
        refcoco_files["ref_list"], refcoco_files["instances"], None, "train", strict=False, progress=False
    )
    thin = [r for r in records if r.objects[0].label == "thin line"]
    assert thin and thin[0].objects[0].patches == [4]


def test_test_split_counts_empty_sentences(refcoco_files: dict[str, Any]) -> None:
    records, summary = convert_refcoco(
        refcoco_files["refs"], refcoco_files["instances"], refcoco_files["images"], "test", progress=False
    )
    assert [r.objects[0].label for r in records] == ["right dog"]
    assert summary.skipped["empty_sentence"] == 1


def test_leakage_guard(refcoco_files: dict[str, Any]) -> None:
    rec_val, _ = convert_refcoco(
        refcoco_files["refs"], refcoco_files["instances"], refcoco_files["images"], "val", progress=False
    )
    coco_train, _ = convert_coco(refcoco_files["instances"], refcoco_files["images"], "train", progress=False)
    overlap = find_overlap(coco_train, rec_val)
    assert overlap and overlap.image_ids == {1} and overlap.files == {"a.png"}
    kept, dropped = drop_overlap(coco_train, overlap)
    assert dropped == 1 and all(r.image_id != 1 for r in kept)
    assert not find_overlap(kept, rec_val)
    records, summary = convert_refcoco(
        refcoco_files["refs"], refcoco_files["instances"], None, "val", exclude_image_ids={1}, progress=False
    )
    assert records == [] and summary.skipped["image_overlap"] == 1


# ---- VLM-R1's rec_jsons_processed split files ----------------------------------------------------------------------
def vlm_r1_item(image_id: int, caption: str, solution: list[float] | None = None, folder: str = "") -> dict[str, Any]:
    """An item as VLM-R1's files hold it (the fields padt does not read included)."""
    item = {"image": f"{folder}COCO_train2014_{image_id:012d}.jpg", "normal_caption": caption,
            "problem": f"Please provide the bounding box coordinate of the region this sentence describes: {caption}.",
            "normalized_solution": [0, 0, 0, 0]}
    if solution is not None:
        item["solution"] = solution
    return item


def test_vlm_r1_split_file_gives_one_record_per_item(refcoco_files: dict[str, Any]) -> None:
    refs = [*refcoco_files["ref_list"],  # a second ref with ref 1's first sentence: the dog in cell (0, 3)
            {"ref_id": 8, "ann_id": 15, "image_id": 1, "split": "train", "category_id": 2,
             "sentences": [sentence("the man on the left", 9)]}]
    items = [
        vlm_r1_item(1, "the man on the left", [84, 0, 112, 28]),  # closest to ref 8's box
        vlm_r1_item(1, "the man on the left", [28, 0, 56, 56], folder="train2014/"),  # ref 1's
        vlm_r1_item(1, "thin line"),  # ref 5: its mask selects no cell
        vlm_r1_item(2, "lost"),  # ref 4: its image is missing
        vlm_r1_item(1, "a unicorn"),  # no such sentence
        vlm_r1_item(1, "The man on the  left"),  # no solution: the later ref, listed a second time
        vlm_r1_item(1, 'man "in" red'),
    ]
    split_file = refcoco_files["root"] / "refcoco_train.json"
    split_file.write_text(json.dumps(items))
    records, summary = convert_vlm_r1_split(
        split_file, refs, refcoco_files["instances"], refcoco_files["images"], "train", progress=False
    )
    assert [r.id for r in records] == ["refcoco-8-9", "refcoco-1-1", "refcoco-8-9-2", "refcoco-1-2"]
    assert [r.objects[0].patches for r in records] == [[3], [1, 5], [3], [1, 5]]
    assert records[3].prompt == rec_prompt("man 'in' red") and records[0].image == "a.png"
    assert summary.skipped["vlm_r1_ref_skipped"] == 2 and summary.skipped["vlm_r1_unmatched"] == 1
    assert summary.records == summary.objects == 4
    assert "7 VLM-R1 items, 4 records" in summary.notes[-1] and "x 4/7" in summary.notes[-1]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"image": "a.png", "normal_caption": "x"}, "item 0: field 'image': expected a COCO file name ending in _"),
        ({"image": "COCO_train2014_000000000001.jpg"}, "item 0: field 'normal_caption'"),
        ({"image": "COCO_train2014_1.jpg", "normal_caption": "x", "solution": [1, 2]}, "item 0: field 'solution'"),
        ("COCO_train2014_1.jpg", "item 0: expected an object, got str"),
    ],
)
def test_vlm_r1_split_file_errors_name_the_item_and_field(tmp_path: Path, item: Any, message: str) -> None:
    path = tmp_path / "refcoco_val.json"
    path.write_text(json.dumps([item]))
    with pytest.raises(ValueError, match=message):
        read_vlm_r1_split(path)
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="expected a JSON list of items"):
        read_vlm_r1_split(path)
