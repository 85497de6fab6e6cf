"""What PaDT generation costs over plain Qwen2.5-VL generation of the same number of tokens, on the same weights.

Both models share every weight: the base ``transformers.Qwen2_5_VLForConditionalGeneration`` gets the PaDT model's
state dict (all its keys present; PaDT's extra modules ignored). The configuration is the tiny one of
``padt.testing`` but with the **real 151,936-row Qwen2.5-VL vocabulary** and the real Qwen tokenizer, so the text
head has its true width while the transformer stays tiny: what is left is exactly the per-step work PaDT adds
(VRT logits over the image's patches, the sample mask, the concatenation of text and VRT logits, VRT-aware
embedding, recording the last hidden state) next to the part both share (the 151,936-wide head, sampling logic).

One 224x224 image (8x8 = 64 VRTs), batch 1 and batch 4, greedy, N new tokens forced with ``min_new_tokens``.
PaDT runs the pipeline's path: ``encode_images`` once, ``vision.recording()``, ``generate(vision=...)``; the base
model gets the image as ``pixel_values`` and runs its vision tower inside ``generate``. Times are wall-clock of the
whole call (vision included) divided by N, median over repeats after a warm-up, PaDT and base runs interleaved
(ABBA order).
A second measurement with one new token (prefill only) splits each figure into prefill and per-step decoding:
``decode/token = (t(N) - t(1)) / (N - 1)``. Finally the pieces of one decoding step that PaDT adds (VRT logits,
concatenation, VRT-aware embedding) are timed alone, next to the shared text head, to attribute any difference.

    python benchmarks/generate_overhead.py [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--quick]
        [--tokens N] [--repeats R] [--threads T]

Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import transformers
from PIL import Image

from padt.modeling import PaDTForConditionalGeneration
from padt.processing import PaDTProcessor
from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS, tiny_config
from padt.text.qwen_tokenizer import build_qwen_tokenizer

QWEN_VOCAB_ROWS = 151936  # Qwen2.5-VL-3B embedding rows
PADT_ONLY_FIELDS = ("vrt_proj_rank", "use_visual_prototype_projection", "patch_order", "num_vrt_per_object",
                    "decoder_config", "model_type", "architectures")


def build(device: torch.device, dtype: torch.dtype):
    tokenizer = build_qwen_tokenizer()
    config = tiny_config(tokenizer, text_config={"vocab_size": QWEN_VOCAB_ROWS})
    torch.manual_seed(0)
    padt_model = PaDTForConditionalGeneration(config)
    with torch.no_grad():  # non-zero prototypes, as after training (a zero start makes every VRT logit 0)
        padt_model.vrt_prototypes.norm.weight.fill_(1.0)
    settings = {k: v for k, v in config.to_dict().items() if k not in PADT_ONLY_FIELDS}
    base = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**settings))
    missing, unexpected = base.load_state_dict(padt_model.state_dict(), strict=False)
    assert missing == [], f"base keys missing from the PaDT state dict: {missing}"
    assert all(k.startswith(("vrt_prototypes.", "vrt_decoder.")) for k in unexpected), unexpected
    for model in (padt_model, base):
        model.to(device=device, dtype=dtype).eval()
        model.generation_config.eos_token_id = [config.text_config.eos_token_id]
        model.generation_config.pad_token_id = config.text_config.pad_token_id
    processor = PaDTProcessor.from_tokenizer(
        tokenizer, vrt_id_start=QWEN_VOCAB_ROWS, min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS
    )
    return padt_model, base, processor


def make_batch(processor: PaDTProcessor, batch_size: int, device: torch.device, dtype: torch.dtype):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(batch_size)]
    batch = processor(images, ["Please describe this image."] * batch_size).to(device)
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16]] * batch_size  # 8 x 8 merged cells: 64 VRTs each
    return batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_padt(model, batch, tokens: int) -> torch.Tensor:
    vision = model.encode_images(
        batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], batch["input_ids"].shape[0]
    )
    with vision.recording() as recorded:
        sequences = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            mm_token_type_ids=batch["mm_token_type_ids"], vision=vision,
            max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
        )
    states = recorded.states()
    assert states.shape[1] == tokens
    return sequences


@torch.no_grad()
def run_base(model, batch, tokens: int) -> torch.Tensor:
    return model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        mm_token_type_ids=batch["mm_token_type_ids"], pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"], max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
    )


@torch.no_grad()
def encode_only(model, batch) -> None:
    model.encode_images(
        batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], batch["input_ids"].shape[0]
    )


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(padt_model, base, batch, tokens: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each call, PaDT and base interleaved (ABBA) so machine load hits both alike."""
    prompt = batch["input_ids"].shape[1]
    for fn, model in ((run_padt, padt_model), (run_base, base)):  # warm-up, and check the forced length
        assert fn(model, batch, tokens).shape[1] == prompt + tokens
        fn(model, batch, 1)
    calls = {
        "padt": lambda: run_padt(padt_model, batch, tokens),
        "base": lambda: run_base(base, batch, tokens),
        "padt_prefill": lambda: run_padt(padt_model, batch, 1),
        "base_prefill": lambda: run_base(base, batch, 1),
        "padt_encode_images": lambda: encode_only(padt_model, batch),
        "base_vision_tower": lambda: base.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for repeat in range(repeats):
        # ABBA: every other repeat runs in reverse, so a drift in machine load favours neither model
        for name in order if repeat % 2 == 0 else reversed(order):
            with torch.no_grad():
                times[name].append(timed(calls[name], device))
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def step_pieces(padt_model, base, batch, device: torch.device, repeats: int = 200) -> dict[str, float]:
    """Median ms of the pieces of one decoding step that differ between PaDT and base, timed alone.

    PaDT adds per step: the VRT logits (h . P^T and the sample mask), the concatenation of text and VRT logits,
    and the VRT-aware input embedding; the shared text head is timed for scale.
    """
    size = batch["input_ids"].shape[0]
    vision = padt_model.encode_images(batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], size)
    dtype = padt_model.lm_head.weight.dtype
    hidden = torch.randn(size, 1, padt_model.config.text_config.hidden_size, device=device, dtype=dtype)
    ids = batch["input_ids"][:, -1:]
    text_logits = padt_model.lm_head(hidden)
    vrt_logits = padt_model.vrt_logits(hidden, vision)
    pieces = {
        "text_head": lambda: padt_model.lm_head(hidden),
        "vrt_logits": lambda: padt_model.vrt_logits(hidden, vision),
        "concat_logits": lambda: torch.cat([text_logits, vrt_logits.to(text_logits.dtype)], dim=-1),
        "padt_embed": lambda: padt_model.embed_input_ids(ids, vision),
        "base_embed": lambda: base.get_input_embeddings()(ids),
    }
    out = {}
    for name, fn in pieces.items():
        for _ in range(10):
            fn()
        out[name] = 1e3 * statistics.median(timed(fn, device) for _ in range(repeats))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quick", action="store_true", help="16 new tokens, 3 repeats")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per call (default 64; 16 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 11; 3 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    tokens = args.tokens or (16 if args.quick else 64)
    repeats = args.repeats or (3 if args.quick else 11)
    if args.threads:
        torch.set_num_threads(args.threads)
    if tokens < 2:
        raise SystemExit("--tokens must be at least 2 (prefill and decoding are told apart)")

    padt_model, base, processor = build(device, dtype)
    rows = []
    for batch_size in (1, 4):
        batch = make_batch(processor, batch_size, device, dtype)
        t = measure(padt_model, base, batch, tokens, repeats, device)
        decode = {m: (t[m] - t[f"{m}_prefill"]) / (tokens - 1) for m in ("padt", "base")}
        rows.append(
            {
                "batch": batch_size,
                "prompt_tokens": int(batch["input_ids"].shape[1]),
                "padt_ms_per_token": 1e3 * t["padt"] / tokens,
                "base_ms_per_token": 1e3 * t["base"] / tokens,
                "ratio_per_token": t["padt"] / t["base"],
                "padt_prefill_ms": 1e3 * t["padt_prefill"],
                "base_prefill_ms": 1e3 * t["base_prefill"],
                "padt_decode_ms_per_token": 1e3 * decode["padt"],
                "base_decode_ms_per_token": 1e3 * decode["base"],
                "ratio_decode": decode["padt"] / decode["base"],
                "padt_encode_images_ms": 1e3 * t["padt_encode_images"],
                "base_vision_tower_ms": 1e3 * t["base_vision_tower"],
                **{f"step_{k}_ms": v for k, v in step_pieces(padt_model, base, batch, device).items()},
            }
        )

    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} vocab={QWEN_VOCAB_ROWS} "
          f"new_tokens={tokens} repeats={repeats} (medians)")
    header = (f"{'batch':>5} {'PaDT ms/tok':>12} {'base ms/tok':>12} {'ratio':>6} {'PaDT prefill':>13} "
              f"{'base prefill':>13} {'PaDT dec/tok':>13} {'base dec/tok':>13} {'ratio':>6} {'encode_images':>14} "
              f"{'base ViT':>9}")
    print(header)
    for r in rows:
        print(f"{r['batch']:>5} {r['padt_ms_per_token']:>12.3f} {r['base_ms_per_token']:>12.3f} "
              f"{r['ratio_per_token']:>6.3f} {r['padt_prefill_ms']:>13.2f} {r['base_prefill_ms']:>13.2f} "
              f"{r['padt_decode_ms_per_token']:>13.3f} {r['base_decode_ms_per_token']:>13.3f} "
              f"{r['ratio_decode']:>6.3f} {r['padt_encode_images_ms']:>14.2f} {r['base_vision_tower_ms']:>9.2f}")
    print("one decoding step, pieces timed alone (ms): text head shared; VRT logits, concat, embed are PaDT's")
    print(f"{'batch':>5} {'text head':>10} {'vrt_logits':>11} {'concat':>8} {'PaDT embed':>11} {'base embed':>11} "
          f"{'PaDT extra':>11} {'% of base step':>15}")
    for r in rows:
        extra = r["step_vrt_logits_ms"] + r["step_concat_logits_ms"] + r["step_padt_embed_ms"] - r["step_base_embed_ms"]
        r["step_padt_extra_ms"] = extra
        print(f"{r['batch']:>5} {r['step_text_head_ms']:>10.3f} {r['step_vrt_logits_ms']:>11.3f} "
              f"{r['step_concat_logits_ms']:>8.3f} {r['step_padt_embed_ms']:>11.3f} {r['step_base_embed_ms']:>11.3f} "
              f"{extra:>11.3f} {100 * extra / r['base_decode_ms_per_token']:>14.2f}%")
    print(json.dumps({
        "benchmark": "generate_overhead", "device": str(device), "dtype": args.dtype,
        "threads": torch.get_num_threads(), "vocab": QWEN_VOCAB_ROWS, "new_tokens": tokens, "repeats": repeats,
        "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }))


if __name__ == "__main__":
    main()
