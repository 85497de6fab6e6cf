"""Image loading: paths, PIL images and arrays of any mode become RGB PIL images, with one rule per input kind.

Where the loaded image lands on the model's grids is :mod:`padt.vision.geometry`'s business.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = str | os.PathLike | Image.Image | np.ndarray


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
