"""PaDT configurations: a Qwen2.5-VL or Qwen3-VL configuration plus the settings of the PaDT modules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen3VLConfig

from padt.backbones import QWEN2_5_VL, QWEN3_VL, Backbone, backbone_of_model_type
from padt.text.answer_formats import get_answer_format
from padt.vision.geometry import PATCH_ORDERS


@dataclass
class PaDTSettings:
    r"""The settings of the PaDT modules, shared by :class:`PaDTConfig` (Qwen2.5-VL) and :class:`PaDTQwen3VLConfig`
    (Qwen3-VL): everything of the backbone's configuration (``text_config``, ``vision_config``, special token
    ids) plus:

    Args:
        vrt_proj_rank (`int`, *optional*, defaults to 64):
            Rank of the bias-free low-rank projection in the visual prototypes ``P = n + up(down(n))``.
        vrt_norm_eps (`float`, *optional*):
            Epsilon of the prototypes' LayerNorm; `None` takes the text config's `rms_norm_eps`. The released
            PaDT checkpoints use PyTorch's default 1e-5.
        vrt_norm_init (`float`, *optional*, defaults to 0.0):
            Starting value of the prototypes' LayerNorm gain. `0.0` (the reference) makes every prototype 0 at
            initialisation, so VRTs start neutral. Started at zero, the gain grows only in the feature directions
            that the first steps of training reward; `1.0` starts a plain LayerNorm (the tiny demo model's choice;
            ``docs/architecture.md`` says what each start did to it).
        use_visual_prototype_projection (`bool`, *optional*, defaults to `True`):
            When `False`, the prototypes are the raw merged patch features (the official ablation switch).
        prototype_position_encoding (`bool`, *optional*, defaults to `False`):
            Add a fixed 2-D sinusoidal code of each merged cell's normalised centre to the merged features before
            the prototypes' LayerNorm. Qwen2.5-VL's vision tower has only rotary (relative) positions, so
            two patches that look alike get near-identical prototypes and `h·Pᵀ` cannot tell "the leftmost circle"
            from another circle by content; with the code it can. Off in the reference (and needed off for its
            weights); the tiny demo model uses it. The code does not change the prototypes' start (see
            `vrt_norm_init`).
        patch_order (`str`, *optional*, defaults to `"raster"`):
            How the decoder consumes high-resolution patches: `"raster"` (true positions; for training) or
            `"official"` (window order placed as raster, to reproduce the released PaDT checkpoints).
        num_vrt_per_object (`int`, *optional*, defaults to 5):
            VRTs written per object in training answers (unless `TrainConfig.vrts_per_object` says otherwise) and in
            the teacher-forced answers of `padt eval --mode teacher_forced`.
        decoder_config (`dict`, *optional*):
            Settings of :class:`padt.decoders.PaDTDecoderConfig`. Sizes left out are taken from the vision tower
            (hidden size, heads, MLP width, merge size) and the language model (hidden size).
        vrt_state_layers (`list[int]`, *optional*):
            Language-model layers whose output states the decoder pools with the last layer's state for each VRT
            (layer-wise attention pooling, :class:`padt.decoders.LayerAttentionPooling`): `0` is the embedding
            output, `i` the output of layer `i` (below the last). `None` (the default, as in the paper and the
            released checkpoints): the decoder reads the last layer's state only. The pooling starts as that
            default (its output projection is zero) and learns how much of each layer to add. On the tiny demo task
            it lost on both seeds measured (``docs/architecture.md``), so it is off by default.
        answer_format (`str`, *optional*, defaults to `"vrt"`):
            How the model answers: `"vrt"` (PaDT: visual reference tokens, decoded to boxes and masks) or
            `"text-boxes"` (the text-coordinate baseline: Qwen2.5-VL's JSON boxes, see :mod:`padt.text.text_boxes`).
            A `"text-boxes"` model never emits VRTs (their logits are −inf) and its decoder is unused.

    Example:

    ```python
    >>> from padt import PaDTConfig
    >>> config = PaDTConfig(vrt_proj_rank=64, patch_order="raster")
    >>> config.decoder_config["hidden_size"] == config.vision_config.hidden_size
    True
    ```
    """

    vrt_proj_rank: int = 64
    vrt_norm_eps: float | None = None
    vrt_norm_init: float = 0.0
    use_visual_prototype_projection: bool = True
    prototype_position_encoding: bool = False
    patch_order: str = "raster"
    num_vrt_per_object: int = 5
    decoder_config: dict | None = None
    vrt_state_layers: list[int] | None = None
    answer_format: str = "vrt"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.patch_order not in PATCH_ORDERS:
            raise ValueError(f"patch_order must be one of {PATCH_ORDERS}, got {self.patch_order!r}")
        if self.vrt_proj_rank < 1:
            raise ValueError(f"vrt_proj_rank must be at least 1, got {self.vrt_proj_rank}")
        if not math.isfinite(self.vrt_norm_init):
            raise ValueError(f"vrt_norm_init must be a finite number, got {self.vrt_norm_init}")
        get_answer_format(self.answer_format)  # raises ValueError naming the known formats
        if self.num_vrt_per_object < 1:
            raise ValueError(f"num_vrt_per_object must be at least 1, got {self.num_vrt_per_object}")
        self._check_state_layers()
        if self.prototype_position_encoding and not self.use_visual_prototype_projection:
            raise ValueError("prototype_position_encoding needs use_visual_prototype_projection=True")
        vision = self.vision_config
        derived = {
            "hidden_size": vision.hidden_size,
            "num_attention_heads": vision.num_heads,
            "intermediate_size": vision.intermediate_size,
            "spatial_merge_size": vision.spatial_merge_size,
            "llm_hidden_size": self.text_config.hidden_size,
        }
        self.decoder_config = {**derived, **(self.decoder_config or {})}
        if self.decoder_config.get("memory_position_encoding") and self.patch_order != "raster":
            raise ValueError("decoder_config memory_position_encoding needs patch_order='raster'")
        # The decoder adds raw pre-merger features into its memory, so it must work at the tower's width.
        if self.decoder_config["hidden_size"] != vision.hidden_size:
            raise ValueError(
                f"decoder_config hidden_size ({self.decoder_config['hidden_size']}) must equal the vision tower's "
                f"hidden_size ({vision.hidden_size})"
            )

    def _check_state_layers(self) -> None:
        layers = self.vrt_state_layers
        if layers is None:
            return
        below_last = self.text_config.num_hidden_layers
        if not layers or any(not 0 <= layer < below_last for layer in layers) or len(set(layers)) != len(layers):
            raise ValueError(
                f"vrt_state_layers must be distinct layer indices in [0, {below_last}) (0: the embeddings, i: the "
                f"output of layer i; the last layer is always pooled), or None; got {layers}"
            )


@strict
class PaDTConfig(PaDTSettings, Qwen2_5_VLConfig):
    """Configuration of :class:`~padt.PaDTForConditionalGeneration`: Qwen2.5-VL plus :class:`PaDTSettings`."""

    model_type = QWEN2_5_VL.padt_model_type
    backbone: ClassVar[Backbone] = QWEN2_5_VL


@strict
class PaDTQwen3VLConfig(PaDTSettings, Qwen3VLConfig):
    """Configuration of :class:`~padt.PaDTQwen3VLForConditionalGeneration`: Qwen3-VL plus :class:`PaDTSettings`.

    ``patch_order`` must be ``"raster"``: the ``"official"`` order reproduces released Qwen2.5-VL checkpoints, whose
    vision tower has windows; Qwen3-VL's has none.
    """

    model_type = QWEN3_VL.padt_model_type
    backbone: ClassVar[Backbone] = QWEN3_VL

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.patch_order != "raster":
            raise ValueError(
                f"patch_order {self.patch_order!r} is for released Qwen2.5-VL PaDT checkpoints; Qwen3-VL has no "
                "window attention, so its patches are always in 'raster' order"
            )


CONFIG_CLASSES = (PaDTConfig, PaDTQwen3VLConfig)


def padt_config_class(model_type: str | None) -> type[PaDTConfig] | type[PaDTQwen3VLConfig]:
    """The PaDT configuration class for a backbone's (or a PaDT model's) ``model_type``: the plain backbone
    chooses which PaDT configuration it becomes. ``ValueError`` for other model types."""
    backbone = backbone_of_model_type(model_type)
    if backbone is None:
        known = ", ".join(f"{c.backbone.base_model_type} / {c.model_type}" for c in CONFIG_CLASSES)
        raise ValueError(f"model_type {model_type!r} is not a backbone PaDT supports ({known})")
    return next(c for c in CONFIG_CLASSES if c.backbone is backbone)


def padt_config_from_base(base: dict[str, Any], **settings: Any) -> PaDTConfig | PaDTQwen3VLConfig:
    """A PaDT configuration from a plain backbone's ``config.json`` contents (its ``model_type`` chooses the class)
    and PaDT ``settings``."""
    fields = {k: v for k, v in base.items() if k not in ("model_type", "architectures")}
    return padt_config_class(base.get("model_type"))(**{**fields, **settings})


# transformers' public registration API: lets AutoConfig (and AutoTokenizer, which reads config.json) know the
# PaDT model types. It adds entries to transformers' registry; it replaces nothing.
for _config_class in CONFIG_CLASSES:
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
