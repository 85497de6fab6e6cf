"""Pictures of what a PaDT model answered: boxes, masks, VRT patches, per-step VRT heatmaps, galleries.

All functions take images as RGB ``uint8`` numpy arrays ``(H, W, 3)``, PIL images or paths (anything
:func:`padt.vision.images.load_image` takes) and return RGB ``uint8`` arrays; inputs are never modified.
Coordinates follow :class:`~padt.results.GroundedOutput`: boxes and masks in original-image pixels, patches as
raster indices ``k = row * W' + col`` on the image's merged grid ``(H', W')``.

The merged grid covers the whole original image, because the processor *stretches* the image to its resized
size: cell ``(r, c)`` spans ``x`` in ``[c * W / W', (c + 1) * W / W')`` and ``y`` in ``[r * H / H', (r + 1) * H / H')``
of the original image (:meth:`padt.vision.geometry.ImageGeometry.cell_bounds`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from padt.results import GroundedOutput
from padt.text.prompts import vrt_token
from padt.vision.geometry import ImageGeometry
from padt.vision.images import load_image

if TYPE_CHECKING:
    from padt.pipeline import PaDTPipeline

#: A colour per object, cycled: 20 saturated RGB colours far apart in hue and lightness (deterministic, so the
#: same object index always gets the same colour in every picture).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 225, 25), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 255, 255),
)  # fmt: skip

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TITLE_HEIGHT = 24  # pixels of the caption band above each gallery tile


def object_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of object ``index`` (cycles through :data:`PALETTE`)."""
    return PALETTE[index % len(PALETTE)]


def as_rgb_array(image: Any) -> np.ndarray:
    """An RGB ``uint8`` array ``(H, W, 3)`` copy of ``image`` (array, PIL image or path)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    return np.array(load_image(image), dtype=np.uint8)


def _check_geometry(geometry: ImageGeometry, shape: tuple[int, ...]) -> None:
    if tuple(geometry.original_hw) != tuple(shape[:2]):
        raise ValueError(
            f"the geometry is for a {geometry.original_hw[0]}x{geometry.original_hw[1]} image but the image is "
            f"{shape[0]}x{shape[1]} (height x width): draw the output on the image it belongs to"
        )


def _thickness(shape: tuple[int, ...]) -> int:
    # Lines that stay visible on big photos without swamping 224-px thumbnails.
    return max(1, round(min(shape[:2]) / 250))


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only; anything else would come out as "?" anyway.
    return text.encode("ascii", "replace").decode("ascii")


def draw_caption(canvas: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """Write ``text`` in place on a filled ``color`` band whose bottom-left corner is near ``(x, y)``.

    The band is moved inside the image when it would leave it (a box at the top edge gets its caption inside).
    """
    text = _ascii(text)
    scale = max(0.4, min(canvas.shape[:2]) / 700)
    weight = max(1, round(scale * 1.5))
    (w, h), baseline = cv2.getTextSize(text, _FONT, scale, weight)
    height, width = canvas.shape[:2]
    x = int(min(max(x, 0), max(width - w - 4, 0)))
    top = int(y) - h - baseline - 4
    if top < 0:  # no room above: put the band just inside the box's top edge
        top = min(int(y) + 1, max(height - h - baseline - 4, 0))
    cv2.rectangle(canvas, (x, top), (x + w + 4, top + h + baseline + 4), color, thickness=-1)
    # Dark text on light colours and white text on dark ones (ITU-R BT.601 luma).
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    cv2.putText(canvas, text, (x + 2, top + h + 2), _FONT, scale, ink, weight, cv2.LINE_AA)


def draw_grounding(
    image: Any,
    output: GroundedOutput,
    *,
    image_index: int = 0,
    show_masks: bool = True,
    show_boxes: bool = True,
    show_patches: bool = True,
    show_labels: bool = True,
    alpha: float = 0.45,
) -> np.ndarray:
    """Draw a model's grounded objects on ``image``; returns a new RGB ``uint8`` array of the same size.

    Each object gets its own colour (:func:`object_color` of its index in ``output.objects``). Masks become
    translucent fills (opacity ``alpha``) with a contour; patches the cells of the merged grid the object's VRTs
    named, outlined (on the merged grid ``output.geometries`` records; an output without geometries, such as
    one built by hand, gets no patches drawn); boxes rectangles with a ``"label score"`` caption.

    Args:
        image: the original image the output belongs to (``output.image_sizes[image_index]`` in size).
        output: the pipeline's answer for this image.
        image_index: for multi-image samples, which of the sample's images ``image`` is; only objects in that
            image are drawn.
    """
    canvas = as_rgb_array(image)
    geometry = output.geometries[image_index] if image_index < len(output.geometries) else None
    if geometry is not None:
        _check_geometry(geometry, canvas.shape)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    thickness = _thickness(canvas.shape)
    objects = [(i, o) for i, o in enumerate(output.objects) if o.image_index == image_index]

    if show_masks:
        for i, obj in objects:
            if obj.mask is None or not obj.mask.any():
                continue
            if obj.mask.shape != canvas.shape[:2]:
                raise ValueError(f"object {i}: mask is {obj.mask.shape} but the image is {canvas.shape[:2]}")
            color = np.array(object_color(i), dtype=np.float32)
            inside = obj.mask.astype(bool)
            blended = canvas[inside].astype(np.float32) * (1.0 - alpha) + color * alpha
            canvas[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
            contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, object_color(i), thickness)

    if show_patches and geometry is not None:
        for i, obj in objects:
            for patch in sorted(set(obj.patches)):
                if not 0 <= patch < geometry.num_vrts:
                    raise ValueError(f"object {i}: patch {patch} is outside the image's {geometry.num_vrts} cells")
                x0, y0, x1, y1 = geometry.cell_bounds(*geometry.cell_rc(patch))
                cv2.rectangle(canvas, (x0, y0), (x1, y1), object_color(i), 1)

    boxes = [(i, obj, [round(v) for v in obj.box]) for i, obj in objects]
    if show_boxes:
        for i, _, (x1, y1, x2, y2) in boxes:
            cv2.rectangle(canvas, (x1, y1), (x2, y2), object_color(i), thickness)
    if show_labels:  # after every box, so that no box crosses out another object's caption
        for i, obj, (x1, y1, _, _) in boxes:
            draw_caption(canvas, f"{obj.label} {obj.score:.2f}".strip(), x1, y1, object_color(i))
    return canvas


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor; torch itself is not needed to draw
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def vrt_heatmap(
    image: Any,
    probabilities: Any,
    geometry: ImageGeometry,
    *,
    alpha: float = 0.5,
    colormap: int = cv2.COLORMAP_JET,
    normalize: bool = True,
) -> np.ndarray:
    """Overlay a distribution over the image's merged-grid cells on the image; returns RGB ``uint8`` (H, W, 3).

    Args:
        probabilities: ``[H', W']`` or ``[H' * W']`` (raster order) values, numpy or torch; NaN/inf count as 0.
        geometry: the image's :class:`~padt.vision.geometry.ImageGeometry` (its merged grid and original size).
        alpha: opacity of the colour map where the value is largest; it falls linearly to 0 (the image as it is)
            where the value is 0.
        normalize: scale so the largest value gets the top colour (the peak of a flat 64-way distribution is
            only ~0.02); with ``False`` values are taken as already in [0, 1].
    """
    canvas = as_rgb_array(image)
    _check_geometry(geometry, canvas.shape)
    rows, cols = geometry.merged_grid_hw
    values = _to_numpy(probabilities)
    if values.size != rows * cols:
        raise ValueError(f"expected {rows * cols} values ({rows}x{cols} merged grid), got shape {values.shape}")
    values = np.nan_to_num(values.reshape(rows, cols), nan=0.0, posinf=0.0, neginf=0.0)
    if normalize:
        peak = values.max()
        values = values / peak if peak > 0 else np.zeros_like(values)
    levels = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    # Paint each cell over exactly the pixels cell_bounds gives it (a plain resize rounds cell edges differently).
    height, width = canvas.shape[:2]
    xs, ys = geometry.cell_edges()
    row_of = np.searchsorted(ys[1:-1], np.arange(height), side="right")
    col_of = np.searchsorted(xs[1:-1], np.arange(width), side="right")
    full = levels[row_of[:, None], col_of[None, :]]
    colored = cv2.cvtColor(cv2.applyColorMap(full, colormap), cv2.COLOR_BGR2RGB).astype(np.float32)
    # Colour in proportion to the value: cells the model gives no mass keep the image as it is.
    weight = (alpha * full.astype(np.float32) / 255.0)[..., None]
    blended = canvas.astype(np.float32) * (1.0 - weight) + colored * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def vrt_step_probabilities(
    pipeline: PaDTPipeline,
    image: Any,
    prompt: str,
    *,
    output: GroundedOutput | None = None,
    require_labels: bool = True,
    **generate_kwargs: Any,
) -> tuple[ImageGeometry, list[tuple[str, Any]]]:
    """The model's distribution over the image's patches at each VRT of its answer.

    Runs ``pipeline.ask`` (unless ``output``, an earlier answer to the same image and prompt, is given), then
    one teacher-forced forward pass over that answer; at every answer position holding a VRT, the VRT logits of
    the position before it (the ones that chose it) are soft-maxed over this image's patches.

    Args:
        prompt: the full user prompt (e.g. ``padt.text.prompts.ovd_prompt([...])``), as ``pipeline.ask`` takes it.
        require_labels: ``False`` for captioning prompts (as ``pipeline.caption`` does).

    Returns:
        ``(geometry, steps)``: the image's geometry and, in answer order, ``(token_text, probabilities)`` with
        ``token_text`` the chosen ``<|VRT_k|>`` and ``probabilities`` a float32 CPU tensor [H' * W'] (raster
        order, sums to 1). ``steps`` is empty when the answer names no patch.

    The answer is re-tokenised from its text (special tokens the model wrote are not in ``output.text``), so for
    answers with stray special tokens the forced pass can differ slightly from what generation saw.
    """
    import torch

    pil = load_image(image)
    if output is None:
        output = pipeline.ask([pil], [prompt], require_labels=require_labels, **generate_kwargs)[0]
    model, processor = pipeline.model, pipeline.processor
    batch = processor([pil], [prompt], answers=[output.text]).to(model.device)
    vocab = model.text_vocab_size
    with torch.no_grad():
        forced = model.teacher_forced(batch)
        ids = batch["input_ids"][0]
        positions = (batch["answer_mask"][0] & (ids >= vocab)).nonzero().flatten()
        # The VRT logits of the states that predicted those tokens, over this image's patches only.
        logits = model.vrt_logits(forced.predicting(positions), forced.vision)[0]
    start, end = forced.vision.codec.sample_spans()[0]
    probabilities = torch.softmax(logits[:, start:end].float(), dim=-1).cpu()
    steps = [(vrt_token(int(ids[t]) - vocab), p) for t, p in zip(positions.tolist(), probabilities)]
    return batch.geometries[0], steps


def vrt_step_heatmaps(
    pipeline: PaDTPipeline,
    image: Any,
    prompt: str,
    *,
    output: GroundedOutput | None = None,
    require_labels: bool = True,
    **generate_kwargs: Any,
) -> list[tuple[str, np.ndarray]]:
    """:func:`vrt_step_probabilities` drawn with :func:`vrt_heatmap`: ``[(token_text, heatmap)]``.

    Each heatmap is an RGB array of the original image's size; the list is empty when the answer names no patch.
    """
    pil = load_image(image)
    geometry, steps = vrt_step_probabilities(
        pipeline, pil, prompt, output=output, require_labels=require_labels, **generate_kwargs
    )
    return [(token, vrt_heatmap(pil, probabilities, geometry)) for token, probabilities in steps]


def make_gallery(
    tiles: Sequence[tuple[Any, str]], columns: int = 3, tile_size: int = 256
) -> np.ndarray:
    """Lay ``(image, title)`` tiles out on a grid; returns RGB ``uint8``.

    Each image is scaled to fit a ``tile_size`` square (aspect kept, centred on dark grey) under a title band of
    24 px. With ``n`` tiles the result is ``ceil(n / c) * (tile_size + 24)`` by ``c * tile_size`` pixels, where
    ``c = min(columns, n)``.
    """
    if not tiles:
        raise ValueError("make_gallery needs at least one tile")
    if columns < 1 or tile_size < 8:
        raise ValueError(f"need columns >= 1 and tile_size >= 8, got {columns}, {tile_size}")
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    cell_h = tile_size + _TITLE_HEIGHT
    sheet = np.full((rows * cell_h, cols * tile_size, 3), 32, dtype=np.uint8)
    for n, (tile, title) in enumerate(tiles):
        picture = as_rgb_array(tile)
        scale = tile_size / max(picture.shape[:2])
        h = max(1, round(picture.shape[0] * scale))
        w = max(1, round(picture.shape[1] * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        picture = cv2.resize(picture, (w, h), interpolation=interpolation)
        top = (n // cols) * cell_h
        left = (n % cols) * tile_size
        y = top + _TITLE_HEIGHT + (tile_size - h) // 2
        x = left + (tile_size - w) // 2
        sheet[y : y + h, x : x + w] = picture
        text = _fit_text(_ascii(str(title)), tile_size - 6, 0.45)
        cv2.putText(sheet, text, (left + 3, top + 17), _FONT, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
    return sheet


def _fit_text(text: str, width: int, scale: float) -> str:
    """``text`` cut (with "...") so that it is at most ``width`` pixels wide."""
    if cv2.getTextSize(text, _FONT, scale, 1)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", _FONT, scale, 1)[0][0] > width:
        text = text[:-1]
    return text + "..."


def save_image(path: str | Path, array: Any) -> Path:
    """Write an RGB image (array or PIL) to ``path`` (format from the suffix: .png, .jpg, ...); makes parents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = as_rgb_array(array)
    try:
        ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except cv2.error as error:  # an unknown suffix raises rather than returning False
        raise ValueError(f"cannot write image {path}: {error}") from error
    if not ok:
        raise ValueError(f"cannot write image {path} (unsupported suffix or unwritable folder?)")
    return path


__all__ = [
    "PALETTE",
    "as_rgb_array",
    "draw_caption",
    "draw_grounding",
    "make_gallery",
    "object_color",
    "save_image",
    "vrt_heatmap",
    "vrt_step_heatmaps",
    "vrt_step_probabilities",
]
