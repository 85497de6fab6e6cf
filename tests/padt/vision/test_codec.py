"""VRTCodec (local <-> global ids, logit masks, patch positions) and the two high-res patch orders, checked against
the processor's own patch order and the tiny vision tower's window order."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from padt.decoders import merge_block_token_rc
from padt.testing import tiny_pipeline
from padt.vision.codec import (
    VRTCodec,
    high_res_layout,
    merge_block_positions,
    patch_to_rc,
    rc_to_patch,
    window_order,
)

V = 1000
# sample 0: two images (2x3 and 3x2 merged cells); sample 1: no image; sample 2: one 4x4 image.
MERGED = ((2, 3), (3, 2), (4, 4))
OWNERS = (0, 0, 2)


@pytest.fixture(scope="module")
def codec() -> VRTCodec:
    return VRTCodec(V, MERGED, OWNERS, num_samples=3)


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---- counts, spans, ids -----------------------------------------------------------------------------------
def test_counts_offsets_and_sample_spans(codec):
    assert codec.patch_counts == [6, 6, 16]
    assert codec.num_vrts == 28 and codec.num_images == 3
    assert codec.image_offsets == [0, 6, 12]
    assert codec.sample_spans() == [(0, 12), (12, 12), (12, 28)]


def test_local_global_round_trip_with_multi_image_and_imageless_samples(codec):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (3, 40), generator=gen)  # text everywhere
    ids[0, ::3] = V + torch.randint(0, 12, (14,), generator=gen)  # sample 0: local 0..11 over both images
    ids[2, 1::2] = V + torch.randint(0, 16, (20,), generator=gen)  # sample 2: local 0..15
    ids[0, 0], ids[0, 3], ids[2, 1], ids[2, 3] = V + 0, V + 11, V + 0, V + 15  # the edges of each range
    global_ids = codec.to_global(ids)
    text = ids < V
    assert torch.equal(global_ids[text], ids[text])  # text passes through
    assert torch.equal(global_ids[0][ids[0] >= V], ids[0][ids[0] >= V])  # sample 0 starts at global 0
    assert torch.equal(global_ids[2][ids[2] >= V], ids[2][ids[2] >= V] + 12)  # after sample 0's 12 patches
    assert global_ids[2, 1] == V + 12 and global_ids[2, 3] == V + 27
    assert torch.equal(codec.to_local(global_ids), ids)


def test_out_of_range_local_id_names_the_sample_and_the_index(codec):
    ids = torch.zeros(3, 5, dtype=torch.long)
    ids[2, 4] = V + 16  # sample 2 has 16 patches: 0..15
    with pytest.raises(ValueError, match=r"sample 2, position 4: local VRT index 16 .* 16 patches"):
        codec.to_global(ids)
    ids = torch.zeros(3, 5, dtype=torch.long)
    ids[1, 2] = V  # sample 1 has no image at all
    with pytest.raises(ValueError, match=r"sample 1, position 2: local VRT index 0 .* 0 patches"):
        codec.to_global(ids)


def test_global_id_of_another_samples_image_is_rejected(codec):
    ids = torch.zeros(3, 4, dtype=torch.long)
    ids[0, 1] = V + 12  # sample 2's first patch written in sample 0's row
    with pytest.raises(ValueError, match=r"sample 0, position 1: global VRT index 12"):
        codec.to_local(ids)
    ids = torch.zeros(3, 4, dtype=torch.long)
    ids[2, 0] = V + 11  # sample 0's last patch in sample 2's row
    with pytest.raises(ValueError, match=r"sample 2, position 0: global VRT index 11"):
        codec.to_local(ids)


def test_ids_must_be_batch_by_time(codec):
    with pytest.raises(ValueError, match=r"expected ids of shape \[3, T\]"):
        codec.to_global(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected ids of shape \[3, T\]"):
        codec.to_local(torch.zeros(12, dtype=torch.long))


def test_logit_mask_allows_exactly_the_samples_own_patches(codec):
    mask = codec.logit_mask()
    assert mask.dtype == torch.bool and tuple(mask.shape) == (3, 28)
    expected = torch.zeros(3, 28, dtype=torch.bool)
    expected[0, :12] = True  # both images of sample 0
    expected[2, 12:] = True  # sample 1 has no image: nothing
    assert torch.equal(mask, expected)
    assert not (mask[0] & mask[2]).any()


def test_construction_errors():
    with pytest.raises(ValueError, match="one entry per image"):
        VRTCodec(V, ((2, 2),), (0, 0), num_samples=1)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        VRTCodec(V, ((2, 2),), (2,), num_samples=2)
    with pytest.raises(ValueError, match="ordered by sample"):
        VRTCodec(V, ((2, 2), (2, 2)), (1, 0), num_samples=2)
    with pytest.raises(ValueError, match="still images"):
        VRTCodec.from_grid_thw(V, torch.tensor([[2, 4, 4]]), 2, [0], 1)


def test_from_grid_thw_merges_the_grid():
    codec = VRTCodec.from_grid_thw(V, torch.tensor([[1, 8, 12], [1, 4, 4]]), 2, torch.tensor([0, 1]), 2)
    assert codec.merged_hw == ((4, 6), (2, 2)) and codec.image_sample == (0, 1)
    assert codec.sample_spans() == [(0, 24), (24, 28)]


# ---- patch positions --------------------------------------------------------------------------------------
def test_patch_rc_round_trip_in_raster_order():
    for merged_w in (1, 3, 7):
        patches = torch.arange(5 * merged_w)
        rows, cols = patch_to_rc(patches, merged_w)
        assert torch.equal(rows, patches // merged_w) and torch.equal(cols, patches % merged_w)
        assert torch.equal(rc_to_patch(rows, cols, merged_w), patches)
    assert patch_to_rc(7, 3) == (2, 1) and rc_to_patch(2, 1, 3) == 7


def test_locate_and_local_to_image_patch(codec):
    assert codec.locate(0) == (0, 0, 0)
    assert codec.locate(5) == (0, 1, 2)  # image 0 is 2x3
    assert codec.locate(6) == (1, 0, 0)
    assert codec.locate(9) == (1, 1, 1)  # image 1 is 3x2: local 3 -> row 1, col 1
    assert codec.locate(27) == (2, 3, 3)
    with pytest.raises(ValueError, match=r"outside 0\.\.27"):
        codec.locate(28)
    # sample 0's local index 7 is the second patch (index 1) of its second image
    assert codec.local_to_image_patch(0, 7) == (1, 1)
    assert codec.local_to_image_patch(0, 4) == (0, 4)
    assert codec.local_to_image_patch(2, 13) == (2, 13)


def test_merge_block_positions_are_the_processor_order():
    grid = torch.tensor([[1, 6, 4], [1, 2, 8]])
    ours = torch.cat([merge_block_positions((h, w), 2) for _, h, w in grid.tolist()])
    assert torch.equal(ours, get_vision_position_ids(grid, 2))
    assert torch.equal(ours, merge_block_token_rc(grid[:, 1:], 2))
    # the first merged cell covers the top-left 2x2 patches, in raster order
    assert ours[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


# ---- high-res layouts -------------------------------------------------------------------------------------
GRIDS = torch.tensor([[1, 16, 12], [1, 8, 8], [1, 10, 14]])  # more than one 112-px window per side


def test_raster_layout_is_identity_with_true_positions():
    permutation, token_rc = high_res_layout(GRIDS, 2, 112, 14, "raster")
    assert torch.equal(permutation, torch.arange(int((GRIDS[:, 1] * GRIDS[:, 2]).sum())))
    assert torch.equal(token_rc, get_vision_position_ids(GRIDS, 2))


def test_official_layout_is_the_towers_window_order_placed_as_raster():
    unit = 4
    permutation, token_rc = high_res_layout(GRIDS, 2, 112, 14, "official")
    window_index, _ = get_vision_window_index(GRIDS, 2, 112, 14)
    # the tower permutes merge blocks (x.view(-1, unit, C)[window_index]); we do the same to patch indices
    expected = torch.arange(permutation.numel()).view(-1, unit)[window_index].flatten()
    assert torch.equal(permutation, expected)
    assert torch.equal(window_order(GRIDS, 2, 112, 14), window_index.long())
    assert torch.equal(torch.sort(permutation).values, torch.arange(permutation.numel()))
    # each image's tokens stay within that image, and token p of an image is placed at (p // W, p % W)
    start = 0
    for _, h, w in GRIDS.tolist():
        block = permutation[start : start + h * w]
        assert int(block.min()) == start and int(block.max()) == start + h * w - 1
        p = torch.arange(h * w)
        assert torch.equal(token_rc[start : start + h * w], torch.stack([p // w, p % w], dim=-1))
        start += h * w
    # and that is *not* the true position of those tokens (PADT_REFERENCE §1.5)
    true_rc = get_vision_position_ids(GRIDS, 2)[permutation]
    assert (true_rc == token_rc).all(dim=-1).float().mean() < 0.5


def test_raster_and_window_orders_round_trip():
    permutation, _ = high_res_layout(GRIDS, 2, 112, 14, "official")
    features = torch.randn(permutation.numel(), 3)
    window = features[permutation]
    assert torch.equal(window[torch.argsort(permutation)], features)


def test_unknown_patch_order_is_rejected():
    with pytest.raises(ValueError, match="patch_order must be one of"):
        high_res_layout(GRIDS, 2, 112, 14, "zigzag")


# ---- against the tiny vision tower ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def towers():
    """The same random weights under both patch orders, and a two-image batch with several windows per image."""
    raster = tiny_pipeline(seed=3)
    official = tiny_pipeline(seed=3, patch_order="official")
    for (name, a), (_, b) in zip(raster.model.state_dict().items(), official.model.state_dict().items()):
        assert torch.equal(a, b), name
    batch = raster.processor([noise(224, 168), noise(112, 112, 1)], ["a", "b"])
    return raster, official, batch


def _encode(model, batch):
    with torch.no_grad():
        return model.encode_images(batch["pixel_values"], batch["image_grid_thw"], batch["image_sample"], 2)


def test_official_high_res_is_the_towers_own_last_hidden_state(towers):
    raster, official, batch = towers
    grid = batch["image_grid_thw"]
    assert grid.tolist() == [[1, 16, 12], [1, 8, 8]]
    with torch.no_grad():
        tower = raster.model.model.visual(batch["pixel_values"], grid_thw=grid)
    memory_official = _encode(official.model, batch).memory
    memory_raster = _encode(raster.model, batch).memory
    assert torch.equal(memory_official.high_res, tower.last_hidden_state)
    window_index, _ = get_vision_window_index(grid, 2, 112, 14)
    unpermuted = tower.last_hidden_state.view(-1, 4, 64)[torch.argsort(window_index)].flatten(0, 1)
    assert torch.equal(memory_raster.high_res, unpermuted)
    assert not torch.equal(memory_raster.high_res, memory_official.high_res)
    # positions: raster = the processor's true (h, w); official = raster placement of window-ordered tokens
    assert torch.equal(memory_raster.token_rc, get_vision_position_ids(grid, 2))
    _, official_rc = high_res_layout(grid, 2, 112, 14, "official")
    assert torch.equal(memory_official.token_rc, official_rc)


def test_raster_high_res_is_in_processor_order(towers):
    """With the blocks removed the tower's output is patch_embed(pixels): raster must give it back unpermuted."""
    raster, official, batch = towers
    grid = batch["image_grid_thw"]
    hollow_raster, hollow_official = copy.deepcopy(raster.model), copy.deepcopy(official.model)
    for model in (hollow_raster, hollow_official):
        model.model.visual.blocks = torch.nn.ModuleList()
    with torch.no_grad():
        embedded = raster.model.model.visual.patch_embed(batch["pixel_values"])  # processor order
    window_index, _ = get_vision_window_index(grid, 2, 112, 14)
    assert torch.equal(_encode(hollow_raster, batch).memory.high_res, embedded)
    assert torch.equal(
        _encode(hollow_official, batch).memory.high_res, embedded.view(-1, 4, 64)[window_index].flatten(0, 1)
    )


def test_rotary_pe_follows_the_high_res_tokens(towers):
    raster, official, batch = towers
    grid = batch["image_grid_thw"]
    visual = raster.model.model.visual
    with torch.no_grad():
        cos, sin = visual.rotary_pos_emb(torch.zeros(1), get_vision_position_ids(grid, 2))
    permutation, _ = high_res_layout(grid, 2, 112, 14, "official")
    for model, order in ((raster.model, torch.arange(permutation.numel())), (official.model, permutation)):
        memory = _encode(model, batch).memory
        assert torch.allclose(memory.high_pe.cos, cos[order]) and torch.allclose(memory.high_pe.sin, sin[order])
        # low-res rows take the PE of the first of their 2x2 high-res rows
        assert torch.equal(memory.low_pe.cos, memory.high_pe.cos[::4])
        assert torch.equal(memory.low_pe.sin, memory.high_pe.sin[::4])


def test_merged_cell_centres_are_normalised_raster_centres():
    from padt.vision.codec import merged_cell_centres

    centres = merged_cell_centres([(2, 3), (1, 1)])
    assert centres.shape == (7, 2)
    torch.testing.assert_close(centres[:3], torch.tensor([[0.25, 1 / 6], [0.25, 0.5], [0.25, 5 / 6]]))
    torch.testing.assert_close(centres[5], torch.tensor([0.75, 5 / 6]))
    torch.testing.assert_close(centres[6], torch.tensor([0.5, 0.5]))
    assert merged_cell_centres([]).shape == (0, 2)
