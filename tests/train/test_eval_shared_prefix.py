"""``evaluate`` answers the records about one image through one encoding of it (vision + shared prompt prefix):
the same metrics and predictions as answering every record alone."""

from __future__ import annotations

from collections import Counter

import pytest

from padt.apps.demo import SHIPPED_MODEL
from padt.datasets.records import read_jsonl
from padt.evaluation import evaluate
from padt.pipeline import PaDTPipeline


class WithoutEncode:
    """The same pipeline, seen without ``encode``: evaluate answers every record on its own."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe

    def __getattr__(self, name):
        if name == "encode":
            raise AttributeError(name)
        return getattr(self._pipe, name)


def test_shared_prefix_evaluation_equals_record_by_record(synthetic_records, images_dir):
    records = read_jsonl(synthetic_records["rec_train"])[:12]
    assert max(Counter(r.image for r in records).values()) > 1  # some images carry several expressions
    pipe = PaDTPipeline.from_pretrained(SHIPPED_MODEL, max_new_tokens=48)  # trained: its answers have objects
    shared = evaluate(pipe, records, images_dir, "rec,res", progress=False)
    alone = evaluate(WithoutEncode(pipe), records, images_dir, "rec,res", progress=False)
    assert sum(len(p["objects"]) for p in shared.predictions) > 0
    assert shared.metrics == pytest.approx(alone.metrics, abs=1e-5)
    assert [p["text"] for p in shared.predictions] == [p["text"] for p in alone.predictions]
    assert [p["id"] for p in shared.predictions] == [r.id for r in records]
    for a, b in zip(shared.predictions, alone.predictions, strict=True):
        assert [o["patches"] for o in a["objects"]] == [o["patches"] for o in b["objects"]]
        boxes = [(x, y) for oa, ob in zip(a["objects"], b["objects"]) for x, y in zip(oa["box"], ob["box"])]
        assert all(abs(x - y) < 1e-3 for x, y in boxes)
