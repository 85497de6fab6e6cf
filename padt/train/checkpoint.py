"""Atomic training checkpoints that resume exactly.

A checkpoint is a folder ``checkpoints/step-NNNNNNN/`` holding:

* ``trainable.safetensors``: the parameters that train (all of them, or LoRA + PaDT modules);
* ``optimizer.pt`` / ``scheduler.pt``: state dicts of plain tensors and numbers, read back with
  ``torch.load(weights_only=True)`` (no arbitrary unpickling);
* ``state.json``: step (numbered as in ``metrics.jsonl``: the first optimizer step is 1), the id of the run
  that wrote it (``run_id``), and the RNG states of Python, numpy and torch.

It is written into a temporary folder and renamed into place; the ``latest`` file is replaced atomically
after that. A crash at any moment leaves the previous checkpoint and ``latest`` intact. Pruning then removes
only checkpoints of the same run (same ``run_id``) with a lower step than the new one: a checkpoint of another
run, or a folder whose ``state.json`` cannot be read, is never deleted.
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
    run_id: str | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically and keep only the ``keep`` newest ones of run ``run_id``.

    ``extra`` goes into ``state.json`` next to ``step`` and ``run_id``; ``keep`` counts the new checkpoint.
    ``weights`` replaces the model's own trainable parameters (the full tensors gathered under FSDP).
    """
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(weights if weights is not None else trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    state = {"step": step, **extra, "run_id": run_id, "rng": _rng_state()}
    (tmp / "state.json").write_text(json.dumps(state))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = final.parent / "latest"
    pointer_tmp = final.parent / "latest.tmp"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, pointer)
    _prune(final.parent, keep, run_id, step)
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


def _prune(parent: Path, keep: int, run_id: str | None, step: int) -> None:
    """Delete the checkpoints of run ``run_id`` older than ``step`` but the ``keep - 1`` newest of them.

    The run is told by ``state.json``, not by folder names: in a folder that also holds another run's
    checkpoints (say a longer one's ``step-0000016``), name order would delete this run's newest ones.
    """
    if keep <= 0:
        return
    older = []
    for folder in parent.glob("step-*"):
        state = _read_state(folder)
        if state is not None and state.get("run_id") == run_id and _is_int(state.get("step")) and state["step"] < step:
            older.append((state["step"], folder))
    for _, folder in sorted(older)[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(folder, ignore_errors=True)


def _read_state(folder: Path) -> dict[str, Any] | None:
    """A checkpoint folder's ``state.json``, or None for a temporary, incomplete or unreadable one."""
    if not folder.is_dir() or folder.name.endswith(".tmp"):
        return None
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
