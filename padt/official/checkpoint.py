"""Checkpoints of the official PaDT release (``PaDT-MLLM/PaDT_*``): detect, translate, load, convert.

The released folders were written by transformers 4.50 with the official code (Gorilla-Lab-SCUT/PaDT). They differ
from ours in four ways, each handled here explicitly:

* **config.json**: a flat Qwen2.5-VL config (text settings at the root) plus a ``vl_decoder`` dict and
  ``use_visual_prototype_projection``; :func:`translate_config` turns it into a :class:`~padt.PaDTConfig` with
  ``patch_order="official"`` and the official decoder layout (1 low-res + 2 high-res blocks, rank-64 prototypes).
* **weight names** (:mod:`padt.official.weights`): ``model.*`` -> ``model.language_model.*``, ``visual.*`` ->
  ``model.visual.*``, ``vis_norm``/``vis_proj.0``/``vis_proj.1`` -> ``vrt_prototypes.norm/down/up``,
  ``vl_decoder.*`` -> ``vrt_decoder.*`` (:mod:`padt.decoders.official_names`). This map, not transformers' own
  renaming of old Qwen checkpoints, decides: every key of the files must map onto a weight of the model and every
  weight must be in the files, or loading stops with an error that names the key. Nothing is re-initialised.
* **patch order**: the official decoder reads the vision tower's window order as if it were raster
  when it assembles masks; ``patch_order="official"`` reproduces that, and converted checkpoints keep it.
* **tokenizer/processor**: the real Qwen tokenizer files; VRT ids start at the config's ``vocab_size``.

Use :meth:`PaDTForConditionalGeneration.from_pretrained`, :meth:`PaDTProcessor.from_pretrained` or
:meth:`PaDTPipeline.from_pretrained` on the folder (the first two call :func:`load_official_model` /
:func:`load_official_processor`), or ``padt convert-checkpoint`` once (:mod:`padt.official.convert`). This module
never imports the model or the processor: they pass their class in.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from padt.configuration import PaDTConfig
from padt.official.weights import plan_weights, read_state_dict

#: Rank of the official prototype projection (hard-coded ``lora_r`` in the official model).
OFFICIAL_VRT_RANK = 64
#: The official demo resizes every image to this longest side before the processor (the released decoders saw
#: COCO-sized images); official folders load with it as the processor's ``longest_side``.
OFFICIAL_LONGEST_SIDE = 644

# Keys of the official ``vl_decoder`` dict. The official model overwrites ``llm_hidden_state``,
# ``spatial_merge_size`` and ``attn_implementation`` from the model config when it is built, so their saved values
# do not matter; we derive the first two from the text/vision configs the same way.
_DECODER_KEYS = {
    "name", "attn_implementation", "hidden_size", "intermediate_size", "llm_hidden_state", "num_heads",
    "spatial_merge_size", "use_mask_loss",
}
_VRT_TOKEN = re.compile(r"<\|VRT_\d+\|>")
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "chat_template.jinja",
)


# ---- detection and config --------------------------------------------------------------------------------------
def is_official_layout(path: str | os.PathLike) -> bool:
    """True when ``path`` is a local folder whose ``config.json`` has the official ``vl_decoder`` dict."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    with open(config_file, encoding="utf-8") as handle:
        return "vl_decoder" in json.load(handle)


def read_official_config(path: str | os.PathLike) -> dict[str, Any]:
    """The raw ``config.json`` of an official folder; ``ValueError`` if it is not one."""
    if not is_official_layout(path):
        raise ValueError(f"{path} is not an official PaDT checkpoint folder (no config.json with a 'vl_decoder' dict)")
    with open(Path(path) / "config.json", encoding="utf-8") as handle:
        return json.load(handle)


def translate_config(official: dict[str, Any], answer_format: str = "vrt") -> PaDTConfig:
    """Official (transformers 4.50) config dict -> :class:`PaDTConfig` of the same model, in the official order.

    ``answer_format`` is ours (the released models answer with VRTs); fine-tuning may start one on another.
    """
    data = dict(official)
    if "vl_decoder" not in data:
        raise ValueError("not an official PaDT config: it has no 'vl_decoder' dict")
    decoder = dict(data.pop("vl_decoder"))
    unknown = sorted(set(decoder) - _DECODER_KEYS)
    if unknown:
        raise ValueError(f"unknown keys in the official vl_decoder config: {unknown}")
    missing = sorted({"hidden_size", "num_heads", "intermediate_size"} - set(decoder))
    if missing:
        raise ValueError(f"the official vl_decoder config lacks {missing}")
    if decoder.get("name", "PaDTDecoder") != "PaDTDecoder":
        raise ValueError(f"unknown official decoder {decoder['name']!r} (expected 'PaDTDecoder')")
    if decoder.get("use_mask_loss", True) is not True:
        raise ValueError("official checkpoints trained without the mask loss (use_mask_loss=false) are not supported")
    for key in ("architectures", "model_type", "transformers_version", "_name_or_path"):
        data.pop(key, None)
    clash = sorted({"decoder_config", "patch_order", "vrt_proj_rank"} & set(data))
    if clash:
        raise ValueError(f"official config has keys of our own layout {clash}: is it a mix of both?")
    use_projection = data.pop("use_visual_prototype_projection", True)  # the official default
    decoder_config = dict(
        hidden_size=decoder["hidden_size"],
        num_attention_heads=decoder["num_heads"],
        intermediate_size=decoder["intermediate_size"],
        num_low_res_blocks=1,
        num_high_res_blocks=2,
        mask_head=True,
        mask_upscale_stages=2,
        rms_norm_eps=1e-6,  # every RMSNorm of the official decoder
        memory_position_encoding=False,
        attn_implementation="auto",  # flash-attention where usable (as the official code), sdpa elsewhere
    )
    return PaDTConfig(
        **data,
        decoder_config=decoder_config,
        use_visual_prototype_projection=bool(use_projection),
        vrt_proj_rank=OFFICIAL_VRT_RANK,
        vrt_norm_eps=1e-5,  # the official vis_norm is nn.LayerNorm with PyTorch's default eps
        patch_order="official",
        answer_format=answer_format,
        architectures=["PaDTForConditionalGeneration"],
    )


# ---- model, processor, conversion ------------------------------------------------------------------------------
def load_official_model(path: str | os.PathLike, *model_args: Any, model_class: type, **kwargs: Any):
    """Load an official folder as a ``model_class`` (:class:`~padt.PaDTForConditionalGeneration`, whose
    ``from_pretrained`` calls this), with ``patch_order="official"``.

    ``kwargs`` are those of ``from_pretrained`` (``dtype``, ``device_map``, ``attn_implementation``, ...); the
    default dtype is the checkpoint's (``torch_dtype`` of its config). ``config=`` is refused: the config is the
    folder's, translated.
    """
    from transformers import GenerationConfig

    if "config" in kwargs or "state_dict" in kwargs:
        raise ValueError(
            f"{path} is an official PaDT checkpoint: it loads with its own config (translated) and weights; "
            "call from_pretrained without config=/state_dict="
        )
    cls = model_class
    want_info = kwargs.pop("output_loading_info", False)
    # answer_format: a setting of ours that training may choose; it becomes part of the translated config.
    config = translate_config(read_official_config(path), answer_format=kwargs.pop("answer_format", "vrt"))
    plan = plan_weights(path, config, cls)
    state_dict = read_state_dict(path, plan)
    # ``None`` as the path sends this call past the official-layout check to transformers' own loader.
    model, info = cls.from_pretrained(
        None, *model_args, config=config, state_dict=state_dict, output_loading_info=True, **kwargs
    )
    leftovers = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if leftovers or info.get("error_msgs"):  # plan_weights checked all of this: reaching here is a bug
        raise RuntimeError(f"loading {path} left {leftovers or info['error_msgs']}")
    generation_file = Path(path) / "generation_config.json"
    if generation_file.is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    model.config._name_or_path = str(path)
    return (model, info) if want_info else model


def _image_processor(path: Path):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    file = path / "preprocessor_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no preprocessor_config.json (the official processor settings)")
    with open(file, encoding="utf-8") as handle:
        settings = json.load(handle)
    size = settings.get("size") or {}
    # transformers 4.50 read the top-level min_pixels/max_pixels; later versions keep them in `size`.
    min_pixels = settings.get("min_pixels", size.get("shortest_edge", size.get("min_pixels")))
    max_pixels = settings.get("max_pixels", size.get("longest_edge", size.get("max_pixels")))
    if min_pixels is None or max_pixels is None:
        raise ValueError(f"{file} gives no min_pixels/max_pixels")
    kept = {k: settings[k] for k in ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std")
            if k in settings}
    return Qwen2VLImageProcessorPil(min_pixels=int(min_pixels), max_pixels=int(max_pixels), **kept)


def _tokenizer(path: Path, vocab_size: int):
    """The folder's tokenizer, without the ``<|VRT_k|>`` tokens the official processor adds on the fly.

    The official processor pads the tokenizer to the embedding size with ``<|empty_token_i|>`` and appends VRTs as
    added tokens from id V on; a tokenizer saved after that holds them. Our VRTs are ids, never tokens, so those
    tokens are dropped (any other token at an id >= V is an error).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    beyond = {i: t for t, i in tokenizer.get_vocab().items() if i >= vocab_size}
    if not beyond:
        return tokenizer
    strangers = sorted(t for t in beyond.values() if not _VRT_TOKEN.fullmatch(t))
    if strangers:
        raise ValueError(
            f"the tokenizer has tokens at ids >= vocab_size ({vocab_size}) that are not VRTs: {strangers[:5]}"
        )
    with tempfile.TemporaryDirectory() as scratch:
        for name in _TOKENIZER_FILES:
            if (path / name).is_file():
                text = (path / name).read_text(encoding="utf-8")
                if name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
                    text = json.dumps(_drop_vrt_tokens(name, json.loads(text), vocab_size))
                Path(scratch, name).write_text(text, encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(scratch)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer still has {len(tokenizer)} tokens after dropping VRTs (> {vocab_size})")
    return tokenizer


def _drop_vrt_tokens(name: str, data: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    if name == "tokenizer.json":
        data["added_tokens"] = [t for t in data.get("added_tokens", []) if t["id"] < vocab_size]
    elif name == "tokenizer_config.json":
        if "added_tokens_decoder" in data:  # present in 4.x files; an empty one would drop every added token
            kept = {i: t for i, t in data["added_tokens_decoder"].items() if int(i) < vocab_size}
            data["added_tokens_decoder"] = kept
    else:  # added_tokens.json: {token: id}
        data = {t: i for t, i in data.items() if i < vocab_size}
    return data


def _chat_template(path: Path, tokenizer) -> str | None:
    if (path / "chat_template.json").is_file():
        with open(path / "chat_template.json", encoding="utf-8") as handle:
            return json.load(handle)["chat_template"]
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    return getattr(tokenizer, "chat_template", None)  # None: PaDTProcessor's Qwen2.5-VL template


def load_official_processor(path: str | os.PathLike, processor_class: type):
    """A ``processor_class`` (:class:`~padt.PaDTProcessor`, whose ``from_pretrained`` calls this) for an official
    folder: its tokenizer, pixel budget and chat template, and ``vrt_id_start`` = the config's ``vocab_size``
    (embedding rows; 151936 for the 3B)."""
    path = Path(path)
    vocab_size = translate_config(read_official_config(path)).text_config.vocab_size
    tokenizer = _tokenizer(path, vocab_size)
    return processor_class(
        _image_processor(path), tokenizer, chat_template=_chat_template(path, tokenizer), vrt_id_start=vocab_size,
        longest_side=OFFICIAL_LONGEST_SIDE,
    )
