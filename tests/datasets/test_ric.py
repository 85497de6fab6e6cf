"""RIC captions: tag repair, placeholder numbering, removal of tags without an object, both file layouts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from padt.datasets.records import GroundingObject
from padt.datasets.ric import convert_ric, parse_caption
from padt.datasets.summary import ConversionSummary
from padt.text.prompts import ric_prompt

KNOWN = {5, 34, 405710, 714044, 2016798, 1057221}
NO_PATCH = {12}


def parse(caption: str) -> tuple[tuple[str, list[int]] | None, ConversionSummary]:
    summary = ConversionSummary("test")

    def resolve(ann_id: int) -> GroundingObject | None:
        if ann_id in NO_PATCH:
            summary.skip("no_patch")
            return None
        if ann_id not in KNOWN:
            summary.skip("tag_unknown_ann")
            return None
        return GroundingObject([ann_id % 97], [0.0, 0.0, 1.0, 1.0])

    parsed = parse_caption(caption, KNOWN | NO_PATCH, resolve, summary)
    if parsed is None:
        return None, summary
    return (parsed[0], [obj.patches[0] for obj in parsed[1]]), summary


@pytest.mark.parametrize(
    ("caption", "template", "ann_ids", "repaired"),
    [
        ("A man (<box_id: 5/>) walks.", "A man (<|Obj_0|>) walks.", [5], 0),
        ("A man (<box_id:5>) walks.", "A man (<|Obj_0|>) walks.", [5], 0),
        ("A man (<box_id: person_ann_id/2016798>) walks.", "A man (<|Obj_0|>) walks.", [2016798], 1),
        ("Cats (<box_id: 405710/, 714044/>).", "Cats (<|Obj_0|>, <|Obj_1|>).", [405710, 714044], 1),
        ("Cats (<box_id: 1057221,34>).", "Cats (<|Obj_0|>, <|Obj_1|>).", [1057221, 34], 1),
        ("A bag (<box_id: 405710/) lies here.", "A bag (<|Obj_0|>) lies here.", [405710], 1),
        ("A bag <box_id: 405710/ lies on it.", "A bag <|Obj_0|> lies on it.", [405710], 1),
        ("People (405710, 714044) eat (2 apples).", "People (<|Obj_0|>, <|Obj_1|>) eat (2 apples).",
         [405710, 714044], 1),
        ("A tree (<box_id: id 405710/>) grows.", "A tree (<|Obj_0|>) grows.", [405710], 1),
    ],
)
def test_tag_shapes_are_repaired(caption: str, template: str, ann_ids: list[int], repaired: int) -> None:
    parsed, summary = parse(caption)
    assert parsed == (template, [i % 97 for i in ann_ids])
    assert summary.fixed["tag_repaired"] == repaired


def test_tags_without_object_are_removed_with_their_brackets() -> None:
    parsed, summary = parse(
        "Dogs (<box_id: 12/>, <box_id: 34/>) and a cat (<box_id: 99/>), a hat (red, <box_id: 12/>), "
        "a man <box_id: 5/> and (<box_id: 12/>, <box_id: 5/>)."
    )
    assert parsed is not None
    assert parsed[0] == "Dogs (<|Obj_0|>) and a cat, a hat (red), a man <|Obj_1|> and (<|Obj_2|>)."
    assert summary.skipped == {"no_patch": 3, "tag_unknown_ann": 1}
    assert summary.fixed["tag_removed"] == 4


def test_stray_tag_text_is_removed() -> None:
    parsed, summary = parse("Odd (box_id: none) text.")
    assert parsed == ("Odd text.", [])
    assert summary.fixed["stray_tag_removed"] == 1


@pytest.mark.parametrize("layout", ["official", "coco_captions"])
def test_convert_ric(coco_files: dict[str, Any], layout: str) -> None:
    data = coco_files["data"]
    captions = [
        "A person (<box_id: 10/>) near a dog (<box_id: 11/>, <box_id: 13/>) and a cat (<box_id: 14/>).",
        "Two persons (<box_id: 10/>, <box_id: 17/>) and a ghost (<box_id: 101/>).",  # 101 is on image 6
        "A truncated caption (<box_id: 10/>) that",
    ]
    if layout == "official":  # the release: captions inside the instances file's image entries
        data["images"][0]["captions"] = captions
        captions_path = coco_files["root"] / "ric_instances.json"
        captions_path.write_text(json.dumps(data))
        instances_path = None
    else:
        captions_path = coco_files["root"] / "captions.json"
        captions_path.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": c} for c in captions]}))
        instances_path = coco_files["instances"]
    records, summary = convert_ric(captions_path, instances_path, coco_files["images"], progress=False)
    assert [r.answer_template for r in records] == [
        "A person (<|Obj_0|>) near a dog (<|Obj_1|>) and a cat.",
        "Two persons (<|Obj_0|>, <|Obj_1|>) and a ghost.",
    ]
    first, second = records
    assert [o.patches for o in first.objects] == [[1, 5], [6]]
    assert [o.patches for o in second.objects] == [[1, 5], [8]] and second.objects[1].iscrowd == 1
    assert all(r.prompt == ric_prompt() and r.task == "ric" and r.image_id == 1 for r in records)
    assert all(o.label == "" for r in records for o in r.objects)
    assert dict(summary.skipped) == {
        "degenerate_segmentation": 1,  # annotation 13
        "no_patch": 1,  # annotation 14
        "tag_unknown_ann": 1,
        "caption_unterminated": 1,
    }
    assert summary.fixed["tag_removed"] == 3
    assert summary.records == 2 and summary.objects == 4
