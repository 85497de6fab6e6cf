"""Record schema: JSONL round trip, the official layout, and error messages for malformed lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from padt.datasets.records import GridSpec, GroundingObject, GroundingRecord, read_jsonl, write_jsonl
from padt.vision.masks import mask_to_rle


def make_record(**changes: Any) -> GroundingRecord:
    mask = np.zeros((84, 112), dtype=np.uint8)
    mask[0:56, 28:56] = 1
    record = GroundingRecord(
        id="r1",
        image="sub/a.png",
        task="ovd",
        prompt='Please carefully check the image and detect the following objects: ["person"].',
        answer_template='There are 2 "person" (<|Obj_0|>, <|Obj_1|>) in this image.',
        objects=[
            GroundingObject([1, 5], [0.25, 0.0, 0.5, 2 / 3], "person", mask_to_rle(mask), 0, 1568.0),
            GroundingObject([11], [0.9, 0.8, 1.0, 1.0], "person", None, 1, 12.5),
        ],
        image_hw=(84, 112),
        grid=GridSpec(),
        image_id=7,
    )
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_round_trip(tmp_path: Path) -> None:
    records = [make_record(), make_record(id="r2", grid=GridSpec(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64))]
    assert write_jsonl(tmp_path / "out" / "r.jsonl", records) == 2
    assert read_jsonl(tmp_path / "out" / "r.jsonl") == records


def test_official_layout_is_read_and_written(tmp_path: Path) -> None:
    official = {
        "id": 42,
        "image": "a.png",
        "conversations": [{"from": "human", "value": 'Please ... describes: "the man".'}],
        "answer_template": 'The "the man" refers to <|Obj_0|> in this image.',
        "objects": [{"patches": [1, 5], "bbox": [0.25, 0.0, 0.5, 1.0000004], "iscrowd": 0, "area": 3.0,
                     "label": "the man"}],
        "task": "refering",
    }
    path = write_lines(tmp_path / "official.jsonl", [official])
    (record,) = read_jsonl(path)
    assert record.task == "rec" and record.prompt.endswith('"the man".') and record.image_id == 42
    assert record.image_hw is None and record.objects[0].rle is None and record.objects[0].bbox[3] == 1.0
    Image.new("RGB", (112, 84)).save(tmp_path / "a.png")
    (with_size,) = read_jsonl(path, images_root=tmp_path)
    assert with_size.image_hw == (84, 112)
    write_jsonl(tmp_path / "again.jsonl", [with_size], official=True)
    again = json.loads((tmp_path / "again.jsonl").read_text())
    assert again["task"] == "refering" and again["conversations"][0]["value"] == record.prompt
    assert "rle" not in again["objects"][0]


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda d: d.pop("prompt"), "prompt", "missing"),
        (lambda d: d.update(image_hw=[84]), "image_hw", "height, width"),
        (lambda d: d.update(task="detect"), "task", "expected one of"),
        (lambda d: d["objects"][0].update(patches=[5, 1]), "objects[0].patches", "sorted"),
        (lambda d: d["objects"][0].update(patches=[1, "2"]), "objects[0].patches[1]", "non-negative integer"),
        (lambda d: d["objects"][1].update(bbox=[0.2, 0.1, 0.1, 0.5]), "objects[1].bbox", "x1 <= x2"),
        (lambda d: d["objects"][1].update(bbox=[0.2, 0.1, 1.3, 0.5]), "objects[1].bbox", "[0, 1]"),
        (lambda d: d["objects"][1].update(iscrowd=True), "objects[1].iscrowd", "expected int"),
        (lambda d: d["objects"][0].update(rle={"size": [84, 112], "counts": [1, 2]}), "objects[0].rle.counts",
         "string"),
        (lambda d: d.update(answer_template="There is <|Obj_0|> <|Obj_1|> <|Obj_2|>."), "answer_template",
         "<|Obj_2|> but only 2 objects"),
        (lambda d: d.update(answer_template='There is 1 "person" (<|Obj_0|>) in this image.'), "objects[1]",
         "never referenced"),
        (lambda d: d["objects"][1].update(patches=[12]), "objects[1].patches", "off the (3, 4) merged grid"),
        (lambda d: d["grid"].update(merge_size=0), "grid.merge_size", "positive integer"),
    ],
)
def test_malformed_lines_name_file_line_and_field(
    tmp_path: Path, mutate: Any, field: str, problem: str
) -> None:
    good = make_record().to_dict()
    bad = make_record().to_dict()
    mutate(bad)
    path = write_lines(tmp_path / "bad.jsonl", [good, "", bad])
    with pytest.raises(ValueError) as raised:
        read_jsonl(path)
    message = str(raised.value)
    assert message.startswith(f"{path}:3: field '{field}'"), message
    assert problem in message


def test_non_json_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [make_record().to_dict(), "{not json"])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_write_refuses_an_invalid_record(tmp_path: Path) -> None:
    broken = make_record(answer_template="No objects from the list are present in the image.")
    with pytest.raises(ValueError, match=r"record 1 \(id 'r1'\): field 'objects\[0\]': never referenced"):
        write_jsonl(tmp_path / "r.jsonl", [make_record(), broken])


def test_grid_geometry_matches_imaging() -> None:
    assert make_record().geometry().merged_grid_hw == (3, 4)
    assert make_record(image_hw=None).geometry() is None
