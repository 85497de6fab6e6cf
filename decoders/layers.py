"""Small building blocks of the PaDT decoder: RMSNorm, rotary embedding, a GELU MLP and weight init."""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RotaryPE(NamedTuple):
    """2-D rotary embedding of a packed token sequence, as the Qwen2.5-VL vision tower builds it.

    ``cos``/``sin``: [T, head_dim], the full-width (non-interleaved) form ``cat(freqs, freqs)`` that
    transformers' vision rotary returns; applied with :func:`apply_rotary`.
    """

    cos: torch.Tensor
    sin: torch.Tensor

    def gather(self, index: torch.Tensor) -> RotaryPE:
        """Rows ``index`` of both tables (used to copy an image's PE to each of its objects)."""
        return RotaryPE(self.cos.index_select(0, index), self.sin.index_select(0, index))


def apply_rotary(x: torch.Tensor, pe: RotaryPE) -> torch.Tensor:
    """Rotate ``x`` [T, heads, head_dim] by ``pe`` (each [T, head_dim]); computed in float32, returned in x's dtype.

    The standard non-interleaved form ``x * cos + rotate_half(x) * sin`` with rotate_half(x1, x2) = (-x2, x1),
    as transformers' Qwen2.5-VL vision rotary applies it. Same result as flash-attn's non-interleaved
    ``apply_rotary_emb`` with the first half of cos/sin, which the official decoder uses: the vision tower's
    full-width tables repeat that half.
    """
    cos = pe.cos.unsqueeze(-2).float()
    sin = pe.sin.unsqueeze(-2).float()
    xf = x.float()
    # x * cos + rotate_half(x) * sin, written half by half into one buffer: this runs on every memory row of
    # every object (the decoder's largest tensors), so each avoided temporary is a full memory-sized copy.
    half = xf.shape[-1] // 2
    out = xf * cos
    out[..., :half].addcmul_(xf[..., half:], sin[..., :half], value=-1.0)
    out[..., half:].addcmul_(xf[..., :half], sin[..., half:])
    return out.to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain, normalising in float32 (as Qwen2's RMSNorm does).

    Args:
        dim: channels of the last dim.
        eps: added to the mean square before the square root.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        # Cast back before the gain, like Qwen2RMSNorm, so bf16 checkpoints reproduce bit-for-bit.
        return self.weight * xf.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class MLP(nn.Module):
    """Linear layers with GELU between them (none after the last): ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Parameters are ``layers.{i}.weight/bias``.
    """

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"MLP needs at least an input and an output width, got {dims}")
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = F.gelu(x)
            x = layer(x)
        return x


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Explicit init of one module: Linear N(0, std) with zero bias, Embedding N(0, std), RMSNorm ones.

    Applied with ``model.apply(init_weights)`` so the result does not depend on how a checkpoint loader treats
    missing keys.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, RMSNorm):
        module.reset_parameters()


def sine_position_encoding(yx: torch.Tensor, dim: int, max_frequency: float = 64.0) -> torch.Tensor:
    """Fixed 2-D sinusoidal encoding of normalised positions: [N, 2] (y, x) in [0, 1] -> [N, dim].

    A quarter of the channels each for sin(y f), cos(y f), sin(x f), cos(x f), with frequencies ``f`` spaced
    geometrically from pi to ``pi * max_frequency``; channels left over (``dim`` not a multiple of 4) are zero.
    """
    quarter = dim // 4
    freqs = math.pi * torch.logspace(0.0, math.log10(max_frequency), quarter, device=yx.device, dtype=torch.float32)
    angles = yx.float()[:, :, None] * freqs  # [N, 2, quarter]
    parts = [angles[:, 0].sin(), angles[:, 0].cos(), angles[:, 1].sin(), angles[:, 1].cos()]
    encoding = torch.cat(parts, dim=-1)
    return F.pad(encoding, (0, dim - encoding.shape[-1]))
