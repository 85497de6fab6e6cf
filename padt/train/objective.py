"""The training objective as one module, so that DDP/FSDP/DeepSpeed wrap a single ``forward``.

Distributed wrappers synchronise gradients around the wrapped module's ``forward``. PaDT's training step uses
several model entry points (vision pass, teacher-forced states, decoder); calling them one by one on a wrapped
model would bypass the wrapper. :class:`PaDTObjective` runs them all inside its own ``forward`` and returns the
loss terms of :class:`padt.losses.PaDTCriterion`.
"""

from __future__ import annotations

import torch
from torch import nn

from padt.datasets.training import TrainingBatch
from padt.losses import PaDTCriterion


class PaDTObjective(nn.Module):
    """Model + criterion. ``forward(batch, use_gt_prototypes, num_boxes)`` -> dict of loss terms.

    Args:
        model: a :class:`~padt.PaDTForConditionalGeneration` (or a PEFT model wrapping one).
        criterion: the weighted loss terms.
        decoder_trains_vision: whether the decoder's losses reach the vision tower and the prototypes through
            the decoder's memory. ``False`` detaches the memory: those losses still train the decoder and the
            states it reads, and reach the vision side only through them (the LLM's states; during the decoder
            warm-up, the ground-truth VRTs' prototypes). Meant for a vision tower trained from scratch, which
            box and mask losses otherwise teach to drop what they do not need (colour, for instance) although
            the answers need it.
    """

    def __init__(self, model: nn.Module, criterion: PaDTCriterion, decoder_trains_vision: bool = True) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.decoder_trains_vision = decoder_trains_vision

    @property
    def padt(self):
        """The PaDT model under any PEFT wrapper."""
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def forward(
        self, batch: TrainingBatch, use_gt_prototypes: bool = False, num_boxes: float | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one batch.

        Args:
            batch: from :class:`~padt.datasets.training.GroundingCollator`, on the model's device.
            use_gt_prototypes: decoder warm-up (as the reference trains the first steps): feed the decoder the
                prototypes of the ground-truth VRTs instead of the language model's states.
            num_boxes: divisor of box and score sums; pass the object count of the *global* batch under
                data parallelism so every process weighs objects alike (default: this batch's count).
        """
        model = self.padt
        self._register_external_head(model)
        forced = model.teacher_forced(batch.inputs)
        vision, input_ids, hidden = forced.vision, forced.input_ids, forced.hidden

        # labels[b, t] is the token at t + 1 where that token belongs to the answer (incl. its end token).
        labels = torch.full_like(input_ids, -100)
        supervised = batch.inputs["answer_mask"][:, 1:]
        labels[:, :-1] = torch.where(supervised, input_ids[:, 1:], labels[:, :-1])

        exclude = batch.exclude_local.clone()
        exclude[:, 2] = vision.codec.rows(exclude[:, 0], exclude[:, 2])

        decoder_terms = {}
        if batch.num_objects:
            decoded = model.ground(
                vision, forced.decoder_states, forced.predicting_queries(batch.queries),
                use_prototypes=use_gt_prototypes, detach_memory=not self.decoder_trains_vision,
            ).output
            decoder_terms = dict(
                pred_boxes=decoded.boxes,
                gt_boxes=batch.boxes,
                score_logits=decoded.score_logits,
                mask_logits=_checked_masks(decoded.mask_logits, batch.masks),
                gt_masks=batch.masks.to(decoded.boxes.dtype) if decoded.mask_logits is not None else None,
                mask_valid_hw=batch.mask_hw,
                has_mask=batch.has_mask,
                num_boxes=num_boxes,
            )
        return self.criterion(
            hidden=hidden,
            labels=labels,
            text_weight=model.lm_head.weight,
            prototypes=vision.prototypes,
            vrt_allowed=vision.vrt_mask,
            vrt_exclude=exclude,
            **decoder_terms,
        )


    def _register_external_head(self, model) -> None:
        """Under DeepSpeed ZeRO-3, have the LM head's weight gathered for this module's forward and backward.

        The loss reads it directly (outside ``lm_head.forward``), where ZeRO-3 would leave it partitioned.
        """
        weight = model.lm_head.weight
        if hasattr(weight, "ds_id") and not getattr(self, "_head_registered", False):
            from deepspeed.zero import register_external_parameter

            register_external_parameter(self, weight)
            self._head_registered = True


def _checked_masks(mask_logits: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor | None:
    """Both the decoder and the collate pad masks bottom/right to the batch's largest image: the shapes must agree."""
    if mask_logits is None:
        return None
    if mask_logits.shape[1:] != target.shape[1:]:
        raise ValueError(
            f"decoder masks {tuple(mask_logits.shape[1:])} and targets {tuple(target.shape[1:])} differ: "
            "the dataset's mask_scale does not match the decoder's mask_upscale_stages"
        )
    return mask_logits
