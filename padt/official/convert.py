"""``padt convert-checkpoint``'s work: an official PaDT folder rewritten in our layout, weights bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from padt.modeling import PaDTForConditionalGeneration
from padt.official.checkpoint import load_official_processor, read_official_config, translate_config
from padt.official.weights import INDEX_FILE, check_tied_copies, plan_weights
from padt.processing import PaDTProcessor


def convert_official_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the official folder ``src`` in our layout to ``dst`` (same weights bit for bit, same patch order).

    Every check of :func:`load_official_model` runs before anything is written; weights are streamed file by file.
    ``dst`` must not exist or be empty. Returns ``dst``.
    """
    from transformers import GenerationConfig

    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst} already exists and is not an empty folder")
    config = translate_config(read_official_config(src))
    plan = plan_weights(src, config, PaDTForConditionalGeneration)
    check_tied_copies(src, plan)
    processor = load_official_processor(src, PaDTProcessor)
    dst.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for file in plan.files:
        with safe_open(src / file, framework="pt") as handle:
            tensors = {plan.rename[k]: handle.get_tensor(k) for k in handle.keys() if k in plan.rename}
        save_file(tensors, dst / file, metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    if plan.sharded:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config.save_pretrained(dst)
    if (src / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(src).save_pretrained(dst)
    processor.save_pretrained(dst)
    return dst
