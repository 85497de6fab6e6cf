"""Streaming: the answer's text as it is generated, and each object, decoded, as soon as its VRT run ends.

``pipe.refer(image, "the cat", streamer=callback)`` (and every other task method) calls ``callback`` with a
``str`` for each new piece of text (VRTs rendered as ``<|VRT_k|>``, never as batch-global ids) and with a
:class:`~padt.results.GroundedObject` for each object, once, in answer order. The final result is returned as
usual and holds the same text and objects. One question at a time: a streamed call takes one image (or one
multi-image sample) and one prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers.generation.streamers import BaseStreamer

from padt.results import GroundedObject
from padt.text.parser import parse_answer
from padt.vision.queries import queries_from_answers

if TYPE_CHECKING:
    from padt.vision.context import VisionContext
    from padt.vision.geometry import ImageGeometry

#: What a streamer callback receives: a piece of text, or a decoded object.
StreamCallback = Callable[[str | GroundedObject], Any]


class GroundingStreamer(BaseStreamer):
    """The ``streamer`` handed to transformers' ``generate`` for one sample: renders text and grounds objects.

    Args:
        pipeline: the :class:`~padt.pipeline.PaDTPipeline` whose model generates (its processor renders, its
            post-processor places objects); not imported here, since the pipeline imports this module.
        vision: the batch's vision context, recording states (the decoder reads the states of past steps).
        geometries: the sample's images' geometries.
        require_labels: as for the task (``False`` for captions).
        callback: receives each text piece and each object.
    """

    def __init__(
        self, pipeline: Any, vision: VisionContext, geometries: list[ImageGeometry], require_labels: bool,
        callback: StreamCallback,
    ) -> None:
        self.pipeline, self.vision, self.geometries = pipeline, vision, geometries
        self.require_labels, self.callback = require_labels, callback
        self.completion: list[int] = []
        self.sent_text = ""
        self.parsed = 0  # objects of the answer already grounded and sent (or dropped), in answer order
        self._prompt_seen = False
        self._ended = False

    def put(self, value: torch.Tensor) -> None:
        """transformers calls this with the prompt first, then with every new token ([1] or [1, 1])."""
        if not self._prompt_seen:  # the prompt: nothing to stream
            self._prompt_seen = True
            return
        if self._ended:
            return
        token = int(value.reshape(-1)[0])
        if token in self.pipeline.processor.eos_ids:
            self._ended = True
            return
        run_ended = bool(self.completion) and self._is_vrt(self.completion[-1]) and not self._is_vrt(token)
        self.completion.append(token)
        self._send_text()
        if run_ended:
            self._send_objects(finished=False)

    def end(self) -> None:
        """The answer is complete (or cut off): the objects not yet sent."""
        self._send_text()
        self._send_objects(finished=True)

    # ---- internals -----------------------------------------------------------------------------------------
    def _is_vrt(self, token: int) -> bool:
        return token >= self.pipeline.processor.vrt_id_start

    def _local_ids(self) -> list[int]:
        ids = torch.tensor([self.completion], dtype=torch.long)
        return self.vision.codec.to_local(ids)[0].tolist()

    def _send_text(self) -> None:
        text = self.pipeline.processor.decode(self._local_ids(), skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split over tokens: wait for the rest of it
            return
        if text.startswith(self.sent_text) and len(text) > len(self.sent_text):
            self.callback(text[len(self.sent_text):])
            self.sent_text = text

    def _send_objects(self, finished: bool) -> None:
        """Ground the objects whose VRT runs have ended and send those not sent before."""
        processor = self.pipeline.processor
        ids = self._local_ids()
        if finished:
            # Read as the pipeline reads the final answer: with its end token, or cut off without one.
            ids = ids + [processor.eos_token_id] if self._ended else ids
            answer = self.pipeline.answer_format.read(ids, processor, self.geometries, self.require_labels)
        else:
            # Mid-answer, only VRT runs can have ended; read what is there as it stands (no end token yet does
            # not make it a cut-off answer whose open parenthesis would drop the object just finished).
            answer = parse_answer(
                ids, vrt_id_start=processor.vrt_id_start, eos_ids=(), require_labels=self.require_labels,
                decode_text=lambda run: processor.tokenizer.decode(run, skip_special_tokens=True),
            )
        # Only the objects not seen before go to the decoder: each object is decoded once.
        answer.objects, self.parsed = answer.objects[self.parsed:], max(self.parsed, len(answer.objects))
        for obj in self._ground(answer):
            self.callback(obj)

    def _ground(self, answer) -> list[GroundedObject]:
        queries, owners = queries_from_answers([answer], self.vision.codec, device=self.vision.prototypes.device)
        if not owners:
            return [GroundedObject(o.label, [], o.box, 1.0, None, 0) for o in answer.objects if o.box is not None]
        states = self.vision.recorder.states()
        decoded = self.pipeline.model.ground(self.vision, states, queries)
        return self.pipeline.postprocess(decoded, self.vision.codec, self.geometries, [o.label for _, o in owners])
