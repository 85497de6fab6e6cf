"""Attention over packed variable-length sequences, with an sdpa backend (everywhere) and varlen flash-attention.

Every sequence the decoder attends over is *packed*: the tokens of all sequences are concatenated along dim 0
and a :class:`PackedSeqs` records where each one starts. Flash-attention consumes that layout directly
(``cu_seqlens``); the sdpa backend scatters it into a zero-padded [B, L] batch with a key-padding mask and
gathers the valid rows back, so both backends compute the same function.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .layers import RotaryPE, apply_rotary

Backend = Literal["sdpa", "flash"]
# Positional term of one attention side: added to the input of its projection (tensor, [T, C]), applied as
# rotary to the projected heads (RotaryPE), or absent (None).
Position = torch.Tensor | RotaryPE | None


@dataclass(frozen=True)
class PackedSeqs:
    """Layout of B packed sequences of lengths ``lengths`` (each >= 1).

    Attributes:
        lengths: LongTensor [B].
        cu_seqlens: int32 [B + 1], cumulative lengths starting at 0 (flash-attention's format).
        max_len: longest sequence, a Python int.
        uniform: every sequence has length ``max_len`` (packing is then a plain reshape).
        pad_index: LongTensor [T]: for packed token t, its flat position ``b * max_len + i`` in the padded batch.
        valid: BoolTensor [B, max_len], True where a padded slot holds a real token.
    """

    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    max_len: int
    uniform: bool
    pad_index: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor) -> PackedSeqs:
        lengths = lengths.long()
        device = lengths.device
        max_len = int(lengths.max().item()) if lengths.numel() else 0
        uniform = bool((lengths == max_len).all().item())
        cu = F.pad(lengths.cumsum(0), (1, 0))
        seq_of_token = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
        pos_in_seq = torch.arange(seq_of_token.numel(), device=device) - cu[seq_of_token]
        return cls(
            lengths=lengths,
            cu_seqlens=cu.to(torch.int32),
            max_len=max_len,
            uniform=uniform,
            pad_index=seq_of_token * max_len + pos_in_seq,
            valid=torch.arange(max_len, device=device)[None, :] < lengths[:, None],
        )

    @property
    def batch(self) -> int:
        return self.lengths.numel()

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[T, *rest] packed -> [B, max_len, *rest] zero-padded."""
        if self.uniform:
            return x.view(self.batch, self.max_len, *x.shape[1:])
        out = x.new_zeros(self.batch * self.max_len, *x.shape[1:])
        out = out.index_copy(0, self.pad_index, x)
        return out.view(self.batch, self.max_len, *x.shape[1:])

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, max_len, *rest] -> [T, *rest], dropping padded slots."""
        flat = x.reshape(self.batch * self.max_len, *x.shape[2:])
        return flat if self.uniform else flat.index_select(0, self.pad_index)


@functools.lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    """Whether the optional ``flash_attn`` package can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("flash_attn") is not None


def resolve_backend(attn_implementation: str, example: torch.Tensor) -> Backend:
    """Pick the kernel for tensors like ``example`` under the configured ``attn_implementation``.

    ``"auto"`` uses flash-attention only where it can run (package installed, CUDA, fp16/bf16) and sdpa
    otherwise; ``"flash_attention_2"`` raises a clear error instead of falling back silently.
    """
    if attn_implementation == "sdpa":
        return "sdpa"
    usable_dtype = example.dtype in (torch.float16, torch.bfloat16)
    usable = flash_attn_available() and example.is_cuda and usable_dtype
    if attn_implementation == "auto":
        return "flash" if usable else "sdpa"
    if attn_implementation == "flash_attention_2":
        if not flash_attn_available():
            raise ImportError("attn_implementation='flash_attention_2' needs the flash_attn package")
        if not (example.is_cuda and usable_dtype):
            raise ValueError(
                "flash_attention_2 runs only on CUDA fp16/bf16 tensors; got "
                f"{example.device.type} {example.dtype}. Use attn_implementation='sdpa' or 'auto'."
            )
        return "flash"
    raise ValueError(f"unknown attn_implementation {attn_implementation!r}")


def sdpa_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_seqs: PackedSeqs, k_seqs: PackedSeqs
) -> torch.Tensor:
    """Sequence b of ``q`` attends to sequence b of ``k``/``v``.

    Inputs [T, heads, head_dim]; output [Tq, heads, head_dim].
    """
    qp = q_seqs.pad(q).transpose(1, 2)  # [B, heads, Lq, head_dim]
    kp = k_seqs.pad(k).transpose(1, 2)
    vp = k_seqs.pad(v).transpose(1, 2)
    # Padded query rows see real keys (every sequence has one), so no NaN appears; they are dropped by unpad.
    mask = None if k_seqs.uniform else k_seqs.valid[:, None, None, :]
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)
    return q_seqs.unpad(out.transpose(1, 2))


def flash_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_seqs: PackedSeqs, k_seqs: PackedSeqs
) -> torch.Tensor:
    """Same contract as :func:`sdpa_varlen`, computed by flash-attention's varlen kernel (CUDA, fp16/bf16)."""
    from flash_attn import flash_attn_varlen_func  # optional dependency, imported only on this path

    return flash_attn_varlen_func(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        q_seqs.cu_seqlens,
        k_seqs.cu_seqlens,
        q_seqs.max_len,
        k_seqs.max_len,
    )


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_seqs: PackedSeqs,
    k_seqs: PackedSeqs,
    backend: Backend,
) -> torch.Tensor:
    """Dispatch to the chosen backend; softmax scale is 1/sqrt(head_dim) in both."""
    if q_seqs.batch != k_seqs.batch:
        raise ValueError(f"query has {q_seqs.batch} sequences but key has {k_seqs.batch}")
    if backend == "flash":
        return flash_varlen(q, k, v, q_seqs, k_seqs)
    return sdpa_varlen(q, k, v, q_seqs, k_seqs)


class DecoderAttention(nn.Module):
    """Multi-head attention between two packed token sets, each with its own positional term.

    Query side: ``q_proj(x_q + pos)`` for an additive position, ``rotary(q_proj(x_q))`` for a :class:`RotaryPE`.
    Key side likewise with ``k_proj``; values are ``v_proj(x_kv)`` with no position. The heads are merged and
    go through ``out_proj``.

    Args:
        hidden_size: width C of both inputs and of the output.
        num_heads: heads; head_dim = C / num_heads.
    """

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.num_heads, -1)

    def _project(self, proj: nn.Linear, x: torch.Tensor, pos: Position) -> torch.Tensor:
        if isinstance(pos, RotaryPE):
            return apply_rotary(self._heads(proj(x)), pos)
        if pos is not None:
            x = x + pos
        return self._heads(proj(x))

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor,
        q_pos: Position,
        kv_pos: Position,
        q_seqs: PackedSeqs,
        kv_seqs: PackedSeqs,
        backend: Backend,
        q_index: torch.Tensor | None = None,
        kv_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend ``x_q`` [Tq0, C] to ``x_kv`` [Tk0, C]; returns [Tq, C] in ``q_seqs`` packing.

        ``q_index``/``kv_index`` (LongTensor, optional) gather rows *after* projection and rotary: a side given
        once per image is projected once and then copied to each object of that image (Tq = len(q_index)).
        Positions always match the rows of ``x_q``/``x_kv`` as given.
        """
        q = self._project(self.q_proj, x_q, q_pos)
        k = self._project(self.k_proj, x_kv, kv_pos)
        v = self._heads(self.v_proj(x_kv))
        if q_index is not None:
            q = q.index_select(0, q_index)
        if kv_index is not None:
            k = k.index_select(0, kv_index)
            v = v.index_select(0, kv_index)
        out = varlen_attention(q, k, v, q_seqs, kv_seqs, backend)
        return self.out_proj(out.reshape(out.shape[0], -1))
