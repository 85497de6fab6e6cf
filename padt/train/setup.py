"""Starting weights and what trains: load a PaDT / Qwen2.5-VL / Qwen3-VL folder or the tiny model, freeze, add LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from padt.configuration import CONFIG_CLASSES, padt_config_from_base
from padt.model_folder import BASE_MODEL_TYPES, plain_backbone
from padt.modeling import MODEL_CLASSES, PaDTForConditionalGeneration
from padt.processing import PaDTProcessor
from padt.train.config import TrainConfig

#: Modules that are new in PaDT: always trained fully, also under LoRA or freezing.
PADT_MODULES = ("vrt_prototypes", "vrt_decoder", "vrt_state_pooling")


def load_starting_model(config: TrainConfig) -> tuple[PaDTForConditionalGeneration, PaDTProcessor]:
    """The model and processor training starts from.

    ``--tiny``: the random tiny model of :mod:`padt.testing` on ``config.backbone`` (seeded by ``config.seed``).
    ``--model DIR``: a PaDT folder (ours on either backbone, or a released checkpoint in the official layout) loads
    as saved; a plain Qwen2.5-VL or Qwen3-VL folder gets the PaDT modules of its backbone added, initialised
    explicitly (zero-start prototypes), with a processor built from the folder's tokenizer, chat template and
    pixel budget.
    """
    if config.tiny:
        from padt.testing import tiny_pipeline

        settings = {"answer_format": config.answer_format, **config.model_overrides}
        pipe = tiny_pipeline(seed=config.seed, backbone=config.backbone, **settings)
        return pipe.model.train(), pipe.processor
    folder = Path(config.model)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    from padt.official.checkpoint import is_official_layout

    model_type = json.loads(config_file.read_text()).get("model_type")
    # Our folders and the released PaDT checkpoints (transformers 4.50 layout) both load through from_pretrained.
    if model_type in {c.model_type for c in CONFIG_CLASSES} or is_official_layout(folder):
        # The answer format is part of the configuration the model is built with: saved with it, read by the pipeline.
        model = PaDTForConditionalGeneration.from_pretrained(folder, answer_format=config.answer_format)
        return model.train(), PaDTProcessor.from_pretrained(folder)
    if model_type not in BASE_MODEL_TYPES:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} is neither a PaDT model nor a supported backbone "
            f"({', '.join(BASE_MODEL_TYPES)})"
        )
    return _from_backbone(folder, config.answer_format)


def _from_backbone(folder: Path, answer_format: str) -> tuple[PaDTForConditionalGeneration, PaDTProcessor]:
    """A plain backbone folder with the PaDT modules added; its config's ``model_type`` chooses the backbone."""
    from transformers import AutoTokenizer

    backbone, grid = plain_backbone(folder)
    padt_config = padt_config_from_base(json.loads((folder / "config.json").read_text()), answer_format=answer_format)
    model = MODEL_CLASSES[backbone.name].from_pretrained(folder, config=padt_config)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pixels = {key: grid[key] for key in ("min_pixels", "max_pixels") if key in grid}
    processor = PaDTProcessor.from_tokenizer(
        tokenizer, vrt_id_start=padt_config.text_config.vocab_size, backbone=backbone,
        chat_template=getattr(tokenizer, "chat_template", None), **pixels,
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
        module = _padt_module(model, name)
        if module is not None:  # vrt_state_pooling exists only with vrt_state_layers
            module.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("nothing to train: every parameter is frozen")
    return model


def _padt_module(model: nn.Module, name: str) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, name, None)


def final_model(model: nn.Module) -> PaDTForConditionalGeneration:
    """The plain PaDT model to save: LoRA weights merged in, PEFT wrappers removed."""
    if hasattr(model, "merge_and_unload"):
        with torch.no_grad():
            return model.merge_and_unload()
    return model
