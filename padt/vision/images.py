"""Image loading and the resize rule that decides each image's patch grid.

Everything the user sees is in original-image pixels; this module is where the original image meets the grid the
vision tower works on. The rule is Qwen2.5-VL's ``smart_resize``: both sides become multiples of
``patch_size * merge_size`` (28 px for Qwen2.5-VL) with the pixel count kept within ``[min_pixels, max_pixels]``.
The resize stretches the whole image (no padding), so a box normalised to the resized image is the same box
normalised to the original image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

ImageInput = str | os.PathLike | Image.Image | np.ndarray

#: Qwen2.5-VL's own pixel budget (also the official PaDT default).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 16384


def load_image(image: ImageInput) -> Image.Image:
    """Return ``image`` as an RGB PIL image with its EXIF orientation applied.

    Accepts a path, a PIL image (any mode: grey, RGBA, palette, 16-bit ...), or a numpy array shaped
    ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (uint8, or float in [0, 1]). Transparent pixels are
    composited on white. Raises ``FileNotFoundError`` / ``ValueError`` naming the file or the array's problem.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                pil = ImageOps.exif_transpose(opened)
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
    elif isinstance(image, Image.Image):
        pil = ImageOps.exif_transpose(image)
    elif isinstance(image, np.ndarray):
        pil = _array_to_pil(image)
    else:
        raise TypeError(f"expected an image path, a PIL image or a numpy array, got {type(image).__name__}")
    return _to_rgb(pil)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {array.shape}")
    if array.size == 0:
        raise ValueError(f"an image array must not be empty; got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ValueError("an image array must not contain NaN or infinity")
            array = np.clip(array, 0.0, 1.0) * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 0 else 1.0
        return Image.fromarray((array / peak * 255.0).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageGeometry:
    """Where an original image lands on the vision tower's grids.

    Attributes:
        original_hw: (height, width) of the original image in pixels.
        resized_hw: (height, width) the processor resizes it to; multiples of ``patch_size * merge_size``.
        patch_size: ViT patch side in pixels (14 for Qwen2.5-VL).
        merge_size: side of the square of patches merged into one LLM token (2 for Qwen2.5-VL).
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    patch_size: int
    merge_size: int

    @property
    def patch_grid_hw(self) -> tuple[int, int]:
        """(H, W): the ViT patch grid (``grid_thw[1:]`` of the processor)."""
        return self.resized_hw[0] // self.patch_size, self.resized_hw[1] // self.patch_size

    @property
    def merged_grid_hw(self) -> tuple[int, int]:
        """(H', W'): the merged grid; one VRT per cell, indexed in raster order ``k = row * W' + col``."""
        cell = self.patch_size * self.merge_size
        return self.resized_hw[0] // cell, self.resized_hw[1] // cell

    @property
    def num_vrts(self) -> int:
        h, w = self.merged_grid_hw
        return h * w


def upscale_tiny(height: int, width: int, cell: int) -> tuple[int, int]:
    """Size an image with a side shorter than one ``cell`` is first upscaled to (short side = ``cell``).

    The official pipeline does the same before the processor sees such images; it keeps the aspect ratio.
    """
    short = min(height, width)
    if short >= cell:
        return height, width
    scale = cell / short
    return max(cell, round(height * scale)), max(cell, round(width * scale))


def image_geometry(
    height: int,
    width: int,
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageGeometry:
    """The grid an ``height`` x ``width`` image gets from the processor with the same settings.

    Raises ``ValueError`` for non-positive sizes and aspect ratios beyond 200:1 (Qwen's limit).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    cell = patch_size * merge_size
    up_h, up_w = upscale_tiny(height, width, cell)
    resized = smart_resize(up_h, up_w, factor=cell, min_pixels=min_pixels, max_pixels=max_pixels)
    return ImageGeometry((height, width), (int(resized[0]), int(resized[1])), patch_size, merge_size)
