"""PaDTForConditionalGeneration: Qwen2.5-VL that can name image patches in its answers."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForImageTextToText, Qwen2_5_VLForConditionalGeneration

from padt.configuration import PaDTConfig
from padt.modeling.base import PaDTModelMixin
from padt.vision.context import VisionContext
from padt.vision.geometry import high_res_layout, window_order


class PaDTForConditionalGeneration(PaDTModelMixin, Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL with visual reference tokens and the PaDT decoder (:class:`~padt.modeling.base.PaDTModelMixin`).

    ``from_pretrained`` opens any PaDT folder: one of another backbone comes back as that backbone's class.
    """

    config_class = PaDTConfig
    config: PaDTConfig

    def _tower_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """The vision tower's merged features [P, D] (raster order of the merged grids), its pre-merger states
        [ΣN, C] in merge-block order, and no DeepStack features."""
        visual = self.model.visual
        vision_config = self.config.vision_config
        out = visual(pixel_values.type(visual.dtype), grid_thw=image_grid_thw)
        window_features = out.last_hidden_state  # the tower's window order
        unit = vision_config.spatial_merge_size**2
        cells = window_order(
            image_grid_thw, vision_config.spatial_merge_size, vision_config.window_size, vision_config.patch_size
        )
        channels = window_features.shape[-1]
        merge_block = window_features.view(-1, unit, channels)[torch.argsort(cells.to(window_features.device))]
        return out.pooler_output, merge_block.reshape(-1, channels), ()

    def _patch_layout(self, image_grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`padt.vision.geometry.high_res_layout` in the configured patch order (windows known)."""
        vision_config = self.config.vision_config
        return high_res_layout(
            image_grid_thw, vision_config.spatial_merge_size, self.config.patch_order,
            window_size=vision_config.window_size, patch_size=vision_config.patch_size,
        )

    def _language_model(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, vision: VisionContext | None, **kwargs: Any
    ) -> Any:
        """The base model's language part over ``inputs_embeds`` (it reads ``input_ids`` for M-RoPE positions)."""
        return self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)


AutoModelForImageTextToText.register(PaDTConfig, PaDTForConditionalGeneration, exist_ok=True)
