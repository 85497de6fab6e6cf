"""COCO -> OVD records: answer forms, prompt rules and per-reason counts of every bad annotation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from padt.datasets.coco import convert_coco
from padt.datasets.records import GridSpec, read_jsonl, write_jsonl
from padt.text.prompts import NO_OBJECTS_ANSWER, ovd_prompt


def test_val_conversion_counts_every_bad_annotation(coco_files: dict[str, Any]) -> None:
    records, summary = convert_coco(coco_files["instances"], coco_files["images"], "val", progress=False)
    by_id = {r.image_id: r for r in records}
    assert sorted(by_id) == [1, 5, 6]
    assert summary.images == 6 and summary.records == 3 and summary.objects == 6
    assert dict(summary.skipped) == {
        "image_missing": 1,
        "image_size_mismatch": 1,
        "image_too_large": 1,
        "bad_annotation": 1,  # unknown category
        "unknown_image": 1,  # annotation on image 999
        "degenerate_segmentation": 1,
        "no_patch": 1,
        "degenerate_box": 1,
        "bad_segmentation": 1,
        "category_over_limit": 51,
    }
    assert dict(summary.fixed) == {"box_clipped": 1, "degenerate_polygon_dropped": 1}
    table = summary.table()
    assert "category_over_limit" in table and "51" in table

    main = by_id[1]
    assert main.prompt == ovd_prompt(["person", "dog", "cat"])  # fixed order: ascending category id
    assert main.answer_template == (
        'In this image, there are 3 "person" (<|Obj_0|>, <|Obj_1|>, <|Obj_2|>), 2 "dog" (<|Obj_3|>, <|Obj_4|>).'
    )
    assert [o.patches for o in main.objects] == [[1, 5], [11], [8], [6], [3]]
    assert [o.iscrowd for o in main.objects] == [0, 0, 1, 0, 0]  # the crowd is kept, flagged
    assert main.objects[0].bbox == pytest.approx([0.25, 0.0, 0.5, 2 / 3])
    assert main.objects[1].bbox == pytest.approx([100 / 112, 70 / 84, 1.0, 1.0])  # clipped
    assert main.objects[1].rle is None and main.objects[0].rle["size"] == [84, 112]  # box fallback has no rle
    assert main.image_hw == (84, 112) and main.grid == GridSpec()
    assert by_id[5].answer_template == NO_OBJECTS_ANSWER and by_id[5].objects == []
    assert by_id[6].prompt == ovd_prompt(["person", "cat"])  # 51 dogs: removed from prompt and answer
    assert by_id[6].answer_template == 'There is 1 "person" (<|Obj_0|>) in this image.'


def test_records_survive_the_jsonl_round_trip(coco_files: dict[str, Any]) -> None:
    records, _ = convert_coco(coco_files["instances"], coco_files["images"], "val", progress=False)
    path = coco_files["root"] / "ovd.jsonl"
    write_jsonl(path, records)
    assert read_jsonl(path) == records


def test_train_shuffles_per_image_and_drops_only_negatives(coco_files: dict[str, Any]) -> None:
    data = coco_files["data"]
    # 20 categories, only "person" and "dog" present: dropping removes negatives only
    data["categories"] += [{"id": 10 + i, "name": f"thing{i}", "supercategory": "x"} for i in range(17)]
    (coco_files["root"] / "instances.json").write_text(json.dumps(data))
    prompts = []
    for seed in range(12):
        records, _ = convert_coco(
            coco_files["instances"], coco_files["images"], "train", seed, progress=False, image_ids=[1]
        )
        again, _ = convert_coco(
            coco_files["instances"], coco_files["images"], "train", seed, progress=False, image_ids=[1]
        )
        assert records == again  # deterministic per seed
        (record,) = records
        listed = json.loads(record.prompt.split("objects: ", 1)[1][:-1])
        assert "person" in listed and "dog" in listed
        # no drop, or the 10 head categories minus those present (person, dog) leave the prompt
        assert len(listed) == 20 or 10 <= len(listed) <= 12
        labels = [o.label for o in record.objects]
        # answer categories follow the prompt order
        assert labels == sorted(labels, key=lambda name: listed.index(name))
        prompts.append(tuple(listed))
    assert len(set(prompts)) > 1  # shuffled
    assert {len(p) for p in prompts} & {20} and {len(p) for p in prompts} - {20}  # some dropped, some not


def test_options_crowd_exclusion_max_side_and_image_filter(coco_files: dict[str, Any]) -> None:
    records, summary = convert_coco(
        coco_files["instances"], coco_files["images"], "val", include_crowd=False, max_side=None,
        image_ids=[1, 4], exclude_image_ids=[4], progress=False,
    )
    assert [r.image_id for r in records] == [1]
    assert summary.skipped["crowd_excluded"] == 1 and summary.skipped["image_overlap"] == 1
    assert all(o.iscrowd == 0 for o in records[0].objects)
    with pytest.raises(ValueError, match="split"):
        convert_coco(coco_files["instances"], None, "test")


def test_without_images_dir_nothing_is_opened(coco_files: dict[str, Any]) -> None:
    records, summary = convert_coco(coco_files["instances"], None, "val", progress=False)
    assert "image_missing" not in summary.skipped and len(records) == 5  # only the too-large image is skipped


@pytest.mark.parametrize("file_name", ["../../etc/passwd", "/etc/hostname", "a/../../outside.png"])
def test_file_names_that_leave_the_images_folder_are_refused(coco_files: dict[str, Any], tmp_path, file_name) -> None:
    data = json.loads(open(coco_files["instances"]).read())
    data["images"][0]["file_name"] = file_name
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps(data))
    records, summary = convert_coco(crafted, coco_files["images"], "val", progress=False)
    assert summary.skipped["image_outside_root"] == 1
    assert all(r.image != file_name for r in records)
    assert "image_outside_root" in summary.table()
