"""Which answer tokens each object of a batch is decoded from (the decoder's queries, as flat tensors), the
teacher-forced pass they come from, and what the decoder gives back.

An object is a run of visual reference tokens (VRTs) in one sample's answer. The decoder reads, for each of its
VRTs, the language model's state that *predicted* that token, plus (for decoders with ``vrt_patch_features``)
the prototype row the VRT names. Training builds these queries from the targets it wrote
(:attr:`padt.datasets.training.TrainingBatch.queries`), the pipeline from what the parser found
(:func:`queries_from_answers`); both hand them to
:meth:`padt.modeling.PaDTForConditionalGeneration.ground`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from padt.decoders import DecoderOutput
from padt.text.parser import ParsedAnswer, ParsedObject
from padt.vision.codec import VRTCodec
from padt.vision.context import VisionContext


@dataclass
class ObjectQueries:
    """K objects of a batch, their VRTs object after object (ΣQ VRTs in all).

    Attributes:
        sample: LongTensor [K], the batch row of each object.
        vrt_counts: LongTensor [K], VRTs per object.
        vrt_local: LongTensor [ΣQ], each VRT's local index (``<|VRT_k|>``: patch k of the sample's images).
        positions: LongTensor [ΣQ], for each VRT the index on the time axis of the states handed to ``ground``
            of the state that predicted it: the VRT's completion position for recorded generation states (step
            ``s`` predicted token ``s``); in a teacher-forced sequence, built from the VRT tokens' positions and
            shifted by :meth:`TeacherForcedPass.predicting_queries`.
    """

    sample: torch.Tensor
    vrt_counts: torch.Tensor
    vrt_local: torch.Tensor
    positions: torch.Tensor

    @property
    def num_objects(self) -> int:
        return int(self.vrt_counts.numel())

    @property
    def vrt_sample(self) -> torch.Tensor:
        """LongTensor [ΣQ], the batch row of each VRT."""
        return self.sample.repeat_interleave(self.vrt_counts)

    @property
    def first_vrt(self) -> torch.Tensor:
        """LongTensor [K], the index (into the ΣQ VRTs) of each object's first VRT."""
        return self.vrt_counts.cumsum(0) - self.vrt_counts

    def to(self, device: torch.device | str) -> ObjectQueries:
        return ObjectQueries(*(t.to(device) for t in (self.sample, self.vrt_counts, self.vrt_local, self.positions)))


def queries_from_answers(
    answers: list[ParsedAnswer], codec: VRTCodec, device: torch.device | str | None = None
) -> tuple[ObjectQueries, list[tuple[int, ParsedObject]]]:
    """The queries of every object the parser found, and ``(sample, object)`` for each, in the same order.

    Objects without VRTs (the text-box baseline's) are skipped. An object whose VRT run names patches of two
    different images of its sample cannot be decoded against one image's memory: it is dropped, and the answer's
    ``problems`` say so.
    """
    kept: list[tuple[int, ParsedObject]] = []
    for b, answer in enumerate(answers):
        for obj in answer.objects:
            if not obj.patches:
                continue
            images = {codec.local_to_image_patch(b, p)[0] for p in obj.patches}
            if len(images) > 1:
                answer.problems.append(
                    f'object "{obj.label}" (patches {obj.patches}) names patches of {len(images)} different images '
                    "of the sample; dropped"
                )
                continue
            kept.append((b, obj))
    queries = ObjectQueries(
        sample=torch.tensor([b for b, _ in kept], dtype=torch.long),
        vrt_counts=torch.tensor([len(obj.patches) for _, obj in kept], dtype=torch.long),
        vrt_local=torch.tensor([p for _, obj in kept for p in obj.patches], dtype=torch.long),
        positions=torch.tensor([t for _, obj in kept for t in obj.positions], dtype=torch.long),
    )
    return queries.to(device) if device is not None else queries, kept


@dataclass
class TeacherForcedPass:
    """What one teacher-forced pass gives: the vision context, the batch-global ids and the states.

    Attributes:
        vision: the batch's :class:`~padt.vision.context.VisionContext`.
        input_ids: [B, T] ids with batch-global VRT ids.
        hidden: [B, T, D] last-layer states; ``hidden[:, t]`` predicts token ``t + 1``.
        layer_states: [B, T, L + 1, D] the states the decoder pools when the model pools layers
            (``PaDTConfig.vrt_state_layers``), else None.
    """

    vision: VisionContext
    input_ids: torch.Tensor
    hidden: torch.Tensor
    layer_states: torch.Tensor | None = None

    @property
    def decoder_states(self) -> torch.Tensor:
        """What ``model.ground`` reads: :attr:`layer_states` when the model pools layers, else :attr:`hidden`."""
        return self.hidden if self.layer_states is None else self.layer_states

    def predicting(self, positions: torch.Tensor, *, for_decoder: bool = False) -> torch.Tensor:
        """[B, N, D]: for each of the N token positions ``t`` (all ``>= 1``), the state that predicted token ``t``
        (with ``for_decoder``, from :attr:`decoder_states`: [B, N, L + 1, D] when the model pools layers)."""
        return (self.decoder_states if for_decoder else self.hidden)[:, positions - 1]

    def predicting_queries(self, queries: ObjectQueries) -> ObjectQueries:
        """``queries`` (VRT token positions) pointing at the state that predicted each VRT, so that
        ``ground(vision, self.decoder_states, ...)`` reads them without a shifted copy of every state."""
        return replace(queries, positions=queries.positions - 1)


@dataclass
class DecodedObjects:
    """The decoder's predictions for K objects, with what the post-processor needs to place them.

    Attributes:
        output: boxes [K, 4] (cx, cy, w, h) normalised to the image, score logits [K], mask logits
            [K, Hm, Wm] on the patch grid (zero-padded to the batch's largest image) and their valid sizes.
        object_image: LongTensor [K], the batch image each object is in.
        vrt_rows: LongTensor [ΣQ], the global VRT index (prototype row) of each VRT, object after object.
        vrt_counts: LongTensor [K], VRTs per object.
    """

    output: DecoderOutput
    object_image: torch.Tensor
    vrt_rows: torch.Tensor
    vrt_counts: torch.Tensor
