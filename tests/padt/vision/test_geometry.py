"""The image geometry: frames and conversions of one image, the two high-res patch orders (checked against the
processor's own patch order and the tiny vision tower's window order)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from padt.testing import tiny_pipeline
from padt.vision.geometry import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    GridSpec,
    ImageGeometry,
    PatchGrid,
    high_res_layout,
    image_geometry,
    merge_block_positions,
    merged_cell_centres,
    raster_rc,
    window_order,
)


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_qwen_defaults():
    spec = GridSpec()
    assert (spec.patch_size, spec.merge_size, spec.cell_size) == (14, 2, 28)
    assert (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS) == (56 * 56, 28 * 28 * 16384)


def test_geometry_of_an_image_outside_the_budget():
    geometry = GridSpec(max_pixels=224 * 224).geometry(480, 640)
    assert geometry.original_hw == (480, 640)
    h, w = geometry.resized_hw
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 224 * 224
    assert geometry.patch_grid_hw == (h // 14, w // 14) and geometry.merged_grid_hw == (h // 28, w // 28)
    assert geometry.num_vrts == (h // 28) * (w // 28) == geometry.grid.num_cells
    assert geometry == image_geometry(480, 640, max_pixels=224 * 224)


def test_tiny_images_are_upscaled_first_keeping_the_aspect():
    assert GridSpec().upscaled_size(10, 40) == (28, 112)
    assert GridSpec().upscaled_size(28, 40) == (28, 40)
    assert GridSpec(patch_size=16).upscaled_size(8, 16) == (32, 64)  # 32-px cells


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        GridSpec().geometry(0, 10)
    with pytest.raises(ValueError):
        GridSpec().geometry(10, 3000)  # beyond Qwen's 200:1


@pytest.mark.parametrize("original", [(100, 150), (224, 224), (37, 501)])
def test_original_resized_round_trip(original):
    geometry = GridSpec(max_pixels=224 * 224).geometry(*original)
    rng = np.random.default_rng(0)
    for x, y in rng.uniform(0, 1, size=(20, 2)) * np.array(original[::-1]):
        rx, ry = geometry.to_resized(x, y)
        assert np.allclose(geometry.to_original(rx, ry), (x, y))
    assert np.allclose(geometry.to_resized(original[1], original[0]), geometry.resized_hw[::-1])


@pytest.mark.parametrize("original", [(100, 150), (224, 224), (37, 501)])
def test_cells_tile_the_original_image(original):
    geometry = GridSpec(max_pixels=224 * 224).geometry(*original)
    covered = np.zeros(original, dtype=int)
    rows, cols = geometry.merged_grid_hw
    for cell in range(rows * cols):
        x0, y0, x1, y1 = geometry.cell_bounds(*geometry.cell_rc(cell))
        covered[y0 : y1 + 1, x0 : x1 + 1] += 1
    assert (covered == 1).all()


def test_raster_rc_round_trip_and_range():
    for width in (1, 3, 7):
        for index in range(5 * width):
            row, col = raster_rc(index, (5, width))
            assert row * width + col == index and 0 <= col < width
    with pytest.raises(ValueError, match="outside the 2x3 grid"):
        raster_rc(6, (2, 3))


def test_geometry_dict_round_trip():
    geometry = GridSpec().geometry(333, 444)
    assert ImageGeometry.from_dict(geometry.to_dict()) == geometry


def test_patch_grid_from_grid_thw_refuses_videos():
    assert PatchGrid.from_grid_thw([1, 8, 12], 2).merged_hw == (4, 6)
    with pytest.raises(ValueError, match="still images"):
        PatchGrid.from_grid_thw([2, 8, 12], 2)


def test_merge_block_positions_are_the_processor_order():
    grid = torch.tensor([[1, 6, 4], [1, 2, 8]])
    ours = torch.cat([PatchGrid((h, w), 2).merge_block_positions() for _, h, w in grid.tolist()])
    assert torch.equal(ours, get_vision_position_ids(grid, 2))
    assert torch.equal(ours, merge_block_positions(grid[:, 1:], 2))
    # the first merged cell covers the top-left 2x2 patches, in raster order
    assert ours[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


# ---- high-res layouts -------------------------------------------------------------------------------------
GRIDS = torch.tensor([[1, 16, 12], [1, 8, 8], [1, 10, 14]])  # more than one 112-px window per side


def test_raster_layout_is_identity_with_true_positions():
    permutation, token_rc = high_res_layout(GRIDS, 2, "raster", window_size=112, patch_size=14)
    assert torch.equal(permutation, torch.arange(int((GRIDS[:, 1] * GRIDS[:, 2]).sum())))
    assert torch.equal(token_rc, get_vision_position_ids(GRIDS, 2))


def test_official_layout_is_the_towers_window_order_placed_as_raster():
    unit = 4
    permutation, token_rc = high_res_layout(GRIDS, 2, "official", window_size=112, patch_size=14)
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
    # and that is *not* the true position of those tokens: the official code assembles masks as if it were
    true_rc = get_vision_position_ids(GRIDS, 2)[permutation]
    assert (true_rc == token_rc).all(dim=-1).float().mean() < 0.5


def test_raster_and_window_orders_round_trip():
    permutation, _ = high_res_layout(GRIDS, 2, "official", window_size=112, patch_size=14)
    features = torch.randn(permutation.numel(), 3)
    window = features[permutation]
    assert torch.equal(window[torch.argsort(permutation)], features)


def test_unknown_patch_order_is_rejected():
    with pytest.raises(ValueError, match="patch_order must be one of"):
        high_res_layout(GRIDS, 2, "zigzag", window_size=112, patch_size=14)


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
        return model.encode_images(batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], 2)


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
    _, official_rc = high_res_layout(grid, 2, "official", window_size=112, patch_size=14)
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
    permutation, _ = high_res_layout(grid, 2, "official", window_size=112, patch_size=14)
    for model, order in ((raster.model, torch.arange(permutation.numel())), (official.model, permutation)):
        memory = _encode(model, batch).memory
        assert torch.allclose(memory.high_pe.cos, cos[order]) and torch.allclose(memory.high_pe.sin, sin[order])
        # low-res rows take the PE of the first of their 2x2 high-res rows
        assert torch.equal(memory.low_pe.cos, memory.high_pe.cos[::4])
        assert torch.equal(memory.low_pe.sin, memory.high_pe.sin[::4])


def test_merged_cell_centres_are_normalised_raster_centres():
    centres = merged_cell_centres([(2, 3), (1, 1)])
    assert centres.shape == (7, 2)
    torch.testing.assert_close(centres[:3], torch.tensor([[0.25, 1 / 6], [0.25, 0.5], [0.25, 5 / 6]]))
    torch.testing.assert_close(centres[5], torch.tensor([0.75, 5 / 6]))
    torch.testing.assert_close(centres[6], torch.tensor([0.5, 0.5]))
    assert merged_cell_centres([]).shape == (0, 2)
