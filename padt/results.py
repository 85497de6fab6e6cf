"""The result type users get back: grounded objects in original-image pixels, with adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GroundedObject:
    """One object the model grounded.

    Attributes:
        label: the quoted phrase (or, in captions, the phrase) the object belongs to.
        patches: the VRT patch indices the model wrote, in order (repeats kept), raster order on the merged
            grid of the object's image: ``k = row * W' + col``.
        box: (x1, y1, x2, y2) in original-image pixels, ``0 <= x1 <= x2 <= width``.
        score: confidence in [0, 1].
        mask: bool array (height, width) of the original image, or ``None`` for a model without a mask head.
        image_index: which of the sample's images the object is in (0 for single-image samples).
    """

    label: str
    patches: list[int]
    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = field(default=None, repr=False)
    image_index: int = 0

    def to_dict(self, include_mask: bool = False) -> dict[str, Any]:
        """JSON-ready dict; the mask (if asked for) as COCO RLE with ``counts`` as a string."""
        out: dict[str, Any] = {
            "label": self.label,
            "patches": list(self.patches),
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "image_index": self.image_index,
        }
        if include_mask and self.mask is not None:
            out["mask_rle"] = mask_to_rle(self.mask)
        return out


@dataclass
class GroundedOutput:
    """The model's answer for one sample.

    Attributes:
        text: the answer, VRTs rendered as ``<|VRT_k|>``.
        objects: the well-formed objects, in the order they appear in the answer.
        problems: what the parser found malformed in the answer (empty when it was well formed).
        image_sizes: (height, width) of each of the sample's original images.
    """

    text: str
    objects: list[GroundedObject]
    problems: list[str]
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.objects)

    def to_dict(self, include_masks: bool = False) -> dict[str, Any]:
        return {
            "text": self.text,
            "objects": [o.to_dict(include_masks) for o in self.objects],
            "problems": list(self.problems),
            "image_sizes": [list(s) for s in self.image_sizes],
        }

    def to_coco(
        self, image_id: int, categories: dict[str, int] | list[str] | None = None, include_masks: bool = True
    ) -> list[dict[str, Any]]:
        """COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation"}``.

        ``categories`` maps labels to category ids (a list means ids 1..n in order). Labels are compared
        case-insensitively; objects whose label is not a category are left out. Without ``categories`` every
        object gets category id 1.
        """
        if isinstance(categories, (list, tuple)):
            categories = {name: i + 1 for i, name in enumerate(categories)}
        lookup = {k.lower().strip(): v for k, v in (categories or {}).items()}
        results = []
        for obj in self.objects:
            if categories is None:
                category_id = 1
            elif obj.label.lower().strip() in lookup:
                category_id = lookup[obj.label.lower().strip()]
            else:
                continue
            x1, y1, x2, y2 = (float(v) for v in obj.box)
            entry: dict[str, Any] = {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(obj.score),
            }
            if include_masks and obj.mask is not None:
                entry["segmentation"] = mask_to_rle(obj.mask)
            results.append(entry)
        return results

    def to_supervision(self):
        """A ``supervision.Detections`` (needs ``pip install 'padt[demo]'``); labels go to ``data["class_name"]``."""
        try:
            import supervision as sv
        except ImportError as error:
            raise ImportError("to_supervision() needs the supervision package: pip install 'padt[demo]'") from error
        xyxy = np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 4)
        masks = None
        if self.objects and all(o.mask is not None for o in self.objects):
            masks = np.stack([o.mask for o in self.objects]).astype(bool)
        labels = [o.label for o in self.objects]
        names = sorted(set(labels))
        return sv.Detections(
            xyxy=xyxy,
            mask=masks,
            confidence=np.array([o.score for o in self.objects], dtype=np.float32),
            class_id=np.array([names.index(name) for name in labels], dtype=int),
            data={"class_name": np.array(labels, dtype=object)},
        )


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a bool [H, W] mask with ``counts`` as a string (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
