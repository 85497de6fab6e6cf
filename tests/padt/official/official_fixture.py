"""Checkpoints in the layout of the official PaDT release, written from the official architecture, for tests.

Nothing here uses padt's name mapping: the official weight names and shapes follow from the module structure of
the official code (transformers 4.50 Qwen2.5-VL + Gorilla-Lab-SCUT/PaDT ``padt.py`` / ``padt_decoder.py``),
restated in :func:`official_weight_shapes`, so tests compare padt's map with an independent reading. Loaded by
path from the tests (pytest's importlib mode does not put this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken

from padt.official.released import PADT_PRO_3B, PADT_PRO_7B, QWEN2_5_VL_3B_VISION
from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS
from padt.text.qwen_tokenizer import QWEN2_5_VL_CHAT_TEMPLATE, build_tiny_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def official_weight_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor (name -> shape) of an official checkpoint for a flat (4.50) official ``config`` dict.

    The rule, module by module (``*`` = repeated per layer/block, Sequential indices as in the official code):

    * language model (Qwen2): ``model.embed_tokens`` [V, D]; per layer ``self_attn.{q,k,v}_proj`` (weight + bias),
      ``self_attn.o_proj`` (weight), ``mlp.{gate,up,down}_proj`` (weight), ``input_layernorm``,
      ``post_attention_layernorm``; ``model.norm``; ``lm_head`` [V, D] only when embeddings are untied.
    * vision tower: ``visual.patch_embed.proj`` (Conv3d, no bias); per block ``norm1``, ``norm2`` (RMSNorm),
      ``attn.qkv``, ``attn.proj``, ``mlp.{gate,up,down}_proj`` (all with bias); ``merger.ln_q``,
      ``merger.mlp.0`` / ``merger.mlp.2`` (Linear, GELU, Linear over 4 patches).
    * prototypes: ``vis_norm`` (LayerNorm, weight + bias), ``vis_proj.0`` [64, D], ``vis_proj.1`` [D, 64].
    * decoder ``vl_decoder``: ``vp_embedding`` [1, C], ``bbox_score_mask_tokens`` [3, C], ``input_projection``
      (0 RMSNorm(D), 1 Linear(D, C), 3 Linear(C, C)); ``low_res_transformer``, ``high_res_transformer1/2`` each with
      ``norm1..norm6``, ``self_attn`` / ``cross_attn_query_to_image`` / ``cross_attn_image_to_query`` (q/k/v_proj,
      proj; all with bias) and ``mlp.0`` / ``mlp.2``; ``high_res_norm``; ``bbox_prediction.{0,2,4}``;
      ``score_prediction``; ``mask_output_upscaling1`` (0 Linear(C, C), 1 RMSNorm(C)), ``mask_output_upscaling2.0``
      Linear(C/4, C/4); ``mask_output_mlp.{0,2,4}`` (last one to C/16).
    """
    d, v, i = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    hd = d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        for proj, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            shapes[p + f"self_attn.{proj}.weight"], shapes[p + f"self_attn.{proj}.bias"] = (rows, d), (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (d, q)
        shapes[p + "mlp.gate_proj.weight"] = shapes[p + "mlp.up_proj.weight"] = (i, d)
        shapes[p + "mlp.down_proj.weight"] = (d, i)
        shapes[p + "input_layernorm.weight"] = shapes[p + "post_attention_layernorm.weight"] = (d,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (v, d)

    vc = config["vision_config"]
    c, ci, ps = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"]
    merged = c * vc["spatial_merge_size"] ** 2
    shapes["visual.patch_embed.proj.weight"] = (c, 3, vc["temporal_patch_size"], ps, ps)
    for n in range(vc["depth"]):
        p = f"visual.blocks.{n}."
        shapes[p + "norm1.weight"] = shapes[p + "norm2.weight"] = (c,)
        shapes[p + "attn.qkv.weight"], shapes[p + "attn.qkv.bias"] = (3 * c, c), (3 * c,)
        shapes[p + "attn.proj.weight"], shapes[p + "attn.proj.bias"] = (c, c), (c,)
        for proj, shape in (("gate_proj", (ci, c)), ("up_proj", (ci, c)), ("down_proj", (c, ci))):
            shapes[p + f"mlp.{proj}.weight"], shapes[p + f"mlp.{proj}.bias"] = shape, (shape[0],)
    shapes["visual.merger.ln_q.weight"] = (c,)
    shapes["visual.merger.mlp.0.weight"], shapes["visual.merger.mlp.0.bias"] = (merged, merged), (merged,)
    out = vc["out_hidden_size"]
    shapes["visual.merger.mlp.2.weight"], shapes["visual.merger.mlp.2.bias"] = (out, merged), (out,)

    if config.get("use_visual_prototype_projection", True):
        shapes["vis_norm.weight"] = shapes["vis_norm.bias"] = (d,)
        shapes["vis_proj.0.weight"], shapes["vis_proj.1.weight"] = (64, d), (d, 64)

    dc = config["vl_decoder"]
    h, hi = dc["hidden_size"], dc["intermediate_size"]

    def linear(name: str, rows: int, cols: int) -> None:
        shapes[f"vl_decoder.{name}.weight"], shapes[f"vl_decoder.{name}.bias"] = (rows, cols), (rows,)

    shapes["vl_decoder.vp_embedding.weight"] = (1, h)
    shapes["vl_decoder.bbox_score_mask_tokens.weight"] = (3, h)
    shapes["vl_decoder.input_projection.0.weight"] = (d,)  # RMSNorm over the LLM width (the official code uses D)
    linear("input_projection.1", h, d)
    linear("input_projection.3", h, h)
    for block in ("low_res_transformer", "high_res_transformer1", "high_res_transformer2"):
        for k in range(1, 7):
            shapes[f"vl_decoder.{block}.norm{k}.weight"] = (h,)
        for attn in ("self_attn", "cross_attn_query_to_image", "cross_attn_image_to_query"):
            for proj in ("q_proj", "k_proj", "v_proj", "proj"):
                linear(f"{block}.{attn}.{proj}", h, h)
        linear(f"{block}.mlp.0", hi, h)
        linear(f"{block}.mlp.2", h, hi)
    shapes["vl_decoder.high_res_norm.weight"] = (h,)
    linear("bbox_prediction.0", h, h)
    linear("bbox_prediction.2", h, h)
    linear("bbox_prediction.4", 4, h)
    linear("score_prediction", 1, h)
    linear("mask_output_upscaling1.0", h // 4 * 4, h)
    shapes["vl_decoder.mask_output_upscaling1.1.weight"] = (h // 4 * 4,)
    linear("mask_output_upscaling2.0", h // 16 * 4, h // 4)
    linear("mask_output_mlp.0", h, h)
    linear("mask_output_mlp.2", h, h)
    linear("mask_output_mlp.4", h // 16, h)
    return shapes


# The released configs, as a released folder holds them (the tiny one below shrinks the 3B's).
_VISION_3B = QWEN2_5_VL_3B_VISION
QWEN2_5_VL_3B_OFFICIAL = PADT_PRO_3B
QWEN2_5_VL_7B_OFFICIAL = PADT_PRO_7B

_SPECIAL_IDS = {
    "bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>", "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>", "vision_token_id": "<|vision_pad|>", "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
}
#: Rows of the tiny model's embedding table beyond the tokenizer, like 151936 rows for 151665 Qwen tokens.
EXTRA_EMBEDDING_ROWS = 16


def tiny_official_config(tokenizer) -> dict[str, Any]:
    """The 3B config at tiny sizes (text 2 x 128, vision 2 x 64, decoder width 64), in the 4.50 flat layout."""
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in _SPECIAL_IDS.items()}
    return {
        **QWEN2_5_VL_3B_OFFICIAL,
        **ids,
        "torch_dtype": "float32", "vocab_size": len(tokenizer) + EXTRA_EMBEDDING_ROWS, "hidden_size": 128,
        "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "max_window_layers": 2, "rope_theta": 10000.0, "sliding_window": 4096,
        "rope_scaling": {"type": "default", "mrope_section": [4, 6, 6], "rope_type": "default"},
        "vision_config": {
            **_VISION_3B, "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
            "out_hidden_size": 128, "fullatt_block_indexes": [1], "torch_dtype": "float32",
        },
        "vl_decoder": {**QWEN2_5_VL_3B_OFFICIAL["vl_decoder"], "hidden_size": 64, "intermediate_size": 128,
                       "llm_hidden_state": 128, "num_heads": 2},
    }


def random_official_weights(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of :func:`official_weight_shapes`, scaled so every module's output varies (fan-in scaling,
    norm gains near 1, the prototype LayerNorm away from its zero start)."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in sorted(official_weight_shapes(config).items()):
        noise = torch.randn(shape, generator=gen)
        if len(shape) > 1:
            weights[name] = noise / math.sqrt(math.prod(shape[1:]))
        elif name.endswith(".bias"):
            weights[name] = 0.1 * noise
        else:  # RMSNorm / LayerNorm gains
            weights[name] = 1.0 + 0.2 * noise
    return weights


def write_tiny_official_checkpoint(
    directory: Path, *, seed: int = 0, shards: int = 2, vrt_tokens_in_tokenizer: int = 0,
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Write a tiny PaDT in the official layout to ``directory``; returns its ``config.json`` dict.

    Files: ``config.json`` (4.50 flat layout with ``vl_decoder``), ``model-0000k-of-0000n.safetensors`` +
    ``model.safetensors.index.json`` (or ``model.safetensors`` when ``shards == 1``), the tokenizer files,
    ``chat_template.json``, ``preprocessor_config.json`` and ``generation_config.json``.
    ``vrt_tokens_in_tokenizer > 0`` saves the tokenizer as the official processor leaves it after use: padded
    with ``<|empty_token_i|>`` up to the embedding size, then that many ``<|VRT_k|>`` added tokens.
    ``weights`` replaces the random tensors (to write a deliberately broken checkpoint).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = tiny_official_config(tokenizer)
    tensors = random_official_weights(config, seed) if weights is None else weights
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for k in range(shards):
            file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[k::shards]}
            save_file(part, directory / file, metadata={"format": "pt"})
            weight_map.update({n: file for n in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps(config, indent=2))

    if vrt_tokens_in_tokenizer:
        pad = [AddedToken(f"<|empty_token_{i}|>", special=True, normalized=False) for i in range(EXTRA_EMBEDDING_ROWS)]
        vrts = [AddedToken(f"<|VRT_{i}|>", normalized=False) for i in range(vrt_tokens_in_tokenizer)]
        tokenizer.add_tokens(pad)
        tokenizer.add_tokens(vrts)
    tokenizer.save_pretrained(directory)
    # transformers 4.50 also listed every added token in tokenizer_config.json
    added = json.loads((directory / "tokenizer.json").read_text())["added_tokens"]
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (directory / "chat_template.jinja").unlink(missing_ok=True)  # 4.50 kept it in chat_template.json
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_5_VL_CHAT_TEMPLATE}))
    preprocessor = {
        "min_pixels": TINY_MIN_PIXELS, "max_pixels": TINY_MAX_PIXELS, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_resize": True, "do_rescale": True,
        "do_normalize": True, "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255,
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    pad_id, eos_id = config["bos_token_id"], config["eos_token_id"]
    generation = {
        "bos_token_id": pad_id, "pad_token_id": pad_id, "eos_token_id": [eos_id, pad_id], "do_sample": True,
        "repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1, "top_p": 0.001,
        "transformers_version": "4.50.0",
    }
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return config
