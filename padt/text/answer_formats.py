"""Answer formats: how a model writes its objects, as objects that render a training answer and read a completion.

* ``"vrt"`` (PaDT): objects are runs of visual reference tokens ``<|VRT_k|>``; the decoder turns each run into a
  box, a score and a mask.
* ``"text-boxes"`` (the text-coordinate baseline, :mod:`padt.text.text_boxes`): Qwen2.5-VL's own fenced JSON list
  of ``bbox_2d`` boxes in resized-image pixels; objects come with a box read from the text, no patches, no mask.

The model saves the name of its format (``PaDTConfig.answer_format``); nothing else in padt branches on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from padt.text.parser import ParsedAnswer, ParsedObject, parse_answer
from padt.text.prompts import render_answer
from padt.text.text_boxes import parse_text_boxes, record_text_box_answer

if TYPE_CHECKING:
    from padt.vision.geometry import ImageGeometry


class AnswerFormat:
    """The interface: a name, whether answers name patches, a training answer, and a reader of completions.

    Attributes:
        name: what ``PaDTConfig.answer_format`` and ``TrainConfig.answer_format`` say.
        names_patches: whether answers contain VRTs (and so logits over patches and decoder targets).
    """

    name: str
    names_patches: bool

    def training_answer(self, record: Any, geometry: ImageGeometry, object_vrts: Sequence[Sequence[int]]) -> str:
        """The teacher-forced answer of a record; ``object_vrts`` are the VRTs sampled for each of its objects."""
        raise NotImplementedError

    def read(
        self, completion_ids: Sequence[int], processor: Any, geometries: Sequence[ImageGeometry], require_labels: bool
    ) -> ParsedAnswer:
        """Parse one completion (local ids, prompt removed) of a sample whose images have ``geometries``.

        Never raises on malformed model output: problems go to ``ParsedAnswer.problems``.
        """
        raise NotImplementedError


class VRTAnswers(AnswerFormat):
    """PaDT's answers: labels in text, objects as runs of ``<|VRT_k|>`` (:mod:`padt.text.parser`)."""

    name = "vrt"
    names_patches = True

    def training_answer(self, record: Any, geometry: ImageGeometry, object_vrts: Sequence[Sequence[int]]) -> str:
        return render_answer(record.answer_template, object_vrts)

    def read(self, completion_ids, processor, geometries, require_labels: bool) -> ParsedAnswer:
        return parse_answer(
            [int(i) for i in completion_ids],
            vrt_id_start=processor.vrt_id_start,
            decode_text=lambda run: processor.tokenizer.decode(run, skip_special_tokens=True),
            eos_ids=processor.eos_ids,
            require_labels=require_labels,
        )


class TextBoxAnswers(AnswerFormat):
    """The text-coordinate baseline: boxes as JSON numbers, read against the sample's first image."""

    name = "text-boxes"
    names_patches = False

    def training_answer(self, record: Any, geometry: ImageGeometry, object_vrts: Sequence[Sequence[int]]) -> str:
        return record_text_box_answer(record, geometry)

    def read(self, completion_ids, processor, geometries, require_labels: bool) -> ParsedAnswer:
        ids = [int(i) for i in completion_ids]
        eos = set(processor.eos_ids)
        end = next((i for i, token in enumerate(ids) if token in eos), None)
        text = processor.decode(ids if end is None else ids[:end], skip_special_tokens=True)
        if not geometries:
            return ParsedAnswer(text, [], ["the sample has no image to read the boxes against"], end is None)
        boxes, problems = parse_text_boxes(text, geometries[0], truncated=end is None)
        if len(geometries) > 1:
            problems.append("the sample has several images; text boxes are read against the first")
        objects = [ParsedObject(label, [], [], box=box) for label, box in boxes]
        return ParsedAnswer(text, objects, problems, truncated=end is None)


#: Every answer format, by name.
ANSWER_FORMATS: dict[str, AnswerFormat] = {f.name: f for f in (VRTAnswers(), TextBoxAnswers())}


def get_answer_format(name: str) -> AnswerFormat:
    """The answer format called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {tuple(ANSWER_FORMATS)}, got {name!r}")
    return ANSWER_FORMATS[name]
