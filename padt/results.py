"""The result type users get back: grounded objects in original-image pixels, with adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from padt.losses.box_ops import box_xyxy_to_xywh
from padt.vision.geometry import ImageGeometry
from padt.vision.masks import mask_to_rle, rle_to_mask


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroundedObject:
        """The object :meth:`to_dict` wrote (its mask too, when it was included)."""
        rle = data.get("mask_rle")
        return cls(
            str(data["label"]),
            [int(p) for p in data["patches"]],
            tuple(float(v) for v in data["box"]),
            float(data["score"]),
            None if rle is None else rle_to_mask(rle),
            int(data.get("image_index", 0)),
        )


@dataclass
class GroundedOutput:
    """The model's answer for one sample.

    Attributes:
        text: the answer, VRTs rendered as ``<|VRT_k|>``.
        objects: the well-formed objects, in the order they appear in the answer.
        problems: what the parser found malformed in the answer (empty when it was well formed).
        image_sizes: (height, width) of each of the sample's original images.
        geometries: where each of those images landed on the model's grids (its merged grid, which the objects'
            ``patches`` index); the drawing functions of :mod:`padt.visualize` read it.
        truncated: the answer reached the length limit before its end token (its last object may be missing).
    """

    text: str
    objects: list[GroundedObject]
    problems: list[str]
    image_sizes: list[tuple[int, int]]
    geometries: list[ImageGeometry] = field(default_factory=list)
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.objects)

    def to_dict(self, include_masks: bool = False) -> dict[str, Any]:
        return {
            "text": self.text,
            "objects": [o.to_dict(include_masks) for o in self.objects],
            "problems": list(self.problems),
            "image_sizes": [list(s) for s in self.image_sizes],
            "geometries": [g.to_dict() for g in self.geometries],
            "truncated": self.truncated,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroundedOutput:
        """The output :meth:`to_dict` wrote (masks too, when they were included)."""
        return cls(
            str(data["text"]),
            [GroundedObject.from_dict(o) for o in data["objects"]],
            [str(p) for p in data["problems"]],
            [tuple(int(v) for v in size) for size in data["image_sizes"]],
            [ImageGeometry.from_dict(g) for g in data.get("geometries", [])],
            bool(data.get("truncated", False)),
        )

    def to_coco(
        self, image_id: int, categories: dict[str, int] | list[str] | None = None, include_masks: bool = True
    ) -> list[dict[str, Any]]:
        """COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation"}``.

        ``categories`` maps labels to category ids (a list means ids 1..n in order). Labels are compared
        case-insensitively; objects whose label is not a category are left out. Without ``categories`` every
        object gets category id 1.
        """
        results = []
        for obj, category_id in self._categorised(categories, first_id=1):
            entry: dict[str, Any] = {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": box_xyxy_to_xywh(torch.tensor(obj.box, dtype=torch.float64)).tolist(),
                "score": float(obj.score),
            }
            if include_masks and obj.mask is not None:
                entry["segmentation"] = mask_to_rle(obj.mask)
            results.append(entry)
        return results

    def to_supervision(self, categories: dict[str, int] | list[str] | None = None):
        """A ``supervision.Detections`` (needs ``pip install 'padt[demo]'``); labels go to ``data["class_name"]``.

        ``categories`` as in :meth:`to_coco`, so that class ids are the same on every image: a dict maps labels to
        ids, a list gives ids 0..n-1 in order (supervision indexes class lists from 0); objects whose label is not
        a category are left out. Without ``categories`` every object gets class id 0.
        """
        try:
            import supervision as sv
        except ImportError as error:
            raise ImportError("to_supervision() needs the supervision package: pip install 'padt[demo]'") from error
        kept = self._categorised(categories, first_id=0)
        objects = [obj for obj, _ in kept]
        masks = None
        if objects and all(o.mask is not None for o in objects):
            masks = np.stack([o.mask for o in objects]).astype(bool)
        return sv.Detections(
            xyxy=np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4),
            mask=masks,
            confidence=np.array([o.score for o in objects], dtype=np.float32),
            class_id=np.array([class_id for _, class_id in kept], dtype=int),
            data={"class_name": np.array([o.label for o in objects], dtype=object)},
        )

    def _categorised(
        self, categories: dict[str, int] | list[str] | None, first_id: int
    ) -> list[tuple[GroundedObject, int]]:
        """``(object, category id)`` of the objects whose label is a category (all of them without categories)."""
        if categories is None:
            return [(obj, first_id) for obj in self.objects]
        if isinstance(categories, (list, tuple)):
            categories = {name: i + first_id for i, name in enumerate(categories)}
        lookup = {k.lower().strip(): v for k, v in categories.items()}
        return [(obj, lookup[obj.label.lower().strip()]) for obj in self.objects if obj.label.lower().strip() in lookup]
