"""What makes a vision-language model a PaDT model, written once for every backbone (:mod:`padt.backbones`).

:class:`PaDTModelMixin` goes before transformers' model class (``Qwen2_5_VLForConditionalGeneration``,
``Qwen3VLForConditionalGeneration``); nothing of transformers is patched. Three hooks differ from the base model:

* **input embeddings**: ids ``>= V`` (batch-global VRT ids, see :mod:`padt.vision.codec`) are embedded from the
  batch's prototypes ``P``; ``<|image_pad|>`` positions get the raw merged patch features as usual;
* **output logits**: ``[h · W_textᵀ ; h · Pᵀ]``, the VRT part set to −inf outside each sample's own images.
  Text logits come from the base model's own head (tied or untied); the embedding table is never concatenated
  with ``P``;
* **generation**: :meth:`generate` computes the vision context once and hands it to every step of transformers'
  own ``generate`` (KV cache, greedy or sampling, all generation kwargs), optionally recording the last-layer
  hidden state of every step for the decoder (the states of ``config.vrt_state_layers`` too, when it pools them).

The PaDT decoder (:class:`padt.decoders.PaDTDecoder`) turns VRT states into boxes, scores and masks:
:meth:`~PaDTModelMixin.ground`. A backbone's class adds three methods: how its vision tower's output is read
(``_tower_features``), where its patches go in the decoder's memory (``_patch_layout``) and how its language
model is called (``_language_model``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.vision_utils import get_vision_position_ids

from padt.backbones import BACKBONES, QWEN2_5_VL
from padt.configuration import PaDTSettings
from padt.decoders import DecoderMemory, LayerAttentionPooling, PaDTDecoder, PaDTDecoderConfig
from padt.decoders.layers import init_weights as init_decoder_module
from padt.decoders.layers import sine_position_encoding
from padt.decoders.memory import first_subpatch_pe
from padt.official.checkpoint import is_official_layout, load_official_model
from padt.text.answer_formats import get_answer_format
from padt.vision.codec import VRTCodec
from padt.vision.context import VisionContext, VisualPrototypes, repeat_sample_rows
from padt.vision.geometry import merged_cell_centres
from padt.vision.queries import DecodedObjects, ObjectQueries, TeacherForcedPass


class PaDTModelMixin:
    """Visual reference tokens and the PaDT decoder, on top of a transformers vision-language model.

    Submodules added to the base model: ``vrt_prototypes`` (:class:`~padt.vision.context.VisualPrototypes`),
    ``vrt_decoder`` (:class:`~padt.decoders.PaDTDecoder`) and, with ``config.vrt_state_layers``,
    ``vrt_state_pooling`` (:class:`~padt.decoders.LayerAttentionPooling`).
    """

    config: PaDTSettings

    def __init__(self, config: PaDTSettings) -> None:
        super().__init__(config)
        text = config.text_config
        self.vrt_prototypes = VisualPrototypes(
            text.hidden_size,
            config.vrt_proj_rank,
            eps=config.vrt_norm_eps if config.vrt_norm_eps is not None else text.rms_norm_eps,
            use_projection=config.use_visual_prototype_projection,
            norm_init=config.vrt_norm_init,
        )
        self.vrt_decoder = PaDTDecoder(PaDTDecoderConfig.from_dict(config.decoder_config))
        self.vrt_state_pooling = None
        if config.vrt_state_layers:
            self.vrt_state_pooling = LayerAttentionPooling(
                text.hidden_size, len(config.vrt_state_layers), eps=text.rms_norm_eps
            )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Our two modules carry their own explicit initialisation (prototype LayerNorm gain at vrt_norm_init, zero
        # by default; RMSNorm ones; normal 0.02 linears) that never depends on which keys a checkpoint lacks. It is
        # applied module by module: for models defined outside transformers, its loader skips modules without
        # parameters of their own (such as VisualPrototypes and PaDTDecoder themselves), so a rule attached to
        # those parents would never run for missing keys. The init functions are guarded by the loader, so loaded
        # parameters are left as they are.
        prototypes, decoder = self._modules.get("vrt_prototypes"), self._modules.get("vrt_decoder")
        pooling = self._modules.get("vrt_state_pooling")
        if pooling is not None and any(module is m for m in pooling.modules()):
            pooling.reset_parameters() if module is pooling else pooling.init_child(module)
            return
        if prototypes is not None and any(module is m for m in prototypes.modules()):
            prototypes.init_child(module)
            return
        if decoder is not None and any(module is m for m in decoder.modules()):
            init_decoder_module(module, decoder.config.initializer_range)
            return
        super()._init_weights(module)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args: Any, **kwargs: Any):
        """transformers' ``from_pretrained``, for a PaDT model on any backbone: a folder saved by a PaDT model on
        another backbone loads as that backbone's class, so ``PaDTForConditionalGeneration.from_pretrained`` opens
        every PaDT folder. A local folder of the official PaDT release (``config.json`` with a ``vl_decoder``
        dict; Qwen2.5-VL) is translated and loaded by :func:`padt.official.checkpoint.load_official_model`."""
        path = pretrained_model_name_or_path
        if path is not None and is_official_layout(path):
            if cls.config_class.backbone is not QWEN2_5_VL:
                raise ValueError(f"{path} is a released PaDT checkpoint (Qwen2.5-VL), not a {cls.__name__} model")
            return load_official_model(path, *model_args, model_class=cls, **kwargs)
        config = kwargs.get("config")
        model_type = config.model_type if config is not None else AutoConfig.from_pretrained(path).model_type
        if model_type != cls.config_class.model_type and model_type in _PADT_MODEL_TYPES:
            return AutoModelForImageTextToText.from_pretrained(path, *model_args, **kwargs)  # the other backbone
        return super().from_pretrained(path, *model_args, **kwargs)

    @property
    def text_vocab_size(self) -> int:
        """V: rows of the text embedding table; VRT ids start here."""
        return self.config.text_config.vocab_size

    # ---- vision ------------------------------------------------------------------------------------------
    def encode_images(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        sample_of_image: torch.Tensor | list[int] | None = None,
        num_samples: int | None = None,
    ) -> VisionContext:
        """Run the vision tower once and build the batch's :class:`VisionContext`.

        Args:
            pixel_values: [ΣN, 3·2·patch²] flattened patches from the processor.
            image_grid_thw: [I, 3] (t, H, W) ViT grid per image.
            sample_of_image: [I] batch row of each image (default: one image per sample, in order).
            num_samples: batch size B (default: the number of images).
        """
        visual = self.model.visual
        merge = self.config.vision_config.spatial_merge_size
        if sample_of_image is None:
            sample_of_image = list(range(len(image_grid_thw)))
        if num_samples is None:
            num_samples = len(image_grid_thw)
        codec = VRTCodec.from_grid_thw(self.text_vocab_size, image_grid_thw, merge, sample_of_image, num_samples)

        image_embeds, merge_block_features, deepstack = self._tower_features(pixel_values, image_grid_thw)
        permutation, token_rc = self._patch_layout(image_grid_thw)
        device = merge_block_features.device
        permutation = permutation.to(device)
        position_ids = get_vision_position_ids(image_grid_thw, merge)
        cos, sin = visual.rotary_pos_emb(merge_block_features, position_ids.to(device))
        high_pe = (cos[permutation], sin[permutation])
        # Low-res tokens take the rotary PE of the first sub-patch of their merge block (as the official
        # decoder does; in "official" order this is the window-ordered PE, reproducing its pairing).
        low_pe = first_subpatch_pe(high_pe, merge)

        cell_encoding = None
        if self.config.prototype_position_encoding:
            cell_encoding = sine_position_encoding(merged_cell_centres(codec.merged_hw, device), image_embeds.shape[-1])
        prototypes = self.vrt_prototypes(image_embeds, cell_encoding)
        memory = DecoderMemory(
            low_res=prototypes,
            low_pe=low_pe,
            high_res=merge_block_features[permutation],
            high_pe=high_pe,
            grid_hw=image_grid_thw[:, 1:].to(device),
            token_rc=token_rc.to(device),
        )
        vrt_mask = codec.logit_mask(device=device)
        if not get_answer_format(self.config.answer_format).names_patches:
            # A format that answers without VRTs (the text-box baseline) may name none: logits −inf, never targets.
            vrt_mask = torch.zeros_like(vrt_mask)
        return VisionContext(
            codec=codec,
            image_embeds=image_embeds,
            prototypes=prototypes,
            vrt_mask=vrt_mask,
            memory=memory,
            grid_thw=image_grid_thw,
            state_layers=len(self.config.vrt_state_layers) + 1 if self.config.vrt_state_layers else 0,
            deepstack=deepstack,
        )

    # ---- embeddings and logits ---------------------------------------------------------------------------
    def embed_input_ids(self, input_ids: torch.Tensor, vision: VisionContext | None) -> torch.Tensor:
        """[B, T] ids (text ids and batch-global VRT ids) -> [B, T, D] input embeddings."""
        vocab = self.text_vocab_size
        is_vrt = input_ids >= vocab
        embed_tokens = self.get_input_embeddings()
        embeds = embed_tokens(input_ids.masked_fill(is_vrt, 0))
        if vision is None:
            if is_vrt.any():
                raise ValueError("input_ids contain VRT ids (>= vocab size) but no images were given")
            return embeds
        if is_vrt.any():
            rows = input_ids[is_vrt] - vocab
            if int(rows.max()) >= vision.prototypes.shape[0]:
                raise ValueError(
                    f"VRT id {int(rows.max()) + vocab} is beyond this batch's {vision.prototypes.shape[0]} patches"
                )
            embeds = embeds.index_put((is_vrt,), vision.prototypes[rows].to(embeds.dtype))
        image_positions = input_ids == self.config.image_token_id
        n_image_tokens = int(image_positions.sum())
        if n_image_tokens:
            image_embeds = vision.rows_for_batch(vision.image_embeds, input_ids.shape[0])
            if n_image_tokens != image_embeds.shape[0]:
                raise ValueError(
                    f"the prompt has {n_image_tokens} image tokens but the images give {image_embeds.shape[0]}"
                )
            embeds = embeds.index_put((image_positions,), image_embeds.to(embeds.dtype))
        return embeds

    def vrt_logits(self, hidden: torch.Tensor, vision: VisionContext) -> torch.Tensor:
        """[B, T, D] hidden states -> [B, T, P] VRT logits, −inf outside each sample's own patches."""
        logits = hidden @ vision.prototypes.to(hidden.dtype).T
        mask = vision.vrt_mask
        if mask.shape[0] != hidden.shape[0]:
            # generate(num_return_sequences=k) repeats every sample k times in a row.
            mask = mask.repeat_interleave(hidden.shape[0] // mask.shape[0], dim=0)
        return logits.masked_fill(~mask[:, None, :], float("-inf"))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        sample_of_image: torch.LongTensor | None = None,
        vision: VisionContext | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Forward pass over text and batch-global VRT ids.

        Either pass ``pixel_values`` + ``image_grid_thw`` (+ ``sample_of_image`` for several images per sample) or a
        ``vision`` context from :meth:`encode_images`. Returns logits [B, T', V + P] (text then VRTs). With
        ``labels`` [B, T] (unshifted, −100 ignored) the loss is the plain next-token cross-entropy over those
        logits; training uses :mod:`padt.losses` instead, which never materialises them for every position.
        """
        if vision is None and pixel_values is not None:
            vision = self.encode_images(pixel_values, image_grid_thw, sample_of_image, num_samples=input_ids.shape[0])
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids, vision)
        outputs = self._language_model(
            input_ids,
            inputs_embeds,
            vision,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            image_grid_thw=image_grid_thw if image_grid_thw is not None else (vision.grid_thw if vision else None),
            mm_token_type_ids=mm_token_type_ids,
            **self._hidden_states_kwargs(kwargs),
        )
        hidden = outputs.last_hidden_state
        if vision is not None and vision.recorder is not None:
            layer_states = self._layer_states(outputs)
            vision.recorder.record((hidden if layer_states is None else layer_states)[:, -1])
        kept = slice_logits_to_keep(hidden, logits_to_keep)
        logits = self.lm_head(kept)
        if vision is not None:
            logits = torch.cat([logits, self.vrt_logits(kept, vision).to(logits.dtype)], dim=-1)
        loss = None
        if labels is not None:
            shifted = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), shifted.flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def answer_states(
        self,
        input_ids: torch.Tensor,
        vision: VisionContext | None,
        attention_mask: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T, D] last-layer hidden states (after the final norm) of a teacher-forced pass, no logits.

        ``input_ids`` hold batch-global VRT ids. The state at position ``t`` is the one that predicts token
        ``t + 1``: training losses and :meth:`ground` pick states this way.
        """
        return self._answer_outputs(input_ids, vision, attention_mask, mm_token_type_ids).last_hidden_state

    def _answer_outputs(self, input_ids, vision, attention_mask, mm_token_type_ids) -> Any:
        """The language model's outputs of a teacher-forced pass (every layer's states with layer pooling)."""
        return self._language_model(
            input_ids,
            self.embed_input_ids(input_ids, vision),
            vision,
            attention_mask=attention_mask,
            image_grid_thw=vision.grid_thw if vision is not None else None,
            mm_token_type_ids=mm_token_type_ids,
            use_cache=False,
            **self._hidden_states_kwargs({}),
        )

    def _hidden_states_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` asking the language model for every layer's states when the decoder pools some of them."""
        return {**kwargs, "output_hidden_states": True} if self.vrt_state_pooling is not None else kwargs

    def _layer_states(self, outputs: Any) -> torch.Tensor | None:
        """[B, T, L + 1, D]: the outputs of ``config.vrt_state_layers``, then the last layer's final-normed state
        (what :class:`~padt.decoders.LayerAttentionPooling` pools); None without layer pooling."""
        if self.vrt_state_pooling is None:
            return None
        chosen = [outputs.hidden_states[layer] for layer in self.config.vrt_state_layers]
        return torch.stack(chosen + [outputs.last_hidden_state], dim=-2)

    # ---- generation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        sample_of_image: torch.LongTensor | None = None,
        vision: VisionContext | None = None,
        **kwargs: Any,
    ):
        """transformers' ``generate`` with the vision context computed once, before the prefill.

        Returns what ``GenerationMixin.generate`` returns; generated VRTs carry batch-global ids (convert with
        ``vision.codec.to_local``). To get the states the decoder needs, pass a ``vision`` context from
        :meth:`encode_images` inside ``with vision.recording() as recorded:`` and read ``recorded.states()``.
        Beam search is not supported: its re-ordering of beams would scramble the recorded states.
        """
        generation_config = kwargs.get("generation_config") or self.generation_config
        if (kwargs.get("num_beams") or generation_config.num_beams or 1) > 1:
            raise NotImplementedError("PaDT generation supports greedy decoding and sampling, not beam search")
        if vision is None and pixel_values is not None:
            vision = self.encode_images(pixel_values, image_grid_thw, sample_of_image, num_samples=input_ids.shape[0])
        if vision is not None:
            kwargs["vision"] = vision
            kwargs.setdefault("image_grid_thw", vision.grid_thw)
        return super().generate(input_ids=input_ids, **kwargs)

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs: Any
    ):
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        vision = model_kwargs.get("vision")
        if expand_size > 1 and vision is not None:
            # transformers repeats image_grid_thw image by image; each copy of a sample must list all its images.
            spans, start = [], 0
            for b in range(vision.codec.num_samples):  # images are ordered by sample
                count = vision.codec.sample_of_image.count(b)
                spans.append((start, start + count))
                start += count
            index = repeat_sample_rows(spans, expand_size)
            model_kwargs["image_grid_thw"] = vision.grid_thw[index.to(vision.grid_thw.device)]
        return input_ids, model_kwargs

    # ---- grounding ---------------------------------------------------------------------------------------
    def teacher_forced(self, inputs: Any, vision: VisionContext | None = None) -> TeacherForcedPass:
        """One teacher-forced pass over a processor batch with answers: vision context and last-layer states.

        ``inputs`` is what :class:`~padt.processing.PaDTProcessor` returns for (images, prompts, answers): local
        VRT ids, ``pixel_values``, ``image_grid_thw``, ``sample_of_image``, ``attention_mask``, ``mm_token_type_ids``.
        ``vision``, when given, is the batch's context computed before (an encoded image's): the vision tower
        does not run again. The pipeline (``decode_answer``), the training objective and the visualiser all run
        this one pass.
        """
        if vision is None:
            vision = self.encode_images(
                inputs["pixel_values"], inputs["image_grid_thw"], inputs["sample_of_image"],
                inputs["input_ids"].shape[0],
            )
        input_ids = vision.codec.to_global(inputs["input_ids"])
        outputs = self._answer_outputs(input_ids, vision, inputs["attention_mask"], inputs["mm_token_type_ids"])
        return TeacherForcedPass(vision, input_ids, outputs.last_hidden_state, self._layer_states(outputs))

    def ground(
        self,
        vision: VisionContext,
        states: torch.Tensor,
        queries: ObjectQueries,
        *,
        use_prototypes: bool = False,
        detach_memory: bool = False,
    ) -> DecodedObjects:
        """Boxes, scores and masks of the K objects ``queries`` names, all in one decoder call.

        Args:
            vision: the batch's context from :meth:`encode_images`.
            states: [B, T, D] last-layer states, or [B, T, L + 1, D] layer states with layer pooling
                (``config.vrt_state_layers``); ``states[b, p]`` for each VRT's ``p`` in ``queries.positions`` is
                the state that predicted it (the recorded generation steps with completion positions, or a
                teacher-forced pass's ``decoder_states`` with :meth:`TeacherForcedPass.predicting_queries`).
            queries: the objects' VRTs and their positions on the ``T`` axis.
            use_prototypes: decoder warm-up: read each VRT's prototype instead of the state that predicted it.
            detach_memory: keep the decoder's losses from reaching the vision tower through its memory.
        """
        rows = vision.codec.rows(queries.vrt_sample, queries.vrt_local)
        if use_prototypes:
            vrt_states = vision.prototypes[rows]
        else:
            vrt_states = states[queries.vrt_sample, queries.positions]
            if self.vrt_state_pooling is not None:
                vrt_states = self.vrt_state_pooling(vrt_states)
        object_image = vision.codec.image_of_rows(rows[queries.first_vrt])
        memory = vision.memory
        if detach_memory:
            memory = replace(memory, low_res=memory.low_res.detach(), high_res=memory.high_res.detach())
        decoded = self.vrt_decoder(vrt_states, queries.vrt_counts, object_image, memory, vrt_rows=rows)
        return DecodedObjects(decoded, object_image, rows, queries.vrt_counts)


#: ``model_type`` of every PaDT configuration (one per backbone).
_PADT_MODEL_TYPES = tuple(backbone.padt_model_type for backbone in BACKBONES.values())
