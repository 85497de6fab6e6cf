"""Checks that need a CUDA GPU (marked ``gpu``; skipped without one). ``benchmarks/gpu_check.py`` runs them with
``pytest -m gpu tests/test_gpu.py`` next to its measurements.

* bf16 against fp32 for the real-size decoder (hidden 1280, 16 heads, LLM width 2048, reference init). Tolerances,
  set about 5x above what bf16 gives on CPU (box 0.002, score 0.006, mask 1.3 % relative, 99.6 % mask signs): box
  coordinates within 0.01 of the image side, score logits within 0.05, mask logits within 5 % (relative L2), mask
  signs agreeing on 98 % of pixels.
* the varlen flash-attention path against sdpa (only where ``flash_attn`` imports): the kernel alone within
  2e-2 (bf16 rounding of either), and the whole decoder within the bf16 tolerances above, on objects of different
  VRT counts so that the packing is ragged.
* generation with the KV cache on CUDA gives the same tokens and boxes as without it, and as on the CPU (the
  shipped demo model, fp32; boxes within 0.01 px with and without cache, 0.05 px against the CPU).
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
from PIL import Image, ImageDraw

from padt.decoders import DecoderMemory, PaDTDecoder, PaDTDecoderConfig, RotaryPE, first_subpatch_pe
from padt.decoders.attention import PackedSeqs, varlen_attention
from padt.vision.geometry import merge_block_positions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_flash = pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash_attn not installed")

CUDA = torch.device("cuda")
BOX_TOL, SCORE_TOL, MASK_REL_TOL, MASK_SIGN_AGREEMENT = 0.01, 0.05, 0.05, 0.98
#: Two images (24x24 and 16x20 patches) and four objects of 5, 1, 3 and 8 VRTs: ragged packing on both sides.
GRIDS = [(24, 24), (16, 20)]
COUNTS, IMAGES = [5, 1, 3, 8], [0, 0, 1, 1]


def decoder_memory(cfg: PaDTDecoderConfig, grids, seed: int = 0) -> DecoderMemory:
    """Random memory with the vision tower's 2-D rotary angles, high-res rows in merge-block order."""
    gen = torch.Generator().manual_seed(seed)
    grid_hw = torch.tensor(grids)
    rc = merge_block_positions(grid_hw, cfg.spatial_merge_size)
    freqs = 1.0 / (10000 ** (torch.arange(cfg.head_dim // 4) / (cfg.head_dim // 4)))
    angles = torch.cat((rc[:, :1] * freqs, rc[:, 1:] * freqs), dim=-1).float()
    full = torch.cat((angles, angles), dim=-1)
    pe = RotaryPE(full.cos(), full.sin())
    n = rc.shape[0]
    return DecoderMemory(
        low_res=torch.randn(n // cfg.spatial_merge_size**2, cfg.llm_hidden_size, generator=gen),
        low_pe=first_subpatch_pe(pe, cfg.spatial_merge_size),
        high_res=torch.randn(n, cfg.hidden_size, generator=gen), high_pe=pe, grid_hw=grid_hw, token_rc=rc,
    )


def on(memory: DecoderMemory, device: torch.device, dtype: torch.dtype) -> DecoderMemory:
    pe = RotaryPE(memory.high_pe.cos.to(device), memory.high_pe.sin.to(device))
    return replace(
        memory, low_res=memory.low_res.to(device, dtype), high_res=memory.high_res.to(device, dtype), high_pe=pe,
        low_pe=RotaryPE(memory.low_pe.cos.to(device), memory.low_pe.sin.to(device)),
        grid_hw=memory.grid_hw.to(device), token_rc=memory.token_rc.to(device),
    )


def decode(cfg: PaDTDecoderConfig, state_dict, dtype: torch.dtype):
    torch.manual_seed(0)
    decoder = PaDTDecoder(cfg).eval()
    decoder.load_state_dict(state_dict)
    decoder = decoder.to(CUDA, dtype)
    memory = decoder_memory(cfg, GRIDS)
    states = torch.randn(sum(COUNTS), cfg.llm_hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return decoder(states.to(CUDA, dtype), torch.tensor(COUNTS, device=CUDA), torch.tensor(IMAGES, device=CUDA),
                       on(memory, CUDA, dtype))


def assert_close_decodings(got, ref) -> None:
    assert (got.boxes.float() - ref.boxes.float()).abs().max() <= BOX_TOL
    assert (got.score_logits.float() - ref.score_logits.float()).abs().max() <= SCORE_TOL
    a, b = got.mask_logits.float(), ref.mask_logits.float()
    assert (a - b).norm() / b.norm() <= MASK_REL_TOL
    valid = b != 0  # zero padding beyond each object's image
    assert ((a > 0) == (b > 0))[valid].float().mean() >= MASK_SIGN_AGREEMENT


@pytest.fixture(scope="module")
def reference_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return PaDTDecoder(PaDTDecoderConfig()).state_dict()


def test_bf16_decoder_matches_fp32(reference_weights):
    cfg = PaDTDecoderConfig(attn_implementation="sdpa")
    bf16, fp32 = decode(cfg, reference_weights, torch.bfloat16), decode(cfg, reference_weights, torch.float32)
    assert_close_decodings(bf16, fp32)


@needs_flash
def test_flash_varlen_kernel_matches_sdpa():
    gen = torch.Generator().manual_seed(0)
    q_seqs = PackedSeqs.from_lengths(torch.tensor([9, 4, 6, 13], device=CUDA))
    k_seqs = PackedSeqs.from_lengths(torch.tensor([576, 576, 320, 320], device=CUDA))
    q = torch.randn(32, 16, 80, generator=gen).to(CUDA, torch.bfloat16)
    k, v = (torch.randn(1792, 16, 80, generator=gen).to(CUDA, torch.bfloat16) for _ in range(2))
    flash = varlen_attention(q, k, v, q_seqs, k_seqs, "flash").float()
    sdpa = varlen_attention(q, k, v, q_seqs, k_seqs, "sdpa").float()
    assert (flash - sdpa).abs().max() <= 2e-2


@needs_flash
def test_flash_decoder_matches_sdpa(reference_weights):
    flash = decode(PaDTDecoderConfig(attn_implementation="flash_attention_2"), reference_weights, torch.bfloat16)
    sdpa = decode(PaDTDecoderConfig(attn_implementation="sdpa"), reference_weights, torch.bfloat16)
    assert_close_decodings(flash, sdpa)


def _scene(shapes) -> Image.Image:
    image = Image.new("RGB", (168, 168), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    for kind, box, colour in shapes:
        (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=colour)
    return image


def _answers(pipe, **generate_kwargs):
    """A REC and an OVD question on two drawn scenes, batched: (text, boxes) of each answer."""
    from padt.text.prompts import ovd_prompt, rec_prompt

    scenes = [
        _scene([("circle", (20, 30, 80, 90), (220, 30, 30)), ("square", (100, 90, 150, 140), (30, 60, 220))]),
        _scene([("square", (30, 20, 90, 80), (30, 60, 220)), ("circle", (90, 100, 140, 150), (30, 180, 40))]),
    ]
    prompts = [rec_prompt("the red circle"), ovd_prompt(["circle", "square"])]
    outputs = pipe.ask(scenes, prompts, max_new_tokens=64, **generate_kwargs)
    return [(out.text, [obj.box for obj in out.objects]) for out in outputs]


def test_generation_with_cache_on_cuda_equals_without_cache_and_cpu():
    from padt import PaDTPipeline
    from padt.apps.demo import SHIPPED_MODEL

    # The shipped demo model answers these scenes with objects, so the recorded states reach the decoder.
    pipe = PaDTPipeline.from_pretrained(SHIPPED_MODEL)
    on_cpu = _answers(pipe)
    pipe.to(CUDA)
    cached, uncached = _answers(pipe, use_cache=True), _answers(pipe, use_cache=False)
    assert [text for text, _ in cached] == [text for text, _ in uncached] == [text for text, _ in on_cpu]
    assert sum(len(boxes) for _, boxes in cached) >= 2
    for (_, a), (_, b), (_, c) in zip(cached, uncached, on_cpu, strict=True):
        assert len(a) == len(b) == len(c)
        for box_a, box_b, box_c in zip(a, b, c, strict=True):  # original-image pixels of a 168-px scene
            assert box_a == pytest.approx(box_b, abs=0.01) and box_a == pytest.approx(box_c, abs=0.05)
