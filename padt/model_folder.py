"""Checks of a model folder before anything is loaded from it, so that a wrong or damaged folder gets one clear
error that names the folder, the file and what is wrong, instead of a traceback from deep inside transformers
or, worse, a model whose missing weights were re-initialised at random.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

from padt.backbones import BACKBONES, Backbone, backbone_of_model_type

#: Where transformers looks for the weights of a folder, in safetensors (the only format padt reads).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
#: Either file gives a tokenizer: the fast tokenizer's JSON, or the BPE vocabulary and merges.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
#: ``model_type`` of a PaDT model on each backbone (:mod:`padt.backbones` imports no transformers).
PADT_MODEL_TYPES = tuple(backbone.padt_model_type for backbone in BACKBONES.values())
#: ``model_type`` of the plain backbones (starting points for ``padt train --model``).
BASE_MODEL_TYPES = tuple(backbone.base_model_type for backbone in BACKBONES.values())
#: Weight-name prefixes only a PaDT model has: ours, and the official release's.
PADT_WEIGHT_PREFIXES = ("vrt_decoder.", "vrt_prototypes.", "vl_decoder.", "vis_proj.")


def check_model_folder(path: str | os.PathLike) -> str:
    """Check that ``path`` is a complete PaDT model folder; return ``"padt"`` (ours) or ``"official"``.

    Raises ``FileNotFoundError`` for a missing folder or file, ``ValueError`` for a corrupt ``config.json``, a
    folder of another model type (a plain Qwen2.5-VL folder is for ``padt train --model``), unreadable or
    truncated safetensors, or weights without the PaDT modules. Reads file headers only.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (or is not a folder)")
    kind = _model_kind(folder, _read_config(folder))
    names = _weight_names(folder)
    if not any(name.startswith(PADT_WEIGHT_PREFIXES) for name in names):
        raise ValueError(
            f"{folder}: the weights have no PaDT modules (no vrt_decoder.* / vl_decoder.* tensors): it is not a "
            "trained PaDT model; a plain Qwen2.5-VL folder is a starting point for `padt train --model`"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder} has no tokenizer files (expected {' or '.join(TOKENIZER_FILES)})")
    return kind


def _read_config(folder: Path) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: pass a folder written by save_pretrained")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(config).__name__}")
    return config


def _model_kind(folder: Path, config: dict) -> str:
    if "vl_decoder" in config:
        return "official"
    model_type = config.get("model_type")
    if model_type in PADT_MODEL_TYPES:
        return "padt"
    if model_type in (*BASE_MODEL_TYPES, "qwen2_vl"):
        raise ValueError(
            f"{folder} is a plain {model_type} folder, not a PaDT model: it has no PaDT decoder to ground with. "
            f"To add the PaDT modules and fine-tune it, run `padt train --model {folder} ...`"
        )
    raise ValueError(
        f"{folder}/config.json has model_type {model_type!r}: not a PaDT model (expected one of "
        f"{', '.join(map(repr, PADT_MODEL_TYPES))})"
    )


def _weight_names(folder: Path) -> list[str]:
    """Every tensor name of the folder's safetensors files, reading only their headers."""
    index = folder / WEIGHT_FILES[1]
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index} is not a safetensors index (a JSON object with a weight_map): {error}") \
                from error
    elif (folder / WEIGHT_FILES[0]).is_file():
        files = [WEIGHT_FILES[0]]
    else:
        other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {', '.join(other)}: padt reads safetensors only)" if other else ""
        raise FileNotFoundError(f"{folder} has no weights: expected {' or '.join(WEIGHT_FILES)}{hint}")
    names: list[str] = []
    for name in files:
        names += _tensor_names(folder / name)
    return names


def _tensor_names(file: Path) -> list[str]:
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing (named by {WEIGHT_FILES[1]})")
    try:
        with safe_open(file, framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): {error}") from error


def plain_backbone(folder: str | os.PathLike) -> tuple[Backbone, dict[str, int]] | None:
    """The backbone of a plain Qwen2.5-VL / Qwen3-VL folder (a starting point for ``padt train --model``) and its
    image processor's grid settings (``patch_size``, ``merge_size``, ``min_pixels``, ``max_pixels``, those the
    folder's ``preprocessor_config.json`` gives); None when the folder is not a plain backbone folder.

    Raises ``ValueError`` for a preprocessor whose patch or merge size is not the backbone's: padt's geometry, and
    the weights, assume the backbone's own.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None
    model_type = _read_config(folder).get("model_type")
    backbone = backbone_of_model_type(model_type)
    if backbone is None or model_type != backbone.base_model_type:
        return None
    grid = {"patch_size": backbone.patch_size, "merge_size": backbone.merge_size}
    file = folder / "preprocessor_config.json"
    if file.is_file():
        settings = json.loads(file.read_text(encoding="utf-8"))
        size = settings.get("size") or {}
        for key, name in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            value = settings.get(key, size.get(name))
            if value is not None:
                grid[key] = int(value)
        for key in ("patch_size", "merge_size"):
            if key in settings and int(settings[key]) != grid[key]:
                raise ValueError(
                    f"{file}: {key} {settings[key]} is not {backbone.name}'s {grid[key]}; padt supports the "
                    "backbone's own patch grid"
                )
    return backbone, grid
