"""PaDTDecoder on tiny configs: shapes, batched == alone, a per-object plain-math reference, gradients,
memory shared per image, token_rc mask assembly, and the official parameter names."""

import pytest
import torch
import torch.nn.functional as F

from padt.decoders import (
    DecoderMemory,
    PaDTDecoder,
    PaDTDecoderConfig,
    RotaryPE,
    first_subpatch_pe,
    from_official_state_dict,
    official_name_map,
)
from padt.vision.geometry import merge_block_positions

D_LLM = 48


def tiny_config(**overrides) -> PaDTDecoderConfig:
    kwargs = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 40, "llm_hidden_size": D_LLM}
    kwargs.update(overrides)
    return PaDTDecoderConfig(**kwargs)


def make_decoder(cfg: PaDTDecoderConfig, seed: int = 0, std: float = 0.25) -> PaDTDecoder:
    """A decoder with large random weights (gains included), so attention is far from uniform."""
    torch.manual_seed(seed)
    dec = PaDTDecoder(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return dec.eval()


def make_memory(grids, cfg: PaDTDecoderConfig, seed: int = 0) -> DecoderMemory:
    """Random memory for images of patch grids ``grids`` = [(H, W), ...], high-res rows in merge-block order."""
    gen = torch.Generator().manual_seed(seed)
    m = cfg.spatial_merge_size
    grid_hw = torch.tensor(grids, dtype=torch.long)
    token_rc = merge_block_positions(grid_hw, m)
    # 2-D rotary angles from each patch's (row, col), like the vision tower's.
    freqs = torch.rand(cfg.head_dim // 4, generator=gen) + 0.1
    angles = torch.cat((token_rc[:, :1] * freqs, token_rc[:, 1:] * freqs), dim=-1).float()
    full = torch.cat((angles, angles), dim=-1)
    high_pe = RotaryPE(full.cos(), full.sin())
    n_high = token_rc.shape[0]
    return DecoderMemory(
        low_res=torch.randn(n_high // m**2, cfg.llm_hidden_size, generator=gen),
        low_pe=first_subpatch_pe(high_pe, m),
        high_res=torch.randn(n_high, cfg.hidden_size, generator=gen),
        high_pe=high_pe,
        grid_hw=grid_hw,
        token_rc=token_rc,
    )


def image_memory(memory: DecoderMemory, i: int, m: int) -> DecoderMemory:
    """The memory of image i alone."""
    n_high = (memory.grid_hw[:, 0] * memory.grid_hw[:, 1]).tolist()
    h0, h1 = sum(n_high[:i]), sum(n_high[: i + 1])
    l0, l1 = h0 // m**2, h1 // m**2
    return DecoderMemory(
        low_res=memory.low_res[l0:l1],
        low_pe=RotaryPE(memory.low_pe.cos[l0:l1], memory.low_pe.sin[l0:l1]),
        high_res=memory.high_res[h0:h1],
        high_pe=RotaryPE(memory.high_pe.cos[h0:h1], memory.high_pe.sin[h0:h1]),
        grid_hw=memory.grid_hw[i : i + 1],
        token_rc=memory.token_rc[h0:h1],
    )


GRIDS = [(4, 6), (6, 2)]  # two images of different sizes (patch grids; merge 2)
COUNTS = [2, 5, 1, 3]
IMAGES = [0, 1, 1, 0]


def objects(cfg, seed=1):
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(sum(COUNTS), cfg.llm_hidden_size, generator=gen)
    return states, torch.tensor(COUNTS), torch.tensor(IMAGES)


# ---------------- a per-object reference in plain math, following the official decoder's layout ----------------


def ref_attention(attn, xq, xk, q_pos, k_pos):
    heads = attn.num_heads

    def project(proj, x, pos):
        if isinstance(pos, RotaryPE):
            y = proj(x).view(x.shape[0], heads, -1)
            half = y.shape[-1] // 2
            cos, sin = pos.cos[:, None, :half], pos.sin[:, None, :half]
            y1, y2 = y[..., :half], y[..., half:]
            return torch.cat((y1 * cos - y2 * sin, y2 * cos + y1 * sin), dim=-1)
        return proj(x + pos).view(x.shape[0], heads, -1)

    q, k = project(attn.q_proj, xq, q_pos), project(attn.k_proj, xk, k_pos)
    v = attn.v_proj(xk).view(xk.shape[0], heads, -1)
    w = torch.einsum("qhd,khd->hqk", q, k).div(q.shape[-1] ** 0.5).softmax(-1)
    return attn.out_proj(torch.einsum("hqk,khd->qhd", w, v).reshape(xq.shape[0], -1))


def ref_block(block, q, q0, mem, pe):
    x = block.self_attn_norm(q)
    q = q + ref_attention(block.self_attn, x, x, q0, q0)
    q = q + ref_attention(block.cross_attn, block.cross_attn_query_norm(q), block.cross_attn_memory_norm(mem), q0, pe)
    q = q + block.mlp(block.mlp_norm(q))
    if block.update_memory:
        mem = mem + ref_attention(
            block.memory_update, block.memory_update_memory_norm(mem), block.memory_update_query_norm(q), pe, q0
        )
    return q, mem


def ref_subpixels(upscaler, x):
    """Two stages spelled out.

    Sub-pixel (r1*2 + r2, c1*2 + c2) holds stage-2 split (r2, c2) of stage-1 split (r1, c1).
    """
    s1, s2 = upscaler.stages
    y1 = F.gelu(s1.norm(s1.fc(x))).view(x.shape[0], 2, 2, -1)
    y2 = F.gelu(s2.fc(y1)).view(x.shape[0], 2, 2, 2, 2, -1)
    out = x.new_zeros(x.shape[0], 4, 4, y2.shape[-1])
    for r1 in range(2):
        for c1 in range(2):
            for r2 in range(2):
                for c2 in range(2):
                    out[:, r1 * 2 + r2, c1 * 2 + c2] = y2[:, r1, c1, r2, c2]
    return out


@torch.no_grad()
def reference_decode(dec, states, counts, images, memory, patches=None):
    cfg, m = dec.config, dec.config.spatial_merge_size
    boxes, scores, masks = [], [], []
    offset = 0
    low_counts = (memory.grid_hw[:, 0] * memory.grid_hw[:, 1] // m**2).tolist()
    for n, i in zip(counts.tolist(), images.tolist()):
        mi = image_memory(memory, i, m)
        h, w = mi.grid_hw[0].tolist()
        vrt = dec.input_projection(states[offset : offset + n]) + dec.vrt_embedding.weight
        if patches is not None:  # vrt_patch_features: + the projected low-res row of each VRT's patch
            vrt = vrt + dec.input_projection(mi.low_res)[patches[offset : offset + n] - sum(low_counts[:i])]
        offset += n
        q0 = torch.cat((dec.task_tokens.weight, vrt))
        q, mem = q0, dec.input_projection(mi.low_res)
        for block in dec.low_res_blocks:
            q, mem = ref_block(block, q, q0, mem, mi.low_pe)
        mem = dec.high_res_norm(mem.repeat_interleave(m * m, dim=0) + mi.high_res)
        for block in dec.high_res_blocks:
            q, mem = ref_block(block, q, q0, mem, mi.high_pe)
        boxes.append(dec.box_head(q[0]).sigmoid())
        scores.append(dec.score_head(q[1])[0])
        if cfg.mask_head:
            logits = ref_subpixels(dec.mask_upscaler, mem) @ dec.mask_token_mlp(q[2])
            canvas = torch.zeros(h * 4, w * 4)
            for t, (r, c) in enumerate(mi.token_rc.tolist()):
                canvas[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] = logits[t]
            masks.append(canvas)
    return torch.stack(boxes), torch.stack(scores), masks


# ------------------------------------------------------- tests -------------------------------------------------------


def test_output_shapes():
    cfg = tiny_config()
    dec, memory = make_decoder(cfg), make_memory(GRIDS, cfg)
    out = dec(*objects(cfg), memory)
    k, s = len(COUNTS), cfg.mask_subpixels
    assert out.boxes.shape == (k, 4) and out.score_logits.shape == (k,)
    assert out.mask_logits.shape == (k, 6 * s, 6 * s)
    assert out.mask_hw.tolist() == [[4 * s, 6 * s] if i == 0 else [6 * s, 2 * s] for i in IMAGES]
    assert ((out.boxes >= 0) & (out.boxes <= 1)).all()
    for mask, (mh, mw) in zip(out.mask_logits, out.mask_hw.tolist()):  # zero padding outside the image
        assert mask[mh:].abs().sum() == 0 and mask[:, mw:].abs().sum() == 0


def test_no_objects_gives_empty_outputs_that_backpropagate():
    cfg = tiny_config()
    dec = make_decoder(cfg)
    out = dec(
        torch.zeros(0, D_LLM),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        make_memory(GRIDS, cfg),
    )
    assert out.boxes.shape == (0, 4) and out.score_logits.shape == (0,)
    assert out.mask_logits.shape == (0, 24, 24) and out.mask_hw.shape == (0, 2)
    (out.boxes.sum() + out.score_logits.sum()).backward()  # a batch with no objects must not break training


@pytest.mark.parametrize("num_high_res_blocks", [2, 0])
def test_without_mask_head(num_high_res_blocks):
    """No mask modules, and no parameter that cannot receive a gradient (e.g. a last, unread memory update)."""
    cfg = tiny_config(mask_head=False, mask_upscale_stages=0, num_high_res_blocks=num_high_res_blocks)
    dec = make_decoder(cfg)
    assert not any("mask" in name for name, _ in dec.named_parameters())
    out = dec(*objects(cfg), make_memory(GRIDS, cfg))
    assert out.mask_logits is None and out.boxes.shape == (4, 4)
    (out.boxes.sum() + out.score_logits.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.parameters())


@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_low_res_blocks": 0}, {"num_high_res_blocks": 1, "num_low_res_blocks": 2}],
    ids=["official-layout", "no-low-res-block", "2-low-1-high"],
)
def test_matches_per_object_plain_math_reference(overrides):
    cfg = tiny_config(**overrides)
    dec, memory = make_decoder(cfg), make_memory(GRIDS, cfg)
    states, counts, images = objects(cfg)
    with torch.no_grad():
        out = dec(states, counts, images, memory)
    boxes, scores, masks = reference_decode(dec, states, counts, images, memory)
    torch.testing.assert_close(out.boxes, boxes, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.score_logits, scores, atol=1e-5, rtol=1e-4)
    for got, want, (mh, mw) in zip(out.mask_logits, masks, out.mask_hw.tolist()):
        torch.testing.assert_close(got[:mh, :mw], want, atol=1e-4, rtol=1e-4)


def named_patches(seed=5):
    """A random patch of its object's image for every VRT of ``objects``: rows of the packed ``low_res``."""
    gen = torch.Generator().manual_seed(seed)
    low = [h * w // 4 for h, w in GRIDS]
    return torch.cat([sum(low[:i]) + torch.randint(low[i], (n,), generator=gen) for n, i in zip(COUNTS, IMAGES)])


def test_vrt_patch_features_add_each_named_patch_to_its_query():
    cfg = tiny_config(vrt_patch_features=True)
    dec, memory = make_decoder(cfg), make_memory(GRIDS, cfg)
    states, counts, images = objects(cfg)
    patches = named_patches()
    with torch.no_grad():
        out = dec(states, counts, images, memory, vrt_rows=patches)
        other = dec(states, counts, images, memory, vrt_rows=named_patches(seed=6))
    boxes, scores, masks = reference_decode(dec, states, counts, images, memory, patches)
    torch.testing.assert_close(out.boxes, boxes, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.score_logits, scores, atol=1e-5, rtol=1e-4)
    for got, want, (mh, mw) in zip(out.mask_logits, masks, out.mask_hw.tolist()):
        torch.testing.assert_close(got[:mh, :mw], want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out.boxes, other.boxes)  # the named patches matter


def test_vrt_patch_features_need_valid_patch_rows():
    cfg = tiny_config(vrt_patch_features=True)
    dec, memory = make_decoder(cfg), make_memory(GRIDS, cfg)
    states, counts, images = objects(cfg)
    with pytest.raises(ValueError, match="pass vrt_rows"):
        dec(states, counts, images, memory)
    with pytest.raises(ValueError, match=r"vrt_rows must be \[11\]"):
        dec(states, counts, images, memory, vrt_rows=named_patches()[:-1])
    with pytest.raises(ValueError, match="must index the 9 rows"):
        dec(states, counts, images, memory, vrt_rows=named_patches() + 9)
    # Without the option the rows are not needed, and ignored when given.
    plain = make_decoder(tiny_config())
    with torch.no_grad():
        torch.testing.assert_close(plain(states, counts, images, memory).boxes,
                                   plain(states, counts, images, memory, vrt_rows=named_patches()).boxes)


def test_batched_equals_each_object_alone():
    cfg = tiny_config()
    dec, memory = make_decoder(cfg), make_memory(GRIDS, cfg)
    states, counts, images = objects(cfg)
    with torch.no_grad():
        batched = dec(states, counts, images, memory)
        offset = 0
        for k, (n, i) in enumerate(zip(COUNTS, IMAGES)):
            alone = dec(
                states[offset : offset + n],
                counts[k : k + 1],
                torch.tensor([0]),
                image_memory(memory, i, cfg.spatial_merge_size),
            )
            offset += n
            torch.testing.assert_close(batched.boxes[k], alone.boxes[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched.score_logits[k], alone.score_logits[0], atol=1e-5, rtol=1e-5)
            mh, mw = alone.mask_hw[0].tolist()
            assert batched.mask_hw[k].tolist() == [mh, mw]
            torch.testing.assert_close(batched.mask_logits[k, :mh, :mw], alone.mask_logits[0], atol=1e-5, rtol=1e-5)


def test_memory_projected_once_per_image():
    cfg = tiny_config()
    dec, memory = make_decoder(cfg), make_memory(GRIDS, cfg)
    rows = []
    hook = dec.input_projection.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    dec(*objects(cfg), memory)
    hook.remove()
    n_low = memory.low_res.shape[0]  # sum of N'_i over images, not K * N'
    assert sum(rows) == n_low + sum(COUNTS)


def test_every_parameter_gets_a_gradient():
    cfg = tiny_config()
    dec = make_decoder(cfg).train()
    out = dec(*objects(cfg), make_memory(GRIDS, cfg))
    loss = out.boxes.square().sum() + out.score_logits.sum() + out.mask_logits.square().sum()
    loss.backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_mask_assembly_follows_token_rc_not_row_order():
    """Permuting high-res rows together with their PE and token_rc (and low-res rows with theirs) changes nothing."""
    cfg = tiny_config(num_low_res_blocks=1, num_high_res_blocks=1)
    dec, memory = make_decoder(cfg), make_memory(GRIDS, cfg)
    states, counts, images = objects(cfg)
    area = cfg.spatial_merge_size**2
    # Shuffle merged cells within each image (keeping each cell's rows together) and patches within each cell.
    n_low = (memory.grid_hw[:, 0] * memory.grid_hw[:, 1] // area).tolist()
    gen = torch.Generator().manual_seed(5)
    low_perm = torch.cat([torch.randperm(n, generator=gen) + sum(n_low[:i]) for i, n in enumerate(n_low)])
    within = torch.stack([torch.randperm(area, generator=gen) for _ in range(low_perm.numel())])
    high_perm = (low_perm[:, None] * area + within).flatten()
    shuffled = DecoderMemory(
        low_res=memory.low_res[low_perm],
        low_pe=memory.low_pe.gather(low_perm),
        high_res=memory.high_res[high_perm],
        high_pe=memory.high_pe.gather(high_perm),
        grid_hw=memory.grid_hw,
        token_rc=memory.token_rc[high_perm],
    )
    with torch.no_grad():
        a, b = dec(states, counts, images, memory), dec(states, counts, images, shuffled)
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.mask_logits, b.mask_logits, atol=1e-5, rtol=1e-5)


class _TokenIndexUpscaler(torch.nn.Module):
    """Stand-in up-scaler: every sub-pixel of high-res row t gets the embedding (t+1, 0, ..., 0)."""

    def __init__(self, s, e):
        super().__init__()
        self.s, self.e = s, e

    def forward(self, x):
        out = x.new_zeros(x.shape[0], self.s, self.s, self.e)
        out[..., 0] = torch.arange(1, x.shape[0] + 1, dtype=x.dtype)[:, None, None]
        return out


class _UnitMask(torch.nn.Module):
    def forward(self, x):
        return F.one_hot(torch.zeros(x.shape[0], dtype=torch.long), 2).to(x.dtype)


def test_mask_map_places_each_token_at_its_token_rc_cell():
    """With logit = 1 + (packed row index), the map shows which high-res row landed in which cell."""
    cfg = tiny_config()
    dec, memory = make_decoder(cfg), make_memory([(4, 6), (2, 2)], cfg)
    dec.mask_upscaler = _TokenIndexUpscaler(cfg.mask_subpixels, cfg.mask_embedding_dim)
    dec.mask_token_mlp = _UnitMask()
    with torch.no_grad():
        out = dec(torch.randn(3, D_LLM), torch.tensor([2, 1]), torch.tensor([1, 0]), memory)
    s, first_row = cfg.mask_subpixels, 1
    for k, image in enumerate([1, 0]):
        rc = image_memory(memory, image, cfg.spatial_merge_size).token_rc
        h, w = memory.grid_hw[image].tolist()
        cells = out.mask_logits[k, : h * s, : w * s].reshape(h, s, w, s)
        assert (cells == cells[:, :1, :, :1]).all()  # constant inside each s x s cell
        expected = torch.zeros(h, w)
        expected[rc[:, 0], rc[:, 1]] = torch.arange(first_row, first_row + h * w, dtype=torch.float)
        first_row += h * w
        assert torch.equal(cells[:, 0, :, 0], expected)
        assert out.mask_logits[k, h * s :].abs().sum() == 0 and out.mask_logits[k, :, w * s :].abs().sum() == 0


def test_bfloat16_runs():
    cfg = tiny_config()
    dec = make_decoder(cfg).to(torch.bfloat16)
    states, counts, images = objects(cfg)
    out = dec(states.bfloat16(), counts, images, make_memory(GRIDS, cfg))
    assert out.boxes.dtype == torch.bfloat16 and torch.isfinite(out.mask_logits.float()).all()


def test_explicit_init():
    dec = PaDTDecoder(tiny_config())
    assert torch.equal(dec.high_res_norm.weight, torch.ones(32))
    assert torch.equal(dec.score_head.bias, torch.zeros(1))
    assert 0.01 < dec.box_head.layers[0].weight.std() < 0.03


def test_input_validation():
    cfg = tiny_config()
    dec, memory = make_decoder(cfg), make_memory(GRIDS, cfg)
    states, counts, images = objects(cfg)
    with pytest.raises(ValueError, match="at least one VRT"):
        dec(states, torch.tensor([0, 7, 1, 3]), images, memory)
    with pytest.raises(ValueError, match="sum to"):
        dec(states[:-1], counts, images, memory)
    with pytest.raises(ValueError, match="must index the 2 images"):
        dec(states, counts, torch.tensor([0, 1, 2, 0]), memory)
    memory.high_res = memory.high_res[:-1]
    with pytest.raises(ValueError, match="high_res has shape"):
        dec(states, counts, images, memory)


def test_official_names_cover_every_parameter_and_load_back():
    dec = make_decoder(tiny_config())
    names = list(dec.state_dict())
    mapping = official_name_map(names)
    assert len(set(mapping.values())) == len(names)
    assert (
        mapping["low_res_blocks.0.cross_attn.out_proj.weight"]
        == "low_res_transformer.cross_attn_query_to_image.proj.weight"
    )
    assert mapping["high_res_blocks.1.mlp.layers.1.bias"] == "high_res_transformer2.mlp.2.bias"
    assert mapping["mask_upscaler.stages.0.norm.weight"] == "mask_output_upscaling1.1.weight"
    official = {"vl_decoder." + mapping[n]: t for n, t in dec.state_dict().items()}
    official["model.other.weight"] = torch.zeros(1)
    fresh = PaDTDecoder(tiny_config())
    fresh.load_state_dict(from_official_state_dict(official, names))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), dec.state_dict().values()))
