"""Atomic training checkpoints that resume exactly.

A checkpoint is a folder ``checkpoints/step-NNNNNNN/`` holding:

* ``trainable.safetensors``: the parameters that train (all of them, or LoRA + PaDT modules);
* ``optimizer.pt`` / ``scheduler.pt``: state dicts of plain tensors and numbers, read back with
  ``torch.load(weights_only=True)`` (no arbitrary unpickling);
* ``state.json``: step, epoch position and the RNG states of Python, numpy and torch.

It is written into a temporary folder and renamed into place; the ``latest`` file is replaced atomically
after that. A crash at any moment leaves the previous checkpoint and ``latest`` intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:07d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The folder named by ``checkpoints/latest``, or None when there is no complete checkpoint."""
    pointer = Path(output_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / "state.json").is_file():
        raise ValueError(f"{pointer} names {folder.name}, which is missing or incomplete")
    return folder


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write the checkpoint of ``step`` atomically and keep only the ``keep`` newest ones."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    state = {"step": step, **extra, "rng": _rng_state()}
    (tmp / "state.json").write_text(json.dumps(state))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = final.parent / "latest"
    pointer_tmp = final.parent / "latest.tmp"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, pointer)
    _prune(final.parent, keep)
    return final


def load_checkpoint(
    folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states; return ``state.json`` (step, epoch position)."""
    folder = Path(folder)
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unexpected = [n for n in weights if n not in params]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {folder} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]} "
            "(was it written with other freezing/LoRA settings?)"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    state = json.loads((folder / "state.json").read_text())
    _set_rng_state(state.pop("rng"))
    return state


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _prune(parent: Path, keep: int) -> None:
    steps = sorted(p for p in parent.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
