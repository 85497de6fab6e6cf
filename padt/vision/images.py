"""Image loading: paths, PIL images and arrays of any mode become RGB PIL images, with one rule per input kind.

Where the loaded image lands on the model's grids is :mod:`padt.vision.geometry`'s business.

Image files are refused above a pixel limit (width x height), a guard against decompression bombs: a few kilobytes
of PNG or GIF can claim 20000 x 20000 pixels and take gigabytes to decode. The limit is
:data:`DEFAULT_MAX_IMAGE_PIXELS` unless the environment variable ``PADT_MAX_IMAGE_PIXELS`` or
:func:`set_max_image_pixels` says otherwise (:func:`max_image_pixels` tells the one in force).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = str | os.PathLike | Image.Image | np.ndarray

#: Default pixel limit of an image file: PIL's own warning threshold (1 GiB / 4 bytes / 3), about 89.5 megapixels,
#: e.g. 9459 x 9459. PIL itself refuses twice that, whatever padt's limit says.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
#: Environment variable that sets the pixel limit (a positive integer) when :func:`set_max_image_pixels` has not.
MAX_IMAGE_PIXELS_ENV = "PADT_MAX_IMAGE_PIXELS"
_max_pixels_override: int | None = None

#: PIL modes that hold one channel of 16-bit unsigned values, read as numpy uint16.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def max_image_pixels() -> int:
    """The pixel limit in force: :func:`set_max_image_pixels`'s, else ``$PADT_MAX_IMAGE_PIXELS``, else the default."""
    if _max_pixels_override is not None:
        return _max_pixels_override
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip().replace("_", "")
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive integer number of pixels, got {value!r}")
    return int(value)


def set_max_image_pixels(limit: int | None) -> None:
    """Set the pixel limit of image files for this process; ``None`` goes back to the environment / default."""
    global _max_pixels_override
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"the pixel limit must be a positive integer or None, got {limit!r}")
    _max_pixels_override = limit


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """Open an image file for its header (size, mode, EXIF) without decoding its pixels, within the pixel limit.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` naming the file when it is not an image
    PIL can read or has more pixels than :func:`max_image_pixels` allows (or than PIL's own limit,
    ``2 * PIL.Image.MAX_IMAGE_PIXELS``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            # padt's own limit decides below; PIL's warning between its two thresholds would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ValueError(f"image {path} is too large to open: {error} (padt's limit: {limit:,} pixels)") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    with opened:
        width, height = opened.size
        if width * height > limit:
            raise ValueError(
                f"image {path} is {width} x {height} = {width * height:,} pixels, above the limit of {limit:,} "
                f"(a guard against decompression bombs; raise it with {MAX_IMAGE_PIXELS_ENV}=N or "
                "padt.vision.images.set_max_image_pixels(N))"
            )
        yield opened


def load_image(image: ImageInput) -> Image.Image:
    """Return ``image`` as an RGB PIL image with its EXIF orientation applied.

    Accepts a path, a PIL image, or a numpy array shaped ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``.
    Arrays and PIL images (files included) follow one rule per kind of value, so an array and the file written
    from it give the same picture:

    * 8-bit (uint8, PIL ``L`` / ``RGB`` / ``P`` ...): as they are.
    * bool (PIL ``1``): ``False`` is 0 (black), ``True`` is 255 (white).
    * 16-bit unsigned (uint16, PIL ``I;16``, 16-bit PNG / TIFF): scaled by 65535, ``round(v * 255 / 65535)``.
      (PIL reads 16-bit colour PNGs as 8-bit RGB itself, keeping the high byte: within one level of this rule.)
    * float (float16/32/64, PIL ``F``): must be finite and in [0, 1], then ``round(v * 255)``; anything else is
      refused (a 0-255 float array must be divided by 255 first).
    * other integers (int8..int64, uint32, uint64, PIL ``I``, 32-bit TIFF): such an image has no range padt can
      trust, so its values must lie in 0..255 and are taken as 8-bit values; anything else is refused.

    Transparent pixels are composited on white. An animated file (GIF, APNG, WebP, multi-page TIFF) gives its first
    frame; a PIL image passed in gives the frame it is on. Files above :func:`max_image_pixels` are refused.
    Raises ``FileNotFoundError`` / ``ValueError`` naming the file or the array's problem.
    """
    if isinstance(image, (str, os.PathLike)):
        with open_image(image) as opened:
            try:
                opened.seek(0)  # the first frame of an animation
                opened.load()
                pil = ImageOps.exif_transpose(opened)
            except Image.DecompressionBombError as error:  # a GIF frame may be larger than the header says
                raise ValueError(f"image {image} is too large to decode: {error}") from error
            except (OSError, SyntaxError, ValueError, EOFError) as error:
                raise ValueError(f"cannot read image {image}: {error}") from error
            return _to_rgb(pil, f"image {image}")
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image), f"PIL image (mode {image.mode})")
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    raise TypeError(f"expected an image path, a PIL image or a numpy array, got {type(image).__name__}")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {array.shape}")
    if array.size == 0:
        raise ValueError(f"an image array must not be empty; got shape {array.shape}")
    pil = Image.fromarray(_to_uint8(array, f"a {array.dtype} image array"))
    return _to_rgb(pil, "image array")


def _to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as uint8 by the rule of their dtype (see :func:`load_image`); ``what`` names them in errors."""
    kind, size = values.dtype.kind, values.dtype.itemsize
    if kind == "u" and size == 1:
        return values
    if kind == "b":
        return values.astype(np.uint8) * np.uint8(255)
    if kind == "u" and size == 2:
        return np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if kind == "f":
        return _float_to_uint8(values, what)
    if kind in "iu":
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{what} holds values {low}..{high}: integer images other than uint8/uint16 must hold 8-bit values "
                "0..255 (their range is not known); pass uint8, uint16 (scaled by 65535) or float in [0, 1]"
            )
        return values.astype(np.uint8)
    raise ValueError(f"{what} has unsupported values of dtype {values.dtype}: pass uint8, uint16, bool or float")


def _float_to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{what} must not contain NaN or infinity")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{what} holds values {low:g}..{high:g}: float images must be in [0, 1] "
            "(divide a 0-255 image by 255, or pass it as uint8)"
        )
    return np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)


def _to_rgb(image: Image.Image, what: str) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES + ("I", "F"):
        # np.asarray reads I;16 as uint16, I as int32 and F as float32: the array rules apply to them.
        return Image.fromarray(_to_uint8(np.asarray(image), what)).convert("RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
