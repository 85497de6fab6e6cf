"""Patch selection on hand-made masks and VRT sampling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from padt.datasets.patches import coverage_grid, sample_vrt_patches, select_patches
from padt.vision.geometry import image_geometry


def test_mask_on_two_cells_selects_their_raster_indices() -> None:
    geometry = image_geometry(84, 112)  # already multiples of 28: merged grid 3 x 4, no resize
    assert geometry.merged_grid_hw == (3, 4)
    mask = np.zeros((84, 112), dtype=np.uint8)
    mask[0:56, 28:56] = 1  # cells (0, 1) and (1, 1)
    width = geometry.merged_grid_hw[1]
    assert select_patches(mask, geometry) == [1, width + 1]


@pytest.mark.parametrize(
    ("pixels", "inclusive", "strict"),
    [(27, [], []), (28, [0], []), (29, [0], [0])],
)
def test_threshold_edge_is_inclusive_unless_strict(pixels: int, inclusive: list[int], strict: list[int]) -> None:
    # 28 of the 784 pixels of cell (0, 0) are exactly the official 1/28 (mean of mask*255 == 255/28).
    geometry = image_geometry(56, 56)
    mask = np.zeros((56, 56), dtype=np.uint8)
    mask.reshape(-1)[[row * 56 + col for row in range(28) for col in range(28)][:pixels]] = 1
    assert coverage_grid(mask, geometry)[0, 0] == pytest.approx(pixels / 784)
    assert select_patches(mask, geometry) == inclusive
    assert select_patches(mask, geometry, strict=True) == strict


def test_min_coverage_is_a_parameter() -> None:
    geometry = image_geometry(56, 56)
    mask = np.zeros((56, 56), dtype=np.uint8)
    mask[0:14, 0:28] = 1  # half of cell (0, 0)
    assert select_patches(mask, geometry, min_coverage=0.5) == [0]
    assert select_patches(mask, geometry, min_coverage=0.5, strict=True) == []
    with pytest.raises(ValueError, match="min_coverage"):
        select_patches(mask, geometry, min_coverage=1.5)


def test_resized_image_uses_the_processor_grid() -> None:
    geometry = image_geometry(100, 150)  # smart_resize -> 112 x 140: merged grid 4 x 5
    assert geometry.merged_grid_hw == (4, 5)
    full = np.ones((100, 150), dtype=np.uint8)
    assert select_patches(full, geometry) == list(range(20))
    right_half = np.zeros((100, 150), dtype=np.uint8)
    right_half[:, 75:] = 1
    assert select_patches(right_half, geometry) == [k for k in range(20) if k % 5 >= 2]
    assert select_patches(np.zeros((100, 150), dtype=np.uint8), geometry) == []
    with pytest.raises(ValueError, match="differs from the image size"):
        select_patches(np.ones((10, 10), dtype=np.uint8), geometry)


def test_random_sampling_is_deterministic_and_replaces_only_when_short() -> None:
    patches = [3, 4, 5, 10, 11, 12, 20]
    first = sample_vrt_patches(patches, 5, "random", np.random.default_rng(7))
    second = sample_vrt_patches(patches, 5, "random", np.random.default_rng(7))
    assert first == second
    assert len(first) == 5 and len(set(first)) == 5 and set(first) <= set(patches)  # without replacement
    short = sample_vrt_patches([8, 9], 5, "random", np.random.default_rng(0))
    assert len(short) == 5 and set(short) <= {8, 9}  # with replacement
    draws = {tuple(sample_vrt_patches(patches, 5, "random", np.random.default_rng(s))) for s in range(20)}
    assert len(draws) > 1


def test_repeats_sampling_mixes_runs_of_one_patch_with_spread_ones() -> None:
    patches = [3, 4, 5, 10, 11, 12, 20]
    draws = [sample_vrt_patches(patches, 5, "repeats", np.random.default_rng(s)) for s in range(200)]
    assert all(len(d) == 5 and set(d) <= set(patches) for d in draws)
    distinct = Counter(len(set(d)) for d in draws)
    assert set(distinct) == {1, 2, 3, 4, 5}  # every count of distinct patches from 1 to n occurs
    assert min(distinct.values()) > 200 / 5 / 2  # drawn uniformly: no count is rare
    assert sample_vrt_patches(patches, 5, "repeats", np.random.default_rng(3)) == draws[3]
    short = [sample_vrt_patches([8, 9], 5, "repeats", np.random.default_rng(s)) for s in range(50)]
    assert {len(set(d)) for d in short} == {1, 2} and all(set(d) <= {8, 9} for d in short)
    with pytest.raises(ValueError, match="n must be positive"):
        sample_vrt_patches(patches, 0, "repeats")


def test_extremes_sampling_takes_one_patch_per_side() -> None:
    width = 5
    block = [row * width + col for row in range(1, 4) for col in range(1, 4)]  # 3 x 3 block, centre cell 12
    picks = sample_vrt_patches(block, mode="extremes", rng=np.random.default_rng(0), grid_width=width)
    centre, left, top, right, bottom = picks
    assert centre == 12
    assert left % width == 1 and right % width == 3 and top // width == 1 and bottom // width == 3
    again = sample_vrt_patches(block, mode="extremes", rng=np.random.default_rng(0), grid_width=width)
    assert picks == again
    line = sample_vrt_patches([0, 1], mode="extremes", rng=np.random.default_rng(0), grid_width=width)
    assert len(line) == 5 and set(line) <= {0, 1}  # no centre cells: the centre pick falls back to any cell


def test_all_mode_and_errors() -> None:
    assert sample_vrt_patches([9, 2, 5], mode="all") == [2, 5, 9]
    with pytest.raises(ValueError, match="no patches"):
        sample_vrt_patches([], 5)
    with pytest.raises(ValueError, match="grid_width"):
        sample_vrt_patches([1, 2], mode="extremes", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample_vrt_patches([1, 2], mode="middle", rng=np.random.default_rng(0))  # type: ignore[arg-type]
