"""Parameter names of our decoder <-> the official PaDT decoder (``vl_decoder.*`` in released checkpoints).

The official module has exactly one low-res block, two high-res blocks and two mask up-scaling stages, with
``nn.Sequential`` indices for its MLPs (GELUs take indices too). Shapes are identical name for name.
"""

from __future__ import annotations

import re

import torch

from .config import PaDTDecoderConfig

OFFICIAL_PREFIX = "vl_decoder."

_BLOCK_PARTS = {
    "self_attn_norm": "norm1",
    "cross_attn_query_norm": "norm2",
    "cross_attn_memory_norm": "norm3",
    "mlp_norm": "norm4",
    "memory_update_query_norm": "norm5",
    "memory_update_memory_norm": "norm6",
    "self_attn": "self_attn",
    "cross_attn": "cross_attn_query_to_image",
    "memory_update": "cross_attn_image_to_query",
}
_ATTN_PARTS = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "out_proj": "proj"}
# Our MLP layer i is Sequential index 2*i in the official code (a GELU sits between Linear layers).
_MLP_PREFIXES = {
    "input_projection.mlp": ("input_projection", 1),  # index 0 of that Sequential is the RMSNorm
    "box_head": ("bbox_prediction", 0),
    "mask_token_mlp": ("mask_output_mlp", 0),
}
_TOP_LEVEL = {
    "task_tokens.weight": "bbox_score_mask_tokens.weight",
    "vrt_embedding.weight": "vp_embedding.weight",
    "input_projection.norm.weight": "input_projection.0.weight",
    "high_res_norm.weight": "high_res_norm.weight",
    "score_head.weight": "score_prediction.weight",
    "score_head.bias": "score_prediction.bias",
}


def check_official_layout(config: PaDTDecoderConfig) -> None:
    """Raise ValueError unless ``config`` has the block and stage counts of the official decoder."""
    if (config.num_low_res_blocks, config.num_high_res_blocks) != (1, 2) or (
        config.mask_head and config.mask_upscale_stages != 2
    ):
        raise ValueError(
            "the official PaDT decoder has 1 low-res block, 2 high-res blocks and 2 mask up-scaling stages; "
            f"got {config.num_low_res_blocks}, {config.num_high_res_blocks}, {config.mask_upscale_stages}"
        )


def to_official_name(name: str) -> str:
    """Our parameter name -> the official one (without the ``vl_decoder.`` prefix); KeyError if unknown."""
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    m = re.fullmatch(r"(low|high)_res_blocks\.(\d+)\.(\w+)\.(.+)", name)
    if m:
        level, idx, part, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        block = "low_res_transformer" if level == "low" else f"high_res_transformer{idx + 1}"
        if part == "mlp":
            layer, leaf = re.fullmatch(r"layers\.(\d+)\.(\w+)", rest).groups()
            return f"{block}.mlp.{2 * int(layer)}.{leaf}"
        if part not in _BLOCK_PARTS:
            raise KeyError(name)
        sub = rest
        if "." in rest:  # attention: q_proj.weight etc.
            proj, leaf = rest.split(".", 1)
            sub = f"{_ATTN_PARTS[proj]}.{leaf}"
        return f"{block}.{_BLOCK_PARTS[part]}.{sub}"
    for ours, (theirs, offset) in _MLP_PREFIXES.items():
        m = re.fullmatch(re.escape(ours) + r"\.layers\.(\d+)\.(\w+)", name)
        if m:
            return f"{theirs}.{offset + 2 * int(m.group(1))}.{m.group(2)}"
    m = re.fullmatch(r"mask_upscaler\.stages\.(\d+)\.(fc|norm)\.(\w+)", name)
    if m:
        stage, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        return f"mask_output_upscaling{stage + 1}.{0 if part == 'fc' else 1}.{leaf}"
    raise KeyError(name)


def official_name_map(names: list[str]) -> dict[str, str]:
    """``{our_name: official_name}`` for the given parameter names (e.g. ``decoder.state_dict().keys()``)."""
    return {n: to_official_name(n) for n in names}


def from_official_state_dict(
    official: dict[str, torch.Tensor], our_names: list[str], prefix: str = OFFICIAL_PREFIX
) -> dict[str, torch.Tensor]:
    """Pick our parameters out of an official checkpoint's state dict (keys ``prefix + official_name``).

    Keys of ``official`` outside ``prefix`` are ignored; a missing key raises KeyError naming both spellings.
    """
    out = {}
    for name in our_names:
        key = prefix + to_official_name(name)
        if key not in official:
            raise KeyError(f"official checkpoint lacks {key!r} (for our {name!r})")
        out[name] = official[key]
    return out
