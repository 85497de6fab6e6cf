"""The vision-language backbones PaDT runs on, and what differs between them.

Everything else in padt is written once for both: a backbone changes numbers (the cell size in
:class:`padt.vision.geometry.GridSpec`, the image normalisation) and two hooks of the model (how the vision
tower's output is read, how the language model is called; :mod:`padt.modeling`).

==============  ==========================================  ==========================================
                Qwen2.5-VL (``qwen2.5-vl``)                  Qwen3-VL (``qwen3-vl``)
==============  ==========================================  ==========================================
cells           14-px patches merged 2 x 2: 28 px            16-px patches merged 2 x 2: 32 px
vision tower    window attention (tokens leave it in         full attention (tokens stay in merge-
                window order; padt restores merge-block      block order); learned position embedding
                order for the decoder's memory)              plus 2-D rotary
LLM positions   M-RoPE (sections t/h/w)                      interleaved M-RoPE
DeepStack       no                                           merged features of some vision layers are
                                                             added to the image tokens' states in the
                                                             first LLM layers (padt keeps them in the
                                                             vision context, for every question)
released PaDT   yes (``official`` patch order available)     no (``raster`` patch order only)
==============  ==========================================  ==========================================

This module imports neither torch nor transformers, so that the command line's parser can read it quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

from padt.vision.geometry import (
    QWEN2_5_VL_MERGE_SIZE,
    QWEN2_5_VL_PATCH_SIZE,
    QWEN3_VL_MERGE_SIZE,
    QWEN3_VL_PATCH_SIZE,
)

#: CLIP's image normalisation, which Qwen2.5-VL's image processor uses.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Backbone:
    """One supported backbone.

    Attributes:
        name: what users type (``padt demo --backbone NAME``, ``tiny_pipeline(backbone=NAME)``).
        base_model_type: ``model_type`` of the plain backbone's ``config.json`` (a ``padt train --model`` folder).
        padt_model_type: ``model_type`` of a PaDT model on this backbone.
        patch_size: side of one vision-tower patch in pixels.
        merge_size: side of the square of patches merged into one LLM token (one VRT).
        image_mean, image_std: the image processor's normalisation.
        deepstack: whether vision-layer features are added to the image tokens inside the LLM.
    """

    name: str
    base_model_type: str
    padt_model_type: str
    patch_size: int
    merge_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    deepstack: bool

    @property
    def cell_size(self) -> int:
        """Side of one merged cell (one VRT) in resized-image pixels."""
        return self.patch_size * self.merge_size


QWEN2_5_VL = Backbone(
    name="qwen2.5-vl", base_model_type="qwen2_5_vl", padt_model_type="padt_qwen2_5_vl",
    patch_size=QWEN2_5_VL_PATCH_SIZE, merge_size=QWEN2_5_VL_MERGE_SIZE, image_mean=CLIP_MEAN, image_std=CLIP_STD,
    deepstack=False,
)
QWEN3_VL = Backbone(
    name="qwen3-vl", base_model_type="qwen3_vl", padt_model_type="padt_qwen3_vl",
    patch_size=QWEN3_VL_PATCH_SIZE, merge_size=QWEN3_VL_MERGE_SIZE, image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5), deepstack=True,
)
BACKBONES = {backbone.name: backbone for backbone in (QWEN2_5_VL, QWEN3_VL)}
BACKBONE_NAMES = tuple(BACKBONES)


def get_backbone(name: str) -> Backbone:
    """The backbone called ``name`` (``"qwen2.5-vl"`` or ``"qwen3-vl"``); ``ValueError`` naming the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: expected one of {', '.join(BACKBONE_NAMES)}")
    return BACKBONES[name]


def backbone_of_model_type(model_type: str | None) -> Backbone | None:
    """The backbone of a ``config.json``'s ``model_type``, plain or PaDT; None for any other model type."""
    for backbone in BACKBONES.values():
        if model_type in (backbone.base_model_type, backbone.padt_model_type):
            return backbone
    return None
