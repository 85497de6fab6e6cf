"""Weight names of the official PaDT release -> ours, checked against the model before any tensor is read.

The official checkpoints (transformers 4.50) name the language model ``model.*``, the vision tower ``visual.*``,
the prototype modules ``vis_norm``/``vis_proj.{0,1}`` and the decoder ``vl_decoder.*``. :func:`official_to_ours`
is the one map from those names to ours; :func:`plan_weights` applies it to every key of a folder's safetensors
files and compares the result, name by name and shape by shape, with the model its config builds. transformers'
own renaming of old Qwen2.5-VL checkpoints is deliberately not relied on: the errors must name official keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from padt.configuration import PaDTConfig
from padt.decoders import PaDTDecoder, PaDTDecoderConfig
from padt.decoders.official_names import OFFICIAL_PREFIX, check_official_layout, to_official_name

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Official top-level prefixes whose inner names are the same in transformers 4.50 and 5.x.
_RENAMED_PREFIXES = (("model.", "model.language_model."), ("visual.", "model.visual."), ("lm_head.", "lm_head."))
_PROTOTYPE_NAMES = {
    "vis_norm.weight": "vrt_prototypes.norm.weight",
    "vis_norm.bias": "vrt_prototypes.norm.bias",
    "vis_proj.0.weight": "vrt_prototypes.down.weight",  # nn.Sequential(Linear(D, 64), Linear(64, D))
    "vis_proj.1.weight": "vrt_prototypes.up.weight",
}


def decoder_name_map(decoder_config: dict[str, Any]) -> dict[str, str]:
    """``{official vl_decoder.* name: our vrt_decoder.* name}`` for every parameter of the decoder."""
    config = PaDTDecoderConfig.from_dict(decoder_config)
    check_official_layout(config)
    with torch.device("meta"):
        names = list(PaDTDecoder(config).state_dict())
    return {OFFICIAL_PREFIX + to_official_name(n): "vrt_decoder." + n for n in names}


def official_to_ours(name: str, decoder_names: dict[str, str]) -> str:
    """One official weight name -> ours; ``KeyError`` naming it when no rule covers it."""
    if name in _PROTOTYPE_NAMES:
        return _PROTOTYPE_NAMES[name]
    if name.startswith(("vis_norm.", "vis_proj.")):
        raise KeyError(f"{name!r} is not a weight of the official prototype modules (vis_norm, vis_proj.0/1)")
    if name.startswith(OFFICIAL_PREFIX):
        if name not in decoder_names:
            raise KeyError(f"{name!r} is not a weight of the official decoder")
        return decoder_names[name]
    for official_prefix, our_prefix in _RENAMED_PREFIXES:
        if name.startswith(official_prefix):
            return our_prefix + name[len(official_prefix):]
    raise KeyError(f"{name!r} has no counterpart in PaDT (not model.*, visual.*, lm_head.*, vis_*, vl_decoder.*)")


def model_weight_shapes(
    config: PaDTConfig, model_class: type
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(our weight name -> shape, tied alias -> the weight it shares) of the model ``model_class(config)`` (built on
    the meta device: no memory). The class is passed in, so that this package never imports the model's module."""
    with torch.device("meta"):
        model = model_class(config)
    shapes, aliases, first_name = {}, {}, {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first_name:  # tied: the same parameter under a second name (lm_head.weight on the 3B)
            aliases[name] = first_name[id(tensor)]
        else:
            first_name[id(tensor)] = name
            shapes[name] = tuple(tensor.shape)
    return shapes, aliases


@dataclass
class WeightPlan:
    """Where each official tensor goes: checked against the model before any tensor is read.

    Attributes:
        files: the safetensors files of the folder, in order.
        rename: official key -> our key, for every key that is loaded.
        file_of: official key -> its file.
        tied_copies: official key -> official key of the weight it must equal (a tied ``lm_head.weight`` that
            was saved anyway); such keys are checked, then dropped.
        sharded: whether the folder has an index (several files).
    """

    files: list[str]
    rename: dict[str, str]
    file_of: dict[str, str]
    tied_copies: dict[str, str] = field(default_factory=dict)
    sharded: bool = False


def _read_headers(path: Path) -> tuple[list[str], dict[str, str], dict[str, tuple[int, ...]], bool]:
    """(files, key -> file, key -> shape, sharded) from the safetensors headers (no tensor is read)."""
    index_file = path / INDEX_FILE
    if index_file.is_file():
        with open(index_file, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
        files, sharded = sorted(set(weight_map.values())), True
    elif (path / SINGLE_FILE).is_file():
        weight_map, files, sharded = None, [SINGLE_FILE], False
    else:
        raise FileNotFoundError(f"{path} has neither {INDEX_FILE} nor {SINGLE_FILE}")
    file_of, shapes = {}, {}
    for file in files:
        with safe_open(path / file, framework="pt") as handle:
            for key in handle.keys():
                if key in file_of:
                    raise ValueError(f"{key!r} is stored twice ({file_of[key]} and {file})")
                file_of[key] = file
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    if weight_map is not None and weight_map != file_of:
        bad = sorted(k for k in set(weight_map) | set(file_of) if weight_map.get(k) != file_of.get(k))
        raise ValueError(f"{INDEX_FILE} disagrees with the files it lists, e.g. on {bad[:5]}")
    return files, file_of, shapes, sharded


def plan_weights(path: str | os.PathLike, config: PaDTConfig, model_class: type) -> WeightPlan:
    """Map every tensor of an official folder onto ``model_class(config)``, or raise ``ValueError`` naming keys.

    Errors: a key no rule maps (unknown), a key that maps onto no weight of the model (unexpected), a weight of
    the model that no key gives (missing), or a shape that differs.
    """
    files, file_of, shapes, sharded = _read_headers(Path(path))
    expected, aliases = model_weight_shapes(config, model_class)
    decoder_names = decoder_name_map(config.decoder_config)
    ours_to_official = {}
    rename, tied, problems = {}, {}, []
    for key in sorted(file_of):
        try:
            ours = official_to_ours(key, decoder_names)
        except KeyError as error:
            problems.append(f"unexpected key {error.args[0]}")
            continue
        if ours in aliases:  # tied weight saved anyway: it must equal the weight it is tied to
            tied[key] = aliases[ours]
            continue
        if ours not in expected:
            problems.append(f"unexpected key {key!r}: it maps to {ours!r}, which this model does not have")
        elif shapes[key] != expected[ours]:
            problems.append(f"{key!r} has shape {list(shapes[key])}, the model expects {list(expected[ours])}")
        else:
            rename[key] = ours
            ours_to_official[ours] = key
    for key, target in list(tied.items()):
        official_target = next((k for k, v in rename.items() if v == target), None)
        if official_target is None:
            problems.append(f"{key!r} is tied to {target!r}, which the checkpoint lacks")
        else:
            tied[key] = official_target
    inverse = {v: k for k, v in decoder_names.items()}
    for ours in sorted(set(expected) - set(ours_to_official)):
        problems.append(f"missing key {_official_spelling(ours, inverse)!r} (our {ours!r})")
    if problems:
        raise ValueError(f"{path} does not match the PaDT model of its config:\n  " + "\n  ".join(problems))
    return WeightPlan(files, rename, file_of, tied, sharded)


def _official_spelling(ours: str, decoder_inverse: dict[str, str]) -> str:
    """Our weight name -> the official one (for error messages about missing keys)."""
    if ours in decoder_inverse:
        return decoder_inverse[ours]
    for official, our_name in _PROTOTYPE_NAMES.items():
        if our_name == ours:
            return official
    for official_prefix, our_prefix in _RENAMED_PREFIXES:
        if ours.startswith(our_prefix):
            return official_prefix + ours[len(our_prefix):]
    return ours


def check_tied_copies(path: Path, plan: WeightPlan) -> None:
    """``ValueError`` unless every tied copy in the files equals the weight it is tied to."""
    for key, target in plan.tied_copies.items():
        with safe_open(path / plan.file_of[key], "pt") as a, safe_open(path / plan.file_of[target], "pt") as b:
            if not torch.equal(a.get_tensor(key), b.get_tensor(target)):
                raise ValueError(f"{key!r} differs from {target!r} but the config ties them (tie_word_embeddings)")


def read_state_dict(path: str | os.PathLike, plan: WeightPlan) -> dict[str, torch.Tensor]:
    """Our state dict from an official folder, file by file, as :func:`plan_weights` planned it."""
    path = Path(path)
    check_tied_copies(path, plan)
    state_dict = {}
    for file in plan.files:
        with safe_open(path / file, framework="pt") as handle:
            for key in handle.keys():
                if key in plan.rename:
                    state_dict[plan.rename[key]] = handle.get_tensor(key)
    return state_dict
