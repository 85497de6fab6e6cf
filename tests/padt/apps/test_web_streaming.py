"""``padt serve``'s handler streams: the answer's text grows and each object reaches the overlay as it is decoded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("gradio")

from padt.apps.demo import SHIPPED_MODEL  # noqa: E402
from padt.apps.web import _predictor  # noqa: E402
from padt.pipeline import PaDTPipeline  # noqa: E402


def test_the_handler_yields_text_and_objects_before_the_final_result(tmp_path):
    pipe = PaDTPipeline.from_pretrained(SHIPPED_MODEL, max_new_tokens=64)
    scene = Image.new("RGB", (168, 168), (235, 235, 235))
    draw = ImageDraw.Draw(scene)
    draw.ellipse((20, 20, 80, 80), fill=(220, 30, 30))
    draw.rectangle((100, 90, 150, 150), fill=(30, 60, 220))
    path = tmp_path / "scene.png"
    scene.save(path)
    updates = list(_predictor(pipe, None)({"path": str(path), "orig_name": "scene.png"}, "detect",
                                          "circle, square", False))
    assert len(updates) > 2
    *partial, final = updates
    texts = [text for _, text, _, _ in partial]
    assert all(a == b[: len(a)] for a, b in zip(texts, texts[1:]))  # the text only grows
    record = json.loads(final[2])
    assert final[1] == record["text"] and texts[-1] == record["text"]
    drawn = [overlay for overlay, *_ in partial if isinstance(overlay, np.ndarray)]
    assert len(drawn) == len(record["objects"]) > 0  # one overlay update per object, as it arrived
    assert all(update[2] == "" for update in partial)  # the JSON comes with the finished answer
