"""Drawing functions: pixels change where boxes, masks, patches and heatmap cells are, and nowhere else."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from padt.results import GroundedObject, GroundedOutput
from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS, tiny_pipeline
from padt.text.prompts import ovd_prompt
from padt.vision.geometry import image_geometry
from padt.visualize import (
    draw_grounding,
    make_gallery,
    object_color,
    save_image,
    vrt_heatmap,
    vrt_step_heatmaps,
    vrt_step_probabilities,
)

H, W = 200, 300
GRAY = 128


def blank() -> np.ndarray:
    return np.full((H, W, 3), GRAY, dtype=np.uint8)


def tiny_geometry(height: int = H, width: int = W):
    return image_geometry(height, width, min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)


def output_of(*objects: GroundedObject, size=(H, W), geometry=None) -> GroundedOutput:
    return GroundedOutput("answer", list(objects), [], [size], [geometry] if geometry is not None else [])


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (before != after).any(axis=-1)


def rectangle_border(x0: int, y0: int, x1: int, y1: int, width: int) -> np.ndarray:
    """Bool (H, W): pixels at most ``width`` px from the outline of the rectangle (inside or outside)."""
    outer = np.zeros((H, W), dtype=bool)
    outer[max(y0 - width, 0) : y1 + width + 1, max(x0 - width, 0) : x1 + width + 1] = True
    inner = np.zeros((H, W), dtype=bool)
    inner[y0 + width : y1 - width + 1, x0 + width : x1 - width + 1] = True
    return outer & ~inner


def test_box_colours_its_border_and_nothing_far_from_it():
    image = blank()
    box = (40, 50, 200, 150)
    out = draw_grounding(image, output_of(GroundedObject("cat", [], box, 0.9)), show_labels=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == GRAY).all(), "the input must not be modified"
    color = object_color(0)
    for y, x in [(50, 120), (150, 120), (100, 40), (100, 200)]:  # a pixel on each side
        assert tuple(out[y, x]) == color
    diff = changed(image, out)
    assert diff.sum() >= 2 * (160 + 100)  # at least the 1-px perimeter
    assert not (diff & ~rectangle_border(*box, width=2)).any(), "pixels changed away from the box's border"
    assert not diff[60:140, 50:190].any(), "the inside of the box must stay untouched"


def test_label_is_written_next_to_the_box_and_inside_the_image():
    image = blank()
    boxes_only = draw_grounding(image, output_of(GroundedObject("cat", [], (40, 0, 200, 150), 0.9)), show_labels=False)
    labelled = draw_grounding(image, output_of(GroundedObject("cat", [], (40, 0, 200, 150), 0.9)))
    extra = changed(boxes_only, labelled)
    assert extra.sum() > 50, "the caption drew nothing"
    ys, xs = np.nonzero(extra)
    # The box touches the top edge, so its caption goes just inside it, starting at the box's left edge.
    assert ys.min() >= 0 and ys.max() < 40 and xs.min() >= 40 and xs.max() < 200


def test_mask_fill_changes_pixels_inside_the_mask_only():
    image = blank()
    mask = np.zeros((H, W), dtype=bool)
    cv2.circle(mask.view(np.uint8), (150, 100), 40, 1, -1)
    obj = GroundedObject("ball", [], (110, 60, 190, 140), 0.8, mask)
    out = draw_grounding(image, output_of(obj), show_boxes=False, show_labels=False, alpha=0.5)
    color = np.array(object_color(0))
    interior = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    expected = np.rint(GRAY * 0.5 + color * 0.5)
    assert np.array_equal(out[interior], np.broadcast_to(expected, out[interior].shape))
    near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    diff = changed(image, out)
    assert diff[interior].all() and not (diff & ~near).any()


def test_patch_outline_lands_on_the_cell_borders_of_the_merged_grid():
    geometry = tiny_geometry()
    rows, cols = geometry.merged_grid_hw
    assert (rows, cols) == (6, 9)  # 200x300 resized to 168x252
    obj = GroundedObject("thing", [1 * cols + 1], (0, 0, 10, 10), 0.5)
    image = blank()
    out = draw_grounding(image, output_of(obj, geometry=geometry), show_boxes=False, show_labels=False)
    # Cell (1, 1) spans x in [300/9, 600/9) and y in [200/6, 400/6) of the original image.
    x0, x1, y0, y1 = round(W / cols), round(2 * W / cols) - 1, round(H / rows), round(2 * H / rows) - 1
    assert geometry.cell_bounds(1, 1) == (x0, y0, x1, y1) == (33, 33, 66, 66)
    expected = np.zeros((H, W), dtype=bool)  # a 1-px outline on the cell's outermost pixels
    expected[[y0, y1], x0 : x1 + 1] = True
    expected[y0 : y1 + 1, [x0, x1]] = True
    assert np.array_equal(changed(image, out), expected)


def test_cells_tile_the_original_image_exactly_once():
    for height, width in [(200, 300), (97, 413), (224, 224)]:
        geometry = tiny_geometry(height, width)
        rows, cols = geometry.merged_grid_hw
        cover = np.zeros((height, width), dtype=int)
        for r in range(rows):
            for c in range(cols):
                x0, y0, x1, y1 = geometry.cell_bounds(r, c)
                cover[y0 : y1 + 1, x0 : x1 + 1] += 1
        assert (cover == 1).all(), (height, width)


def test_each_object_gets_its_own_colour_and_other_images_objects_are_skipped():
    objects = [
        GroundedObject("a", [], (10, 10, 60, 60), 0.9),
        GroundedObject("b", [], (100, 100, 160, 160), 0.9),
        GroundedObject("c", [], (200, 20, 280, 80), 0.9, image_index=1),
    ]
    out = draw_grounding(blank(), output_of(*objects), show_labels=False)
    assert tuple(out[10, 30]) == object_color(0) != object_color(1) == tuple(out[100, 130])
    assert tuple(out[20, 240]) == (GRAY,) * 3, "an object of the sample's second image was drawn"
    second = draw_grounding(blank(), output_of(*objects), image_index=1, show_labels=False)
    assert tuple(second[20, 240]) == object_color(2) and tuple(second[10, 30]) == (GRAY,) * 3


def test_accepts_pil_and_rejects_an_output_of_another_image():
    pil = Image.fromarray(blank())
    out = draw_grounding(pil, output_of(GroundedObject("a", [3], (10, 10, 60, 60), 0.9), geometry=tiny_geometry()))
    assert out.shape == (H, W, 3) and changed(blank(), out).any()
    with pytest.raises(ValueError, match="geometry is for a 100x300 image"):
        draw_grounding(pil, output_of(geometry=tiny_geometry(100, 300)))
    with pytest.raises(ValueError, match="outside the image's 54 cells"):
        draw_grounding(pil, output_of(GroundedObject("a", [54], (0, 0, 1, 1), 0.5), geometry=tiny_geometry()))


def test_heatmap_shapes_and_hot_cell():
    geometry = tiny_geometry()
    rows, cols = geometry.merged_grid_hw
    flat = np.zeros(rows * cols)
    flat[2 * cols + 5] = 1.0
    for values in (flat, flat.reshape(rows, cols), torch.tensor(flat)):
        heat = vrt_heatmap(blank(), values, geometry, alpha=1.0)
        assert heat.shape == (H, W, 3) and heat.dtype == np.uint8
    hot = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_JET)[0, 0, ::-1]
    x0, y0, x1, y1 = geometry.cell_bounds(2, 5)
    inside = np.zeros((H, W), dtype=bool)
    inside[y0 : y1 + 1, x0 : x1 + 1] = True
    # The hot cell takes the colour map's top colour; cells without mass keep the image's pixels.
    assert (heat[inside] == hot).all() and (heat[~inside] == GRAY).all()
    two_peaks = vrt_heatmap(blank(), flat * 0.5 + 0.5 * (np.arange(flat.size) == 0), geometry, alpha=1.0)
    assert (two_peaks[0, 0] == hot).all() and (two_peaks[inside] == hot).all()
    with pytest.raises(ValueError, match="expected 54 values"):
        vrt_heatmap(blank(), np.ones(10), geometry)


def test_gallery_layout_size_and_placement():
    white = np.full((50, 100, 3), 255, dtype=np.uint8)
    tiles = [(white, f"tile {i}") for i in range(5)]
    sheet = make_gallery(tiles, columns=3, tile_size=64)
    assert sheet.shape == (2 * (64 + 24), 3 * 64, 3)
    # Tile 4 (row 1, column 1) is scaled to 64x32 and centred in its 64x64 square under the title band.
    assert (sheet[88 + 24 + 32, 64 + 32] == 255).all()
    assert (sheet[88 + 24 + 2, 64 + 32] == 32).all(), "letterbox bands are the background"
    assert (sheet[88 + 24 + 32, 2 * 64 + 32] == 32).all(), "the sixth slot stays empty"
    assert make_gallery(tiles[:2], columns=3, tile_size=64).shape == (88, 128, 3)
    with pytest.raises(ValueError):
        make_gallery([])


def test_save_image_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = save_image(tmp_path / "sub" / "x.png", image)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), image)
    with pytest.raises(ValueError, match="cannot write image"):
        save_image(tmp_path / "x.unknown-suffix", image)


@pytest.fixture(scope="module")
def pipeline():
    pipe = tiny_pipeline(max_new_tokens=4)
    # Prototypes start at exactly zero (a neutral start for training), which makes every VRT distribution
    # uniform; random norm weights give distributions that differ from step to step.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in pipe.model.vrt_prototypes.norm.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return pipe


def test_step_probabilities_are_the_teacher_forced_vrt_distributions(pipeline):
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)  # patches must differ
    prompt = ovd_prompt(["circle"])
    answer = 'There are 2 "circle" (<|VRT_3|><|VRT_4|>, <|VRT_40|>) in this image.'
    output = pipeline.decode_answer(image, answer, prompt)
    geometry, steps = vrt_step_probabilities(pipeline, image, prompt, output=output)
    assert geometry.original_hw == (H, W)
    assert [token for token, _ in steps] == ["<|VRT_3|>", "<|VRT_4|>", "<|VRT_40|>"]
    # Independent path: hidden states of the forced answer, the model's VRT head, the state *before* each VRT.
    batch = pipeline.processor([image], [prompt], answers=[answer])
    model = pipeline.model
    with torch.no_grad():
        vision = model.encode_images(batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], 1)
        hidden = model.answer_states(
            vision.codec.to_global(batch["input_ids"]), vision, batch["attention_mask"], batch["mm_token_type_ids"]
        )
        expected = model.vrt_logits(hidden, vision)[0].softmax(-1)
    vrt_positions = (batch["input_ids"][0] >= model.text_vocab_size).nonzero().flatten()
    for (_, probabilities), t in zip(steps, vrt_positions.tolist()):
        assert probabilities.shape == (geometry.num_vrts,)
        assert torch.allclose(probabilities.sum(), torch.tensor(1.0), atol=1e-5)
        assert probabilities.max() > 2.0 / geometry.num_vrts, "a uniform distribution cannot tell steps apart"
        assert torch.allclose(probabilities, expected[t - 1], atol=1e-5)
    heatmaps = vrt_step_heatmaps(pipeline, image, prompt, output=output)
    assert [t for t, _ in heatmaps] == [t for t, _ in steps]
    assert all(h.shape == (H, W, 3) for _, h in heatmaps)


def test_decoded_objects_render(pipeline):
    """A real (random-weight) decoder output: boxes, masks and patches of two objects all change pixels."""
    image = blank()
    answer = 'There are 2 "circle" (<|VRT_3|><|VRT_4|>, <|VRT_40|>) in this image.'
    output = pipeline.decode_answer(image, answer, ovd_prompt(["circle"]))
    assert len(output.objects) == 2 and all(o.mask is not None for o in output.objects)
    assert output.geometries == [pipeline.processor.geometry(image)]  # the output carries its grid
    out = draw_grounding(image, output)
    assert changed(image, out).sum() > 100
