"""A PaDT with exactly the shapes of the released PaDT_Pro_3B, random weights, measured as a user would meet it.

    python benchmarks/real_size.py                # 3B shapes, bf16, this machine's CPU (~9 min on 2 cores)
    python benchmarks/real_size.py --shape 7b     # 7B shapes, when the free memory allows (else the JSON says so)
    python benchmarks/real_size.py --tiny         # the same code on a tiny configuration, in seconds (the test)

What it does, in order, printing ONE JSON line at the end:

1. **Build, save, load.** The configuration is :data:`PADT_PRO_3B`, a copy of the released ``config.json``
   (transformers-4.50 layout: Qwen2.5-VL-3B-Instruct's text and vision towers, the official ``vl_decoder``, the real
   151,936-row vocabulary), translated by :func:`padt.official.checkpoint.translate_config` exactly as a released
   folder is. The model is built from it with random weights in bf16 and written in **our** layout
   (``PaDTPipeline.save_pretrained``: safetensors, ``config.json`` with ``patch_order="official"``, the processor
   with the official pixel budget and 644-px longest side), then loaded back with ``PaDTPipeline.from_pretrained``.
   The official layout is not written: its loader reads every tensor into memory before the model takes them,
   which would measure a second copy of the weights, not padt.
2. **refer** on one 644x644 photo (a scikit-image photo when ``skimage`` is installed, else a drawn scene):
   seconds to the first new token (from the call, so processor and vision tower included), seconds per further
   token, and the whole call. Generation is forced to exactly ``--new-tokens`` tokens (default 32:
   ``min_new_tokens = max_new_tokens``) so runs compare; a real answer may be shorter or longer.
3. **detect** with 10 categories, measured the same way.
4. **ground a given answer** (``decode_answer``: teacher-forced pass plus the decoder on one 5-VRT object): random
   weights with the reference's zero-start prototypes never write a VRT, so steps 2-3 never reach the decoder.
5. **One LoRA training step** on one REC sample of the same photo, through padt's own objective
   (``PaDTObjective`` on a ``GroundingCollator`` batch, LoRA and gradient checkpointing applied by
   ``padt.train.setup.prepare_trainable``), bf16 autocast as ``padt train --precision bf16``, AdamW step included.

Peak memory is the process's resident-set high-water mark (``VmHWM``), reset before each phase through
``/proc/self/clear_refs``, so each phase reports its own peak; ``peak_rss_gib`` is the whole run's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from padt.official.released import PADT_PRO_3B, PADT_PRO_7B, QWEN2_5_VL_3B_VISION

SHAPES = {"3b": PADT_PRO_3B, "7b": PADT_PRO_7B}
#: The released preprocessor_config.json's pixel budget; released folders load with a 644-px longest side.
OFFICIAL_PIXELS = {"min_pixels": 3136, "max_pixels": 12845056}
PHOTO_SIDE = 644
TINY_PHOTO_SIDE = 224
#: The special tokens whose ids the configuration names (checked against the tokenizer; set from it for --tiny).
SPECIAL_IDS = {
    "bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>", "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>", "vision_token_id": "<|vision_pad|>", "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
}
EXPRESSION = "the red car"
CATEGORIES = ["car", "person", "tree", "house", "dog", "sun", "road", "bicycle", "cloud", "traffic light"]
GIB = 2**30


# ---- configuration ---------------------------------------------------------------------------------------------
def tiny_official_config(tokenizer) -> dict[str, Any]:
    """The 3B config.json at tiny sizes (text 2 x 128, vision 2 x 64, decoder width 64), same layout."""
    return {
        **PADT_PRO_3B,
        **{key: tokenizer.convert_tokens_to_ids(token) for key, token in SPECIAL_IDS.items()},
        "torch_dtype": "bfloat16", "vocab_size": len(tokenizer) + 16, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
        "max_window_layers": 2, "rope_theta": 10000.0, "sliding_window": 4096,
        "rope_scaling": {"type": "default", "mrope_section": [4, 6, 6], "rope_type": "default"},
        "vision_config": {**QWEN2_5_VL_3B_VISION, "depth": 2, "hidden_size": 64, "intermediate_size": 128,
                          "num_heads": 2, "out_hidden_size": 128, "fullatt_block_indexes": [1]},
        "vl_decoder": {**PADT_PRO_3B["vl_decoder"], "hidden_size": 64, "intermediate_size": 128,
                       "llm_hidden_state": 128, "num_heads": 2},
    }


def check_special_ids(official: dict[str, Any], tokenizer) -> None:
    """The released config names the Qwen special tokens by id: the tokenizer must put them there."""
    wrong = {k: (official[k], tokenizer.convert_tokens_to_ids(t)) for k, t in SPECIAL_IDS.items()
             if official[k] != tokenizer.convert_tokens_to_ids(t)}
    if wrong:
        raise ValueError(f"config ids differ from the tokenizer's (config, tokenizer): {wrong}")


def parameter_count(config) -> int:
    """Parameters of the model ``config`` builds, counted on the meta device (no memory)."""
    from padt.modeling import PaDTForConditionalGeneration

    with torch.device("meta"):
        model = PaDTForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def memory_check(parameters: int, folder: Path) -> dict[str, Any]:
    """Whether the run fits: 1.4x the bf16 weights plus 1 GiB of free memory (the 3B run peaked at 1.33x its
    7.2 GiB of weights, in the LoRA step), and the checkpoint's size on disk."""
    weights_gib = parameters * 2 / GIB
    needed = 1.4 * weights_gib + 1
    available = _meminfo_gib("MemAvailable")
    disk = shutil.disk_usage(folder).free / GIB
    fits = available >= needed and disk >= weights_gib + 1
    return {"weights_gib": round(weights_gib, 2), "needed_gib_estimate": round(needed, 1),
            "available_gib": round(available, 1), "disk_free_gib": round(disk, 1), "fits": fits}


def _meminfo_gib(key: str) -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / GIB
    raise KeyError(key)


# ---- memory and time -------------------------------------------------------------------------------------------
def reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark so the next phase reports its own peak (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # the peak then spans the earlier phases too


def peak_rss_gib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / GIB, 3)
    return float("nan")


class TokenClock:
    """Notes when each forward pass of ``model`` ends while active: in generation, pass ``i`` yields token ``i + 1``
    (the first is the prefill). A forward hook, so it sees generation whatever the pipeline streams or not."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.times: list[float] = []

    def __enter__(self) -> TokenClock:
        self._hook = self.model.register_forward_hook(lambda *_: self.times.append(time.perf_counter()))
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()


# ---- inputs ----------------------------------------------------------------------------------------------------
def photo(side: int) -> tuple[Image.Image, str, tuple[float, float, float, float]]:
    """A ``side`` x ``side`` photo, its description, and the normalised xyxy box of the expression's object."""
    try:
        from skimage import data

        image = Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)
        return image, f"skimage astronaut {side}x{side}", (0.35, 0.08, 0.62, 0.42)  # the face
    except ImportError:
        return drawn_scene(side), f"drawn street scene {side}x{side} (skimage not installed)", DRAWN_CAR_BOX


DRAWN_CAR_BOX = (0.18, 0.62, 0.46, 0.78)


def drawn_scene(side: int) -> Image.Image:
    """Sky, road, a house, a tree and a red car, with noise so the patches differ as in a photo."""
    rng = np.random.default_rng(0)
    y = np.linspace(0, 1, side)[:, None, None]
    pixels = np.broadcast_to((1 - y) * [120, 170, 235] + y * [90, 110, 80], (side, side, 3)).copy()
    pixels += rng.normal(0, 12, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    s = side / 100
    draw.rectangle((0, 70 * s, side, 100 * s), fill=(70, 70, 75))  # road
    draw.rectangle((55 * s, 30 * s, 85 * s, 60 * s), fill=(200, 180, 140))  # house
    draw.polygon([(52 * s, 30 * s), (70 * s, 15 * s), (88 * s, 30 * s)], fill=(150, 60, 50))
    draw.ellipse((8 * s, 20 * s, 30 * s, 50 * s), fill=(40, 120, 40))  # tree
    draw.rectangle((17 * s, 50 * s, 21 * s, 65 * s), fill=(90, 60, 30))
    x1, y1, x2, y2 = (v * side for v in DRAWN_CAR_BOX)
    draw.rounded_rectangle((x1, y1 + 4 * s, x2, y2 - 3 * s), radius=3 * s, fill=(200, 30, 30))  # the red car
    draw.rectangle((x1 + 6 * s, y1, x2 - 6 * s, y1 + 5 * s), fill=(170, 25, 25))
    for cx in (x1 + 6 * s, x2 - 6 * s):
        draw.ellipse((cx - 3 * s, y2 - 6 * s, cx + 3 * s, y2), fill=(20, 20, 20))
    draw.ellipse((80 * s, 4 * s, 92 * s, 16 * s), fill=(250, 230, 120))  # sun
    return image.filter(ImageFilter.GaussianBlur(0.6))


def rec_record(processor, image: Image.Image, box: tuple[float, ...], folder: Path):
    """One REC training record for ``image`` (saved into ``folder``): its object is the box, as a box mask."""
    from padt.datasets.patches import select_patches
    from padt.datasets.records import GroundingObject, GroundingRecord
    from padt.text.prompts import rec_answer_template, rec_prompt
    from padt.vision.masks import box_to_mask, mask_to_rle

    image.save(folder / "photo.png")
    h, w = image.height, image.width
    mask = box_to_mask([box[0] * w, box[1] * h, box[2] * w, box[3] * h], h, w)
    patches = select_patches(mask, processor.geometry(image))
    obj = GroundingObject(patches, list(box), EXPRESSION, mask_to_rle(mask), 0, float(mask.sum()))
    return GroundingRecord("photo-0", "photo.png", "rec", rec_prompt(EXPRESSION), rec_answer_template(EXPRESSION),
                           [obj], (h, w), processor.grid_spec)


# ---- the phases ------------------------------------------------------------------------------------------------
def build_save_load(config, processor, folder: Path, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """Random model -> safetensors folder -> ``PaDTPipeline.from_pretrained``; the times of each."""
    from padt.modeling import PaDTForConditionalGeneration
    from padt.pipeline import PaDTPipeline

    reset_peak_rss()
    started = time.perf_counter()
    torch.manual_seed(0)
    model = PaDTForConditionalGeneration._from_config(config, dtype=dtype)
    tokenizer = processor.tokenizer
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), pad]
    model.generation_config.pad_token_id = pad
    built = time.perf_counter()
    PaDTPipeline(model, processor).save_pretrained(folder)
    saved = time.perf_counter()
    del model
    gc.collect()
    pipe = PaDTPipeline.from_pretrained(folder, dtype=dtype)
    loaded = time.perf_counter()
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return pipe, {
        "build_s": round(built - started, 2), "save_s": round(saved - built, 2), "load_s": round(loaded - saved, 2),
        "build_save_load_s": round(loaded - started, 2), "checkpoint_gib": round(size / GIB, 3),
        "peak_rss_build_save_load_gib": peak_rss_gib(),
    }


def timed_task(pipe, run, new_tokens: int) -> dict[str, Any]:
    """One pipeline call ``run(generate_kwargs)`` with exactly ``new_tokens`` new tokens, clocked per token."""
    from padt.pipeline import TruncatedAnswerWarning

    reset_peak_rss()
    started = time.perf_counter()
    with warnings.catch_warnings(), TokenClock(pipe.model) as clock:
        warnings.simplefilter("ignore", TruncatedAnswerWarning)  # forced to the cap on purpose
        out = run(dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens))
    total = time.perf_counter() - started
    token_times = clock.times
    steps = len(token_times) - 1
    return {
        "first_token_s": round(token_times[0] - started, 3),
        "per_token_s": round((token_times[-1] - token_times[0]) / steps, 4) if steps > 0 else float("nan"),
        "total_s": round(total, 3), "new_tokens": len(token_times), "max_new_tokens": new_tokens,
        "objects": len(out.objects), "peak_rss_gib": peak_rss_gib(),
    }


def ground_given_answer(pipe, image: Image.Image, patches: list[int]) -> dict[str, Any]:
    """``decode_answer`` of a REC answer naming 5 of the object's patches: teacher-forced pass + decoder."""
    from padt.text.prompts import rec_answer_template, rec_prompt, render_answer

    vrts = [patches[round(i * (len(patches) - 1) / 4)] for i in range(5)]
    answer = render_answer(rec_answer_template(EXPRESSION), [vrts])
    reset_peak_rss()
    started = time.perf_counter()
    out = pipe.decode_answer(image, answer, rec_prompt(EXPRESSION))
    return {"total_s": round(time.perf_counter() - started, 3), "objects": len(out.objects),
            "peak_rss_gib": peak_rss_gib()}


def lora_step(pipe, record, images: Path) -> dict[str, Any]:
    """One optimizer step of LoRA training with gradient checkpointing, as ``padt train --lora
    --gradient-checkpointing --precision bf16`` runs it (batch of one)."""
    from padt.datasets.training import GroundingCollator, GroundingDataset
    from padt.losses import PaDTCriterion
    from padt.train.config import TrainConfig
    from padt.train.objective import PaDTObjective
    from padt.train.setup import prepare_trainable

    settings = TrainConfig(lora=True, gradient_checkpointing=True, precision="bf16")
    model = pipe.model.train()
    mask_scale = model.vrt_decoder.config.mask_subpixels
    trainable = prepare_trainable(model, settings)
    example = GroundingDataset([record], images, pipe.processor, mask_scale=mask_scale)[0]
    batch = GroundingCollator(pipe.processor, mask_scale)([example])
    objective = PaDTObjective(trainable, PaDTCriterion())
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    reset_peak_rss()
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = objective(batch)
    terms["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "seconds_per_step": round(time.perf_counter() - started, 2), "peak_rss_gib": peak_rss_gib(),
        "loss": round(float(terms["loss"].detach()), 4), "sequence_tokens": int(batch.inputs["input_ids"].shape[1]),
        "trainable_parameters": sum(p.numel() for p in params), "lora_rank": settings.lora_rank,
        "samples": 1, "gradient_checkpointing": True, "autocast": "bf16",
    }


# ---- driver ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--tiny", action="store_true", help="tiny configuration and a 224-px photo: seconds")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per task (forced; default 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the checkpoint goes (default: a temp dir)")
    parser.add_argument("--force", action="store_true", help="run even when the memory check says it does not fit")
    return parser.parse_args(argv)


def setup(args: argparse.Namespace):
    """(official config dict, tokenizer, processor, photo side) for the chosen shape."""
    from padt.official.checkpoint import OFFICIAL_LONGEST_SIDE
    from padt.processing import PaDTProcessor

    if args.tiny:
        from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS
        from padt.text.qwen_tokenizer import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        official = tiny_official_config(tokenizer)
        pixels, side = {"min_pixels": TINY_MIN_PIXELS, "max_pixels": TINY_MAX_PIXELS}, TINY_PHOTO_SIDE
    else:
        from padt.text.qwen_tokenizer import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer()
        official = SHAPES[args.shape]
        check_special_ids(official, tokenizer)
        pixels, side = OFFICIAL_PIXELS, OFFICIAL_LONGEST_SIDE
    processor = PaDTProcessor.from_tokenizer(tokenizer, vrt_id_start=official["vocab_size"], longest_side=side,
                                             **pixels)
    return official, processor, side


def header(args: argparse.Namespace, config, parameters: int) -> dict[str, Any]:
    return {
        "benchmark": "real_size", "shape": "tiny" if args.tiny else args.shape, "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {_meminfo_gib('MemTotal'):.0f} GiB",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average_1min_start": round(os.getloadavg()[0], 2),
        "layout": "padt (saved by PaDTPipeline.save_pretrained; config from the official config.json through "
                  "padt.official.checkpoint.translate_config)",
        "dtype": "bfloat16", "parameters": parameters, "vocab_rows": config.text_config.vocab_size,
        "patch_order": config.patch_order,
    }


def measure(args: argparse.Namespace, official, processor, side: int, folder: Path, figures: dict) -> None:
    """The phases after the header, adding their figures to ``figures``."""
    from padt.official.checkpoint import translate_config

    pipe, figures["build_save_load"] = build_save_load(translate_config(official), processor, folder, torch.bfloat16)
    image, described, box = photo(side)
    record = rec_record(pipe.processor, image, box, folder)
    geometry = pipe.processor.geometry(image)
    figures.update(photo=described, merged_grid=list(geometry.merged_grid_hw), vrts_per_image=geometry.num_vrts)
    figures["refer"] = timed_task(pipe, lambda kw: pipe.refer(image, EXPRESSION, **kw), args.new_tokens)
    figures["detect"] = timed_task(pipe, lambda kw: pipe.detect(image, CATEGORIES, **kw), args.new_tokens)
    figures["detect"]["categories"] = len(CATEGORIES)
    figures["ground_answer"] = ground_given_answer(pipe, image, record.objects[0].patches)
    figures["train_step"] = lora_step(pipe, record, folder)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: everything is built here
    if args.threads:
        torch.set_num_threads(args.threads)
    official, processor, side = setup(args)
    from padt.official.checkpoint import translate_config

    config = translate_config(official)
    parameters = parameter_count(config)
    figures = header(args, config, parameters)
    folder = Path(tempfile.mkdtemp(prefix="padt-real-size-", dir=args.workdir))
    try:
        figures["memory_check"] = memory_check(parameters, folder)
        if not (args.tiny or args.force or figures["memory_check"]["fits"]):
            figures["skipped"] = (f"needs ~{figures['memory_check']['needed_gib_estimate']} GiB of free memory and "
                                  "the checkpoint's size on disk; see memory_check (--force runs anyway)")
        else:
            measure(args, official, processor, side, folder, figures)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # Each phase reset the high-water mark, so the run's peak is the largest phase peak (or the current one).
    figures["peak_rss_gib"] = max([peak_rss_gib(), *_phase_peaks(figures)])
    print(json.dumps(figures), flush=True)
    return 0


def _phase_peaks(figures: dict) -> list[float]:
    peaks = []
    for key, value in figures.items():
        if isinstance(value, dict):
            peaks += _phase_peaks(value)
        elif key.startswith("peak_rss") and isinstance(value, float):
            peaks.append(value)
    return peaks


if __name__ == "__main__":
    sys.exit(main())
