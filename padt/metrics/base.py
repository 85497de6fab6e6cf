"""Stateful metric base class whose state survives distributed evaluation.

Each metric registers its state with :meth:`Metric.add_state` as either a tensor reduced by *sum* (counts,
sums of IoUs) or a Python list reduced by *concatenation* (COCO detections, captions). :meth:`Metric.sync`
returns the state reduced over all processes when ``torch.distributed`` is initialised, and :meth:`Metric.compute`
always computes from that global state, so every rank gets the same, dataset-wide result.

The local state is never overwritten by :meth:`Metric.sync`: ``compute()`` can be called any number of times, and
``update()`` may continue afterwards, without counting anything twice.
"""

from __future__ import annotations

import abc
import copy
from typing import Any, Literal

import torch
import torch.distributed as dist

Reduction = Literal["sum", "cat"]


def _distributed_world_size() -> int:
    """World size when a process group is initialised, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class Metric(abc.ABC):
    """Base class: ``update()`` accumulates, ``compute()`` returns a ``dict[str, float]`` over all processes.

    Subclasses call :meth:`add_state` in ``__init__`` and implement :meth:`update` and :meth:`_compute`, which
    receives the synchronised state as a dict and must not read ``self.<state>`` (that is the local state).
    """

    def __init__(self) -> None:
        self._defaults: dict[str, torch.Tensor | list[Any]] = {}
        self._reductions: dict[str, Reduction] = {}

    def add_state(self, name: str, default: torch.Tensor | list[Any], reduce: Reduction) -> None:
        """Register a state attribute.

        Args:
            name: attribute name.
            default: a tensor (reduced with ``reduce="sum"``) or an empty list (``reduce="cat"``).
            reduce: ``"sum"`` all-reduces the tensor; ``"cat"`` gathers every rank's list and concatenates them
                in rank order.
        """
        if reduce == "sum" and not isinstance(default, torch.Tensor):
            raise TypeError(f"state {name!r}: reduce='sum' needs a tensor default")
        if reduce == "cat" and not (isinstance(default, list) and not default):
            raise TypeError(f"state {name!r}: reduce='cat' needs an empty list default")
        if reduce not in ("sum", "cat"):
            raise ValueError(f"state {name!r}: unknown reduction {reduce!r}")
        self._defaults[name] = default
        self._reductions[name] = reduce
        setattr(self, name, self._fresh(name))

    def _fresh(self, name: str) -> torch.Tensor | list[Any]:
        default = self._defaults[name]
        return default.clone() if isinstance(default, torch.Tensor) else []

    def reset(self) -> None:
        """Return every state to its default."""
        for name in self._defaults:
            setattr(self, name, self._fresh(name))

    def sync(self) -> dict[str, Any]:
        """Return the state reduced over all processes (a copy; local state is left untouched).

        Without an initialised process group (or with world size 1) this is a copy of the local state. With one,
        it is a collective call: every rank must call it (``compute()`` does), in the same order for all metrics.
        """
        state: dict[str, Any] = {}
        world_size = _distributed_world_size()
        for name, reduce in self._reductions.items():
            local = getattr(self, name)
            if world_size == 1:
                state[name] = local.clone() if reduce == "sum" else copy.copy(local)
            elif reduce == "sum":
                state[name] = _all_reduce_sum(local)
            else:
                gathered: list[list[Any] | None] = [None] * world_size
                dist.all_gather_object(gathered, local)
                state[name] = [item for part in gathered for item in (part or [])]
        return state

    def compute(self) -> dict[str, float]:
        """Dataset-wide result (collective when distributed: call it on every rank)."""
        return self._compute(self.sync())

    @abc.abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate one batch."""

    @abc.abstractmethod
    def _compute(self, state: dict[str, Any]) -> dict[str, float]:
        """Compute the result from a (synchronised) state dict."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a CPU state tensor over ranks; NCCL only reduces CUDA tensors, so move it there and back."""
    work = tensor.detach().clone()
    if dist.get_backend() == "nccl":
        work = work.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)
