"""An image encoded once, to ask many questions about it.

The chat template puts a sample's images before its question, so everything up to the end of the image tokens
(the system prompt, the start of the user turn, the image tokens) is the same for every question about those
images. :class:`EncodedImage` holds that shared prefix: the vision context (the vision tower's output,
prototypes, decoder memory) and the language model's KV cache over the prefix. Each question then prefills only
its own tokens. ``PaDTPipeline.encode`` builds one; every task method takes it in place of an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import DynamicCache

from padt.vision.context import VisionContext
from padt.vision.geometry import ImageGeometry


@dataclass
class EncodedImage:
    """One sample's image(s) with the shared prompt prefix already run through the model.

    Attributes:
        images: the sample's images as loaded (RGB, EXIF applied), in order.
        geometries: where each lands on the model's grids.
        vision: the one-sample vision context.
        prefix_ids: LongTensor [1, L], the prompt's tokens up to and including the last ``<|vision_end|>``.
        prefix_mm_token_type_ids: [1, L], 1 on the image tokens.
        prefix_cache: the KV cache of the prefix (one row); copied for every use (:func:`stacked_cache`), never
            changed.
    """

    images: list[Image.Image]
    geometries: list[ImageGeometry]
    vision: VisionContext
    prefix_ids: torch.Tensor
    prefix_mm_token_type_ids: torch.Tensor
    prefix_cache: Any = field(repr=False)

    @property
    def prefix_length(self) -> int:
        return int(self.prefix_ids.shape[1])

    @property
    def image_tokens(self) -> list[int]:
        """``<|image_pad|>`` tokens of each image in the prompt: one per merged cell."""
        return [g.num_vrts for g in self.geometries]



def stacked_cache(encoded: list[EncodedImage]) -> DynamicCache:
    """One KV cache for a batch whose row ``b`` continues ``encoded[b]``'s prefix (a fresh copy: generation
    appends to it). Shorter prefixes are padded on the left, where :func:`question_rows` masks them out."""
    width = max(e.prefix_length for e in encoded)
    layers = []
    for index in range(len(encoded[0].prefix_cache.layers)):
        keys = [_left_padded(e.prefix_cache.layers[index].keys, width) for e in encoded]
        values = [_left_padded(e.prefix_cache.layers[index].values, width) for e in encoded]
        layers.append((torch.cat(keys), torch.cat(values)))
    return DynamicCache(layers)


def _left_padded(states: torch.Tensor, width: int) -> torch.Tensor:
    """[1, heads, L, D] cache states padded with zeros on the left of the L axis to ``width``."""
    return F.pad(states, (0, 0, width - states.shape[-2], 0))


def question_rows(
    encoded: list[EncodedImage], question_ids: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch rows ``padding + prefix + padding + question``, row ``b`` asking ``question_ids[b]`` about
    ``encoded[b]``: ``(input_ids, attention_mask, mm_token_type_ids)``, each [B, T].

    The prefixes end in the same column (where the cache of :func:`stacked_cache` has them) and every row ends at
    the last column (where generation appends). Padding is masked out and takes no position, so each row's
    positions are those of its question asked alone.
    """
    prefix_width = max(e.prefix_length for e in encoded)
    width = max(len(q) for q in question_ids)
    rows, masks, types = [], [], []
    for e, question in zip(encoded, question_ids, strict=True):
        before, between = prefix_width - e.prefix_length, width - len(question)
        ids = [pad_id] * before + e.prefix_ids[0].tolist() + [pad_id] * between + list(question)
        rows.append(ids)
        masks.append([0] * before + [1] * e.prefix_length + [0] * between + [1] * len(question))
        types.append([0] * before + e.prefix_mm_token_type_ids[0].tolist() + [0] * width)
    device = encoded[0].prefix_ids.device
    return tuple(torch.tensor(values, dtype=torch.long, device=device) for values in (rows, masks, types))
