"""sync(): two gloo processes, each updating half of the data, compute the same result as one process.

Rank 0 is the pytest process itself and rank 1 a child from ``torch.multiprocessing.spawn``: importing torch in
a fresh process is most of this test's time, so only one is started. ``spawn`` pickles the worker by module
name, and pytest's importlib import mode gives test modules names that the children cannot import. So the test
puts this folder on ``sys.path`` (the children inherit it) and hands spawn the worker of this file imported under
its plain name, ``test_metrics_sync`` (specific enough not to collide with another folder's test module).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
WORLD_SIZE = 2

GT_BOX = [0, 0, 10, 10]
REC_PREDS = [[[0, 0, 10, 10]], [[0, 0, 10, 7]], [[5, 0, 15, 10]], [], [[0, 0, 10, 5]], [[1, 1, 9, 9]]]
CAPTIONS = ["a dog on grass", "a cat on a sofa", "two birds", "a red car near a tree", "a man", "blue sky"]
REFERENCES = [
    ["a dog lies on the grass"],
    ["a cat sleeps on a sofa"],
    ["two birds fly"],
    ["a red car by a tree"],
    ["a man walks"],
    ["the sky is blue"],
]
BOXES = [[0, 0, 10, 1], [3, 0, 13, 1], [1, 0, 11, 1], [-3, 0, 7, 1]]


def _build_metrics(coco_gt: dict) -> dict[str, Any]:
    from padt.metrics import COCODetectionMetric, GroundedCaptionMetric, RECAccuracy, RESIoU

    return {
        "rec": RECAccuracy((0.5, 0.75)),
        "res": RESIoU(),
        "coco": COCODetectionMetric(coco_gt),
        "ric": GroundedCaptionMetric(),
    }


def _update(metrics: dict[str, Any], indices: list[int], data: Any) -> None:
    import numpy as np

    masks_pred = [np.eye(6, dtype=bool) | (np.arange(6) < i)[:, None] for i in range(6)]
    masks_gt = [np.tri(6, dtype=bool) for _ in range(6)]
    dets = data.make_noisy_detections()
    metrics["rec"].update([REC_PREDS[i] for i in indices], [GT_BOX] * len(indices))
    metrics["res"].update([masks_pred[i] if i != 3 else None for i in indices], [masks_gt[i] for i in indices])
    metrics["coco"].update([dets[i] for i in indices])
    # Caption scores need the optional pycocoevalcap; the gathered-list path is covered by COCO either way.
    with_captions = importlib.util.find_spec("pycocoevalcap") is not None
    metrics["ric"].update(
        [CAPTIONS[i] for i in indices] if with_captions else None,
        [REFERENCES[i] for i in indices] if with_captions else None,
        [BOXES[: i % 3] for i in indices],
        [BOXES[1 : 1 + i % 4] for i in indices],
    )


def _load_data() -> Any:
    spec = importlib.util.spec_from_file_location("metrics_test_data", HERE / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compute_all(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {name: m.compute() for name, m in metrics.items()}


def _worker(index: int, rank_offset: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    rank = index + rank_offset
    # A short timeout: if the other rank dies, fail in a minute instead of gloo's default 30.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60)
    )
    try:
        data = _load_data()
        metrics = _build_metrics(data.make_coco_gt())
        _update(metrics, list(range(rank, 6, WORLD_SIZE)), data)  # interleaved halves: order must not matter
        result = _compute_all(metrics)
        result["again"] = metrics["rec"].compute()  # sync() must not double-count on a second compute()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_process_sync_equals_single_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.multiprocessing as mp

    data = _load_data()
    single_metrics = _build_metrics(data.make_coco_gt())
    _update(single_metrics, list(range(6)), data)
    single = json.loads(json.dumps(_compute_all(single_metrics)))  # same float round trip as the ranks
    assert single["coco"]["bbox_AP"] > 0 and single["ric"]["greedy_recall"] > 0  # a non-trivial reference

    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.delitem(sys.modules, "test_metrics_sync", raising=False)  # restored (i.e. removed) afterwards
    worker = importlib.import_module("test_metrics_sync")._worker
    args = (str(tmp_path / "init"), str(tmp_path))
    child = mp.spawn(worker, args=(1, *args), nprocs=WORLD_SIZE - 1, join=False)
    try:
        worker(0, 0, *args)
    finally:
        while not child.join():  # join() returns False while a process is still running
            pass
    for rank in range(WORLD_SIZE):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.pop("again") == got["rec"]
        assert got.keys() == single.keys()
        for name in single:
            assert got[name] == pytest.approx(single[name], rel=1e-12, abs=1e-12), name
