"""``padt eval`` records per second on the demo's held-out REC records, with and without the shared prefix.

``evaluate`` answers the records about one image through one encoding of it (vision tower and prompt prefix
once, the questions batched); ``before`` hides the pipeline's ``encode`` so that every record is answered on
its own, as before that existed. The shipped demo model, the first N held-out REC records (about two per
image), greedy decoding, the two runs interleaved, median of R repeats. Prints one JSON line.

    python benchmarks/eval_throughput.py [--records N] [--repeats R] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from padt.apps.demo import RECIPE, SHIPPED_MODEL, prepare_scenes
from padt.datasets.records import read_jsonl
from padt.evaluation import evaluate
from padt.pipeline import PaDTPipeline


class WithoutEncode:
    """The pipeline without ``encode``: evaluate answers every record on its own."""

    def __init__(self, pipe: PaDTPipeline) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str):
        if name == "encode":
            raise AttributeError(name)
        return getattr(self._pipe, name)


def records_per_second(pipe, records, images) -> tuple[float, dict]:
    start = time.perf_counter()
    result = evaluate(pipe, records, images, "rec", progress=False)
    return len(records) / (time.perf_counter() - start), result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200, help="held-out REC records to score (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each run (default 3)")
    parser.add_argument("--workdir", type=Path, help="where the demo scenes are drawn (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="padt-eval-bench-"))
    scenes = prepare_scenes(workdir, json.loads(json.dumps(RECIPE)))
    records = read_jsonl(scenes["rec_val"])[: args.records]
    images = scenes["rec_val"].parent / "images"
    pipe = PaDTPipeline.from_pretrained(SHIPPED_MODEL, max_new_tokens=64, batch_size=16)
    records_per_second(pipe, records[:16], images)  # warm-up
    before, after = [], []
    for _ in range(args.repeats):
        rate, metrics_before = records_per_second(WithoutEncode(pipe), records, images)
        before.append(rate)
        rate, metrics_after = records_per_second(pipe, records, images)
        after.append(rate)
    b, a = statistics.median(before), statistics.median(after)
    print(json.dumps({
        "benchmark": "eval_throughput", "records": len(records), "images": len({r.image for r in records}),
        "before_records_per_s": round(b, 2), "after_records_per_s": round(a, 2), "speedup": round(a / b, 3),
        "acc@0.5_before": metrics_before["rec/acc@0.5"], "acc@0.5_after": metrics_after["rec/acc@0.5"],
    }))


if __name__ == "__main__":
    main()
