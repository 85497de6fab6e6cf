"""Starting weights and what trains: load a PaDT / Qwen2.5-VL folder or the tiny model, freeze, add LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from padt.configuration import PaDTConfig
from padt.modeling import PaDTForConditionalGeneration
from padt.processing import PaDTProcessor
from padt.train.config import TrainConfig

#: Modules that are new in PaDT: always trained fully, also under LoRA or freezing.
PADT_MODULES = ("vrt_prototypes", "vrt_decoder")


def load_starting_model(config: TrainConfig) -> tuple[PaDTForConditionalGeneration, PaDTProcessor]:
    """The model and processor training starts from.

    ``--tiny``: the random tiny model of :mod:`padt.testing` (seeded by ``config.seed``). ``--model DIR``: a PaDT
    folder (ours, or a released checkpoint in the official layout) loads as saved; a plain Qwen2.5-VL folder gets
    the PaDT modules added, initialised explicitly
    (zero-start prototypes), with a processor built from the folder's tokenizer and pixel budget.
    """
    if config.tiny:
        from padt.testing import tiny_pipeline

        pipe = tiny_pipeline(seed=config.seed, **{"answer_format": config.answer_format, **config.model_overrides})
        return pipe.model.train(), pipe.processor
    folder = Path(config.model)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    from padt.official.checkpoint import is_official_layout

    model_type = json.loads(config_file.read_text()).get("model_type")
    # Our folders and the released PaDT checkpoints (transformers 4.50 layout) both load through from_pretrained.
    if model_type == PaDTConfig.model_type or is_official_layout(folder):
        # The answer format is part of the configuration the model is built with: saved with it, read by the pipeline.
        model = PaDTForConditionalGeneration.from_pretrained(folder, answer_format=config.answer_format)
        return model.train(), PaDTProcessor.from_pretrained(folder)
    if model_type != "qwen2_5_vl":
        raise ValueError(f"{config_file}: model_type {model_type!r} is neither a PaDT model nor Qwen2.5-VL")
    return _from_qwen(folder, config.answer_format)


def _from_qwen(folder: Path, answer_format: str) -> tuple[PaDTForConditionalGeneration, PaDTProcessor]:
    from transformers import AutoTokenizer

    base = json.loads((folder / "config.json").read_text())
    base.pop("model_type", None)
    base.pop("architectures", None)
    padt_config = PaDTConfig(**base, answer_format=answer_format)
    model = PaDTForConditionalGeneration.from_pretrained(folder, config=padt_config)
    pixels = {}
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        settings = json.loads(preprocessor.read_text())
        size = settings.get("size") or {}
        for key, name in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            value = settings.get(key, size.get(name))
            if value is not None:
                pixels[key] = int(value)
    processor = PaDTProcessor.from_tokenizer(
        AutoTokenizer.from_pretrained(folder), vrt_id_start=padt_config.text_config.vocab_size, **pixels
    )
    return model.train(), processor


def prepare_trainable(model: PaDTForConditionalGeneration, config: TrainConfig) -> nn.Module:
    """Apply freezing, gradient checkpointing and LoRA; return the module to train (maybe a PEFT model)."""
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.freeze_vision:
        model.model.visual.requires_grad_(False)
    if config.freeze_llm:
        model.model.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)
    if config.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as error:
            raise ImportError("LoRA needs peft: pip install 'padt[train]'") from error
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets),
            modules_to_save=list(PADT_MODULES),
        )
        model = get_peft_model(model, lora)
    for name in PADT_MODULES:
        _padt_module(model, name).requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("nothing to train: every parameter is frozen")
    return model


def _padt_module(model: nn.Module, name: str) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, name)


def final_model(model: nn.Module) -> PaDTForConditionalGeneration:
    """The plain PaDT model to save: LoRA weights merged in, PEFT wrappers removed."""
    if hasattr(model, "merge_and_unload"):
        with torch.no_grad():
            return model.merge_and_unload()
    return model
