"""The image of a record, read as each protocol reads it: EXIF orientation applied (ours) or the stored pixels (the
official scripts'), always within padt's pixel limit."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from PIL import Image

from padt.datasets.records import GroundingRecord
from padt.vision.images import load_image, open_image

_EXIF_ORIENTATION = 0x0112
#: ``"padt"``: ours, by record; ``"paper"``: the official scripts' scoring (see the module docstring).
Protocol = Literal["padt", "paper"]
PROTOCOLS = ("padt", "paper")


def load_record_image(record: GroundingRecord, images_root: Path, protocol: Protocol = "padt") -> Image.Image:
    """The record's image: as padt shows it to the model (EXIF orientation applied), or as stored (``"paper"``)."""
    path = images_root / record.image
    if not path.is_file():
        raise FileNotFoundError(f"record {record.id}: image file not found: {path}")
    if protocol == "paper":
        image = load_image(_stored_image(path))
    else:
        orientation = _exif_orientation(path)
        if orientation not in (None, 1):
            # Annotations (COCO's, the official records') describe the stored pixels; padt would rotate them.
            raise ValueError(
                f"record {record.id}: image {path} has EXIF orientation {orientation}, which padt applies, but the "
                "record's boxes and masks refer to the stored pixels (padt convert skips such images unless "
                "--keep-exif-rotated); evaluate with --protocol paper, which reads images as stored"
            )
        image = load_image(path)
    if record.image_hw is not None and tuple(record.image_hw) != (image.height, image.width):
        raise ValueError(
            f"record {record.id}: image {path} is {(image.height, image.width)} (h, w) but the record says "
            f"{tuple(record.image_hw)}; its boxes and masks would not fit"
        )
    return image


def _stored_image(path: Path) -> Image.Image:
    """The file's pixels as stored: a copy without the EXIF/XMP metadata that names an orientation.

    Opened through :func:`~padt.vision.images.open_image`, so the pixel limit against decompression bombs holds."""
    with open_image(path) as opened:
        try:
            opened.seek(0)  # the first frame of an animation, as load_image takes
            opened.load()
            stored = opened.copy()
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
    # load_image (and the pipeline after it) applies whatever orientation the metadata still names: leave none.
    for key in ("exif", "XML:com.adobe.xmp", "xmp", "Raw profile type exif"):
        stored.info.pop(key, None)
    return stored


def _exif_orientation(path: Path) -> int | None:
    """The EXIF orientation tag of an image file (header only); ``None`` when absent or unreadable."""
    try:
        with open_image(path) as opened:
            return opened.getexif().get(_EXIF_ORIENTATION)
    except (OSError, SyntaxError, ValueError):
        return None  # load_image reports an unreadable or too large file itself, naming it


# ---- ground truth --------------------------------------------------------------------------------------------
