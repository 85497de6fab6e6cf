"""PaDTQwen3VLForConditionalGeneration: Qwen3-VL that can name image patches in its answers.

Qwen3-VL's vision tower has no windows, so its pre-merger states come out in merge-block order, as the decoder's
memory wants them. Its language model takes DeepStack features: the merged states of some vision layers
(``vision_config.deepstack_visual_indexes``), added to the image tokens' hidden states after the first LLM layers.
transformers adds them only when the model itself runs the vision tower; PaDT runs the tower once per batch
(:meth:`~padt.modeling.base.PaDTModelMixin.encode_images`), keeps the features in the vision context and hands
them to the language model wherever image tokens are in the input (a prompt, or an encoded image's prefix).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForImageTextToText, Qwen3VLForConditionalGeneration

from padt.configuration import PaDTQwen3VLConfig
from padt.modeling.base import PaDTModelMixin
from padt.vision.context import VisionContext
from padt.vision.geometry import high_res_layout


class PaDTQwen3VLForConditionalGeneration(PaDTModelMixin, Qwen3VLForConditionalGeneration):
    """Qwen3-VL with visual reference tokens and the PaDT decoder (:class:`~padt.modeling.base.PaDTModelMixin`)."""

    config_class = PaDTQwen3VLConfig
    config: PaDTQwen3VLConfig

    def _tower_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """The vision tower's merged features [P, D], its pre-merger states [ΣN, C] (merge-block order, as the
        tower keeps them) and its DeepStack features (one [P, D] per ``deepstack_visual_indexes`` entry)."""
        visual = self.model.visual
        out = visual(pixel_values.type(visual.dtype), grid_thw=image_grid_thw)
        return out.pooler_output, out.last_hidden_state, tuple(out.deepstack_features)

    def _patch_layout(self, image_grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`padt.vision.geometry.high_res_layout` in raster order (the only one without windows)."""
        return high_res_layout(image_grid_thw, self.config.vision_config.spatial_merge_size, "raster")

    def _language_model(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        vision: VisionContext | None,
        *,
        position_ids: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The language model over ``inputs_embeds`` with interleaved M-RoPE positions (from ``input_ids`` when
        not given) and the DeepStack features of the image tokens in ``input_ids``."""
        if position_ids is None:
            position_ids = self.model.compute_3d_position_ids(
                input_ids=input_ids, inputs_embeds=inputs_embeds, image_grid_thw=image_grid_thw,
                attention_mask=kwargs.get("attention_mask"), past_key_values=kwargs.get("past_key_values"),
                mm_token_type_ids=mm_token_type_ids,
            )
        image_positions, deepstack = self._deepstack_inputs(input_ids, vision)
        return self.model.language_model(
            inputs_embeds=inputs_embeds, position_ids=position_ids, visual_pos_masks=image_positions,
            deepstack_visual_embeds=deepstack, **kwargs,
        )

    def _deepstack_inputs(
        self, input_ids: torch.Tensor, vision: VisionContext | None
    ) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
        """bool [B, T] image-token positions and the DeepStack features of those tokens, or ``(None, None)`` when
        ``input_ids`` hold no image token (generation steps, questions after an encoded prefix)."""
        if vision is None or not vision.deepstack:
            return None, None
        image_positions = input_ids == self.config.image_token_id
        if not bool(image_positions.any()):
            return None, None
        features = [vision.rows_for_batch(layer, input_ids.shape[0]) for layer in vision.deepstack]
        if int(image_positions.sum()) != features[0].shape[0]:
            raise ValueError(
                f"the prompt has {int(image_positions.sum())} image tokens but the images give {features[0].shape[0]}"
            )
        return image_positions, features


AutoModelForImageTextToText.register(PaDTQwen3VLConfig, PaDTQwen3VLForConditionalGeneration, exist_ok=True)
