"""From the decoder's outputs to :class:`~padt.results.GroundedObject`s in original-image pixels.

The decoder predicts boxes as (cx, cy, w, h) normalised to the resized image, and masks as logits on a grid of
``s x s`` mask pixels per ViT patch. The processor stretches the whole image to its resized size (no padding),
so normalised coordinates carry over to the original image unchanged (:mod:`padt.vision.geometry`): boxes only
need a scale by the original size, masks a resize to it. Work is batched per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from padt.losses.box_ops import box_cxcywh_to_xyxy, clip_boxes, normalised_to_pixels
from padt.results import GroundedObject
from padt.vision.codec import VRTCodec
from padt.vision.geometry import ImageGeometry
from padt.vision.queries import DecodedObjects


class GroundingPostProcessor:
    """Turns a batch's :class:`~padt.modeling.DecodedObjects` into grounded objects, in the manner of DETR's
    post-processors.

    Args:
        mask_threshold: mask logit above which a pixel belongs to the object (0: probability 0.5, as the
            reference evaluation thresholds).
    """

    def __init__(self, mask_threshold: float = 0.0) -> None:
        self.mask_threshold = mask_threshold

    def __call__(
        self, decoded: DecodedObjects, codec: VRTCodec, geometries: Sequence[ImageGeometry], labels: Sequence[str]
    ) -> list[GroundedObject]:
        """One :class:`GroundedObject` per decoded object, in the decoder's order.

        Args:
            decoded: the decoder's K objects.
            codec: the batch's VRT id space (which image of which sample each VRT names).
            geometries: one per batch image, in the processor's order.
            labels: the K objects' labels.

        Boxes are xyxy in original pixels, clipped to the image; scores ``sigmoid(logit)``; masks bool arrays of
        the original size (``None`` without a mask head); patches raster indices on the object's own image.
        """
        images = decoded.object_image.tolist()
        boxes = self.boxes(decoded, geometries)
        masks = self.masks(decoded, geometries)
        scores = decoded.output.score_logits.float().sigmoid().tolist()
        patches = codec.patch_in_image(decoded.vrt_rows).split(decoded.vrt_counts.tolist())
        first_image = codec.first_images()
        return [
            GroundedObject(
                labels[k], patches[k].tolist(), tuple(boxes[k].tolist()), scores[k], masks[k],
                image - first_image[codec.sample_of_image[image]],
            )
            for k, image in enumerate(images)
        ]

    def boxes(self, decoded: DecodedObjects, geometries: Sequence[ImageGeometry]) -> torch.Tensor:
        """[K, 4] xyxy boxes in original pixels of each object's image, clipped to it."""
        normalised = clip_boxes(box_cxcywh_to_xyxy(decoded.output.boxes.float()))
        pixels = torch.empty_like(normalised)
        for image, index in _objects_per_image(decoded.object_image):
            pixels[index] = normalised_to_pixels(normalised[index], geometries[image].original_hw)
        return pixels.cpu()

    def masks(self, decoded: DecodedObjects, geometries: Sequence[ImageGeometry]) -> list[np.ndarray | None]:
        """Bool masks of each object's original image size: the valid part of the mask logits, resized
        bilinearly, thresholded. ``None`` for every object when the decoder has no mask head."""
        output = decoded.output
        masks: list[np.ndarray | None] = [None] * len(decoded.object_image)
        if output.mask_logits is None:
            return masks
        for image, index in _objects_per_image(decoded.object_image):
            valid_h, valid_w = (int(v) for v in output.mask_hw[index[0]])  # the same for every object of an image
            logits = output.mask_logits[index, :valid_h, :valid_w].float()[:, None]
            resized = F.interpolate(logits, size=tuple(geometries[image].original_hw), mode="bilinear",
                                    align_corners=False)[:, 0]
            for k, mask in zip(index.tolist(), (resized > self.mask_threshold).cpu().numpy()):
                masks[k] = mask
        return masks


def _objects_per_image(object_image: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(image, indices of its objects)`` for every image that has objects."""
    return [(int(image), (object_image == image).nonzero().flatten()) for image in object_image.unique()]
