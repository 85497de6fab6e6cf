"""The text-coordinate baseline: Qwen2.5-VL JSON boxes rendered and parsed; a text-box model never emits VRTs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from padt.configuration import PaDTConfig
from padt.datasets.records import GridSpec, GroundingObject, GroundingRecord
from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS, tiny_pipeline
from padt.text.text_boxes import parse_text_boxes, record_text_box_answer, text_box_answer
from padt.vision.geometry import image_geometry

# 290 x 520 lands on 140 x 280 under the tiny budget: both axes are scaled, by different factors.
H, W = 290, 520
GEOMETRY = image_geometry(H, W, min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_geometry_is_a_real_resize() -> None:
    assert GEOMETRY.resized_hw != GEOMETRY.original_hw
    h, w = GEOMETRY.resized_hw
    assert abs(H / h - W / w) > 0.1  # the two axes differ


def test_render_is_qwen_json_in_resized_pixels() -> None:
    answer = text_box_answer([("the red circle", (50.0, 30.0, 250.0, 150.0)), ('a "b"', (0, 0, W, H))], GEOMETRY)
    assert answer.startswith("```json\n[\n\t{") and answer.endswith("\n]\n```")
    body = json.loads(answer[len("```json\n") : -len("```")])
    h, w = GEOMETRY.resized_hw
    assert body[0] == {"bbox_2d": [round(50 * w / W), round(30 * h / H), round(250 * w / W), round(150 * h / H)],
                       "label": "the red circle"}
    assert body[1] == {"bbox_2d": [0, 0, w, h], "label": 'a "b"'}
    assert all(isinstance(v, int) for v in body[0]["bbox_2d"])
    assert text_box_answer([], GEOMETRY) == "```json\n[]\n```"


def test_round_trip_to_original_pixels() -> None:
    rng = np.random.default_rng(0)
    objects = []
    for k in range(6):
        x1, x2 = sorted(rng.uniform(0, W, 2))
        y1, y2 = sorted(rng.uniform(0, H, 2))
        objects.append((f"object {k}", (x1, y1, x2, y2)))
    parsed, problems = parse_text_boxes(text_box_answer(objects, GEOMETRY), GEOMETRY)
    assert problems == []
    h, w = GEOMETRY.resized_hw
    tolerance = np.array([W / w, H / h] * 2) / 2 + 1e-9  # half a resized pixel
    assert [label for label, _ in parsed] == [label for label, _ in objects]
    for (_, got), (_, want) in zip(parsed, objects):
        assert np.all(np.abs(np.array(got) - np.array(want)) <= tolerance)


def test_parse_scales_and_clips() -> None:
    h, w = GEOMETRY.resized_hw
    text = f'```json\n[{{"bbox_2d": [-5, 0, {w + 20}, {h}], "label": "x"}}]\n```'
    parsed, problems = parse_text_boxes(text, GEOMETRY)
    assert parsed == [("x", (0.0, 0.0, float(W), float(H)))]
    assert any("clipped" in p for p in problems)
    # Unfenced JSON, a single object and swapped corners are read too.
    parsed, problems = parse_text_boxes(f'Here: {{"bbox_2d": [{w}, {h}, 0, 0], "label": "y"}}', GEOMETRY)
    assert parsed == [("y", (0.0, 0.0, float(W), float(H)))] and any("swapped" in p for p in problems)


@pytest.mark.parametrize(
    "text, kept, expected",
    [
        ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"},, ]\n```', 1, "malformed JSON"),
        ('```json\n[{"label": "a"}]\n```', 0, "no 'bbox_2d'"),
        ('```json\n[{"bbox_2d": [1, 2, 3], "label": "a"}]\n```', 0, "four finite numbers"),
        ('```json\n[{"bbox_2d": ["1", "2", "3", "4"], "label": "a"}]\n```', 0, "four finite numbers"),
        ('```json\n[{"bbox_2d": [1, 2, true, 4], "label": "a"}]\n```', 0, "four finite numbers"),
        ('```json\n[{"bbox_2d": "1, 2, 3, 4", "label": "a"}]\n```', 0, "four finite numbers"),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n```', 1, "no string 'label'"),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": 7}]\n```', 1, "no string 'label'"),
        ('```json\n[3, {"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```', 1, "not an object"),
        ('```json\n{"boxes": 3}\n```', 0, "no 'bbox_2d'"),
        ('```json\n"text"\n```', 0, "not a list"),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]', 1, "never closed"),
        ("I cannot see any object.", 0, "no JSON"),
        ("", 0, "no JSON"),
    ],
)
def test_malformed_answers_give_problems_not_exceptions(text: str, kept: int, expected: str) -> None:
    parsed, problems = parse_text_boxes(text, GEOMETRY)
    assert len(parsed) == kept
    assert any(expected in p for p in problems), problems


def test_cut_off_answer_keeps_the_complete_entries() -> None:
    full = text_box_answer([("a", (10, 10, 50, 50)), ("b", (60, 60, 90, 90)), ("c", (1, 1, 2, 2))], GEOMETRY)
    cut = full[: full.index('"c"') - 5]  # inside the third entry
    parsed, problems = parse_text_boxes(cut, GEOMETRY, truncated=True)
    assert [label for label, _ in parsed] == ["a", "b"]
    assert any("cut off" in p for p in problems)
    assert not any("malformed" in p or "never closed" in p for p in problems)  # the cut explains them
    parsed, problems = parse_text_boxes('```json\n[\n\t{"bbox_2d": [1, 2', GEOMETRY, truncated=True)
    assert parsed == [] and any("cut off" in p for p in problems)


def _record(task: str, template: str, labels: list[str]) -> GroundingRecord:
    objects = [GroundingObject(patches=[0], bbox=[0.1 * (k + 1), 0.1, 0.5, 0.6], label=label)
               for k, label in enumerate(labels)]
    return GroundingRecord(id="r", task=task, image="x.png", prompt="p", answer_template=template, objects=objects,
                           image_hw=(H, W), grid=GridSpec(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS))


def test_record_answers_follow_the_template_order() -> None:
    record = _record("ovd", 'In this image, there are 1 "b" (<|Obj_1|>), 1 "a" (<|Obj_0|>).', ["a", "b"])
    parsed, problems = parse_text_boxes(record_text_box_answer(record, GEOMETRY), GEOMETRY)
    assert problems == [] and [label for label, _ in parsed] == ["b", "a"]
    assert parsed[1][1] == pytest.approx((0.1 * W, 0.1 * H, 0.5 * W, 0.6 * H), abs=2.0)
    rec = _record("rec", 'The "the a" refers to <|Obj_0|> in this image.', ["the a"])
    assert '"label": "the a"' in record_text_box_answer(rec, GEOMETRY)
    with pytest.raises(ValueError, match="RIC"):
        record_text_box_answer(_record("ric", "A cat (<|Obj_0|>).", [""]), GEOMETRY)


def test_config_validates_and_saves_the_format(tmp_path) -> None:
    with pytest.raises(ValueError, match="answer_format"):
        PaDTConfig(answer_format="boxes")
    assert PaDTConfig().answer_format == "vrt"
    pipe = tiny_pipeline(seed=0, answer_format="text-boxes")
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["answer_format"] == "text-boxes"
    assert PaDTConfig.from_pretrained(tmp_path).answer_format == "text-boxes"


def _vrt_eager_pipeline(answer_format: str):
    """A tiny pipeline whose VRT logits dwarf the text logits: a VRT model would answer with VRTs only."""
    pipe = tiny_pipeline(seed=5, max_new_tokens=8, answer_format=answer_format)
    with torch.no_grad():
        pipe.model.vrt_prototypes.norm.weight.fill_(30.0)
        pipe.model.vrt_prototypes.norm.bias.fill_(3.0)
    return pipe


def test_text_box_model_never_emits_vrts() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (112, 168, 3), dtype=np.uint8))
    prompts = ["Please carefully check the image and detect the object this sentence describes: \"the red circle\"."]
    results = {}
    for answer_format in ("vrt", "text-boxes"):
        pipe = _vrt_eager_pipeline(answer_format)
        batch = pipe.processor([image, image], prompts * 2)
        generated = pipe.model.generate(**{k: batch[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids",
                                                                  "pixel_values", "image_grid_thw", "sample_of_image")},
                                        max_new_tokens=8, do_sample=True, temperature=2.0, top_k=0)
        new = generated[:, batch["input_ids"].shape[1]:]
        results[answer_format] = int((new >= pipe.model.text_vocab_size).sum())
        out = pipe.refer(image, "the red circle")
        if answer_format == "text-boxes":
            assert "<|VRT_" not in out.text
            assert all(o.patches == [] and o.mask is None and o.score == 1.0 for o in out.objects)
            assert out.problems  # an untrained model writes no JSON: reported, not raised
    assert results["vrt"] > 0  # the check below is meaningful: these weights do prefer VRTs
    assert results["text-boxes"] == 0


def test_decode_answer_reads_text_boxes() -> None:
    pipe = tiny_pipeline(seed=0, answer_format="text-boxes")
    image = Image.new("RGB", (W, H))
    answer = text_box_answer([("a", (100, 60, 200, 120))], GEOMETRY)
    out = pipe.decode_answer(image, answer)
    assert out.problems == [] and len(out.objects) == 1
    assert out.objects[0].box == pytest.approx((100, 60, 200, 120), abs=1.0)
    assert out.image_sizes == [(H, W)]
