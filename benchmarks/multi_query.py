"""Many questions about one image: ``encode`` + batched questions against the same number of separate calls.

The tiny configuration of ``padt.testing`` with the **real 151,936-row Qwen vocabulary** and tokenizer, one
644 x 483 image (a 23 x 17 merged grid, 391 VRTs, as a released checkpoint sees a COCO photo), greedy decoding
with exactly N new tokens (``min_new_tokens``) so that every call does the same work whatever the random
weights write. For K = 1, 4 and 16 referring expressions it times

* ``separate``: K calls ``pipe.refer(image, expression)`` (each runs the processor, the vision tower and the whole
  prompt's prefill);
* ``encoded``: ``pipe.refer(image, [K expressions])`` (the image encoded once, the shared prompt prefix prefilled
  once, the K questions generated in one batch),

median of R repeats after a warm-up, the two interleaved. Prints one JSON line; ``ratio`` = encoded / separate.

    python benchmarks/multi_query.py [--tokens N] [--repeats R] [--threads T] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image

from padt.modeling import PaDTForConditionalGeneration
from padt.pipeline import PaDTPipeline
from padt.processing import PaDTProcessor
from padt.testing import tiny_config
from padt.text.qwen_tokenizer import build_qwen_tokenizer

#: Text-embedding rows of Qwen2.5-VL-3B (more than the tokenizer's 151,665 tokens, as in the release).
QWEN_VOCAB_ROWS = 151936
EXPRESSIONS = [f"the {c} {s} on the {p}" for c in ("red", "blue", "green", "yellow")
               for s in ("circle", "square") for p in ("left", "right")]


def build_pipeline(tokens: int) -> PaDTPipeline:
    tokenizer = build_qwen_tokenizer()
    config = tiny_config(tokenizer, text_config={"vocab_size": QWEN_VOCAB_ROWS})  # the released models' rows
    torch.manual_seed(0)
    model = PaDTForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [config.text_config.eos_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    processor = PaDTProcessor.from_tokenizer(tokenizer, vrt_id_start=config.text_config.vocab_size)
    return PaDTPipeline(model, processor, batch_size=16, max_new_tokens=tokens)


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(pipe: PaDTPipeline, image: Image.Image, count: int, tokens: int, repeats: int) -> dict[str, float]:
    expressions = EXPRESSIONS[:count]
    kwargs = {"min_new_tokens": tokens, "max_new_tokens": tokens}

    def separate():
        for expression in expressions:
            pipe.refer(image, expression, **kwargs)

    def encoded():
        if count > 1:  # one image, a list of expressions: encoded once, asked in one batch
            pipe.refer(image, expressions, **kwargs)
        else:
            pipe.refer(pipe.encode(image), expressions[0], **kwargs)

    separate()  # warm-up
    encoded()
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(separate))
        b.append(timed(encoded))
    sep, enc = statistics.median(a), statistics.median(b)
    return {"questions": count, "separate_s": round(sep, 4), "encoded_s": round(enc, 4), "ratio": round(enc / sep, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per answer (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 4 tokens: a smoke run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.tokens = 1, 4
    pipe = build_pipeline(args.tokens)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (483, 644, 3), dtype=np.uint8))
    rows = [measure(pipe, image, count, args.tokens, args.repeats) for count in (1, 4, 16)]
    grid = pipe.processor.geometry(image).merged_grid_hw
    print(json.dumps({
        "benchmark": "multi_query", "image_hw": [483, 644], "merged_grid": list(grid),
        "vocab": pipe.model.text_vocab_size, "new_tokens": args.tokens, "threads": torch.get_num_threads(),
        "rows": rows,
    }))


if __name__ == "__main__":
    main()
