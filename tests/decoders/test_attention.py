"""Packed attention: sdpa backend vs plain math, rotary form, backend choice, and the flash call contract."""

import sys
import types

import pytest
import torch

from padt.decoders.attention import (
    DecoderAttention,
    PackedSeqs,
    resolve_backend,
    sdpa_varlen,
    varlen_attention,
)
from padt.decoders.layers import RotaryPE, apply_rotary


def reference_varlen(q, k, v, q_lengths, k_lengths):
    """Plain softmax(q k^T / sqrt(d)) v, one sequence at a time. q/k/v: [T, heads, head_dim]."""
    outs, qs, ks = [], 0, 0
    for lq, lk in zip(q_lengths, k_lengths):
        qi, ki, vi = q[qs : qs + lq], k[ks : ks + lk], v[ks : ks + lk]
        scores = torch.einsum("qhd,khd->hqk", qi, ki) / qi.shape[-1] ** 0.5
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vi))
        qs, ks = qs + lq, ks + lk
    return torch.cat(outs)


def random_pe(n, head_dim, gen):
    angles = torch.rand(n, head_dim // 2, generator=gen) * 6.0
    full = torch.cat((angles, angles), dim=-1)
    return RotaryPE(full.cos(), full.sin())


@pytest.mark.parametrize(("q_lengths", "k_lengths"), [([4, 9, 1], [7, 3, 12]), ([5, 5], [6, 6]), ([3], [1])])
def test_sdpa_varlen_equals_plain_math(q_lengths, k_lengths):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(sum(q_lengths), 2, 8, generator=gen)
    k = torch.randn(sum(k_lengths), 2, 8, generator=gen)
    v = torch.randn(sum(k_lengths), 2, 8, generator=gen)
    got = sdpa_varlen(
        q, k, v, PackedSeqs.from_lengths(torch.tensor(q_lengths)), PackedSeqs.from_lengths(torch.tensor(k_lengths))
    )
    torch.testing.assert_close(got, reference_varlen(q, k, v, q_lengths, k_lengths), atol=1e-5, rtol=1e-5)


def test_packed_seqs_pad_unpad_round_trip():
    seqs = PackedSeqs.from_lengths(torch.tensor([2, 5, 1]))
    x = torch.arange(8.0)[:, None]
    padded = seqs.pad(x)
    assert padded.shape == (3, 5, 1)
    assert padded[0, :, 0].tolist() == [0, 1, 0, 0, 0] and padded[2, 0, 0] == 7
    assert seqs.valid.sum(1).tolist() == [2, 5, 1]
    assert torch.equal(seqs.unpad(padded), x)
    assert seqs.cu_seqlens.dtype == torch.int32 and seqs.cu_seqlens.tolist() == [0, 2, 7, 8]


def test_rotary_matches_rotate_half_form_and_half_table_form():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 8, generator=gen)
    pe = random_pe(6, 8, gen)
    ours = apply_rotary(x, pe)
    # transformers' vision rotary (apply_rotary_pos_emb_vision): x * cos + rotate_half(x) * sin, full tables
    rotated = torch.cat((-x[..., 4:], x[..., :4]), dim=-1)
    torch.testing.assert_close(ours, x * pe.cos[:, None] + rotated * pe.sin[:, None])
    # flash-attn's non-interleaved form with half-width tables (what the official decoder calls)
    cos, sin = pe.cos[:, None, :4], pe.sin[:, None, :4]
    x1, x2 = x[..., :4], x[..., 4:]
    torch.testing.assert_close(ours, torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1))


def test_attention_module_positions_and_gather():
    """Additive position on the query side, rotary on the key side, keys projected per image then gathered."""
    gen = torch.Generator().manual_seed(2)
    attn = DecoderAttention(16, 2)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3, generator=gen)
    xq, qpos = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    image_kv = torch.randn(4, 16, generator=gen)
    pe = random_pe(4, 8, gen)
    index = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # the same 4-row image for two objects
    q_seqs, k_seqs = PackedSeqs.from_lengths(torch.tensor([2, 3])), PackedSeqs.from_lengths(torch.tensor([4, 4]))
    got = attn(xq, image_kv, qpos, pe, q_seqs, k_seqs, "sdpa", kv_index=index)

    q = attn.q_proj(xq + qpos).view(5, 2, 8)
    k = apply_rotary(attn.k_proj(image_kv).view(4, 2, 8), pe)[index]
    v = attn.v_proj(image_kv).view(4, 2, 8)[index]
    want = attn.out_proj(reference_varlen(q, k, v, [2, 3], [4, 4]).reshape(5, 16))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_backend_choice_on_cpu():
    x = torch.zeros(1, dtype=torch.bfloat16)
    assert resolve_backend("sdpa", x) == "sdpa"
    assert resolve_backend("auto", x) == "sdpa"  # CPU: flash cannot run
    with pytest.raises((ImportError, ValueError), match="flash"):
        resolve_backend("flash_attention_2", x)


def test_flash_path_calls_varlen_kernel_with_cu_seqlens(monkeypatch):
    """flash_attn is not installable here: a stand-in module checks the call contract of the flash path."""
    calls = {}

    def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
        calls.update(cu_q=cu_q, cu_k=cu_k, max_q=max_q, max_k=max_k)
        lq = (cu_q[1:] - cu_q[:-1]).tolist()
        lk = (cu_k[1:] - cu_k[:-1]).tolist()
        return reference_varlen(q, k, v, lq, lk)

    fake = types.ModuleType("flash_attn")
    fake.flash_attn_varlen_func = fake_varlen
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(n, 2, 8, generator=gen) for n in (7, 9, 9))
    q_seqs, k_seqs = PackedSeqs.from_lengths(torch.tensor([3, 4])), PackedSeqs.from_lengths(torch.tensor([2, 7]))
    got = varlen_attention(q, k, v, q_seqs, k_seqs, "flash")
    assert calls["cu_q"].dtype == torch.int32 and calls["cu_q"].tolist() == [0, 3, 7]
    assert calls["cu_k"].tolist() == [0, 2, 9] and (calls["max_q"], calls["max_k"]) == (4, 7)
    torch.testing.assert_close(got, varlen_attention(q, k, v, q_seqs, k_seqs, "sdpa"), atol=1e-5, rtol=1e-5)
