"""An image encoded once, to ask many questions about it.

The chat template puts a sample's images before its question, so everything up to the end of the image tokens
(the system prompt, the start of the user turn, the image tokens) is the same for every question about those
images. :class:`EncodedImage` holds that shared prefix: the vision context (the vision tower's output,
prototypes, decoder memory) and the language model's KV cache over the prefix. Each question then prefills only
its own tokens. ``PaDTPipeline.encode`` builds one; every task method takes it in place of an image.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

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
        prefix_cache: the KV cache of the prefix (one row); copied for every use, never changed.
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

    def cache_for(self, rows: int) -> Any:
        """A fresh copy of the prefix cache for a batch of ``rows`` questions (generation appends to it)."""
        cache = copy.deepcopy(self.prefix_cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache


def question_rows(
    encoded: EncodedImage, question_ids: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch rows ``prefix + padding + question``: ``(input_ids, attention_mask, mm_token_type_ids)``, each [B, T].

    Padding goes between the shared prefix and each question, so the prefix sits in the same columns of every
    row (where the cache has it) and every row ends at the last column (where generation appends). Padding is
    masked out and takes no position, so each row's positions are those of the question asked alone.
    """
    width = max(len(q) for q in question_ids)
    prefix = encoded.prefix_ids[0]
    device = prefix.device
    rows, masks = [], []
    for question in question_ids:
        gap = width - len(question)
        pad = torch.full((gap,), pad_id, device=device)
        rows.append(torch.cat([prefix, pad, torch.tensor(question, device=device)]))
        masks.append(torch.cat([torch.ones_like(prefix), torch.zeros(gap, dtype=torch.long, device=device),
                                torch.ones(len(question), dtype=torch.long, device=device)]))
    input_ids, attention = torch.stack(rows), torch.stack(masks)
    mm_token_type_ids = torch.zeros_like(input_ids)
    mm_token_type_ids[:, : encoded.prefix_length] = encoded.prefix_mm_token_type_ids[0]
    return input_ids, attention, mm_token_type_ids
