"""VRTCodec: local <-> global ids, logit masks, where a VRT index lands (image, row, col)."""

from __future__ import annotations

import pytest
import torch

from padt.vision.codec import VRTCodec

V = 1000
# sample 0: two images (2x3 and 3x2 merged cells); sample 1: no image; sample 2: one 4x4 image.
MERGED = ((2, 3), (3, 2), (4, 4))
OWNERS = (0, 0, 2)


@pytest.fixture(scope="module")
def codec() -> VRTCodec:
    return VRTCodec(V, MERGED, OWNERS, num_samples=3)


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
    assert codec.merged_hw == ((4, 6), (2, 2)) and codec.sample_of_image == (0, 1)
    assert codec.sample_spans() == [(0, 24), (24, 28)]


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
