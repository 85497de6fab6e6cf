"""PaDTPipeline: ask images for objects, get boxes, masks and scores in original-image pixels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from padt.modeling import PaDTForConditionalGeneration
from padt.postprocess import GroundingPostProcessor
from padt.processing import PaDTProcessor
from padt.results import GroundedObject, GroundedOutput
from padt.text.answer_formats import AnswerFormat, get_answer_format
from padt.text.prompts import ovd_prompt, rec_prompt, ric_prompt
from padt.vision.context import VisionContext
from padt.vision.images import ImageInput
from padt.vision.queries import queries_from_answers


class PaDTPipeline:
    """Referring, detection and captioning with a PaDT model.

    Example:

    ```python
    >>> import padt
    >>> pipe = padt.PaDTPipeline.from_pretrained("path/to/model")          # doctest: +SKIP
    >>> out = pipe.refer("street.jpg", "the car left of the horse")        # doctest: +SKIP
    >>> out.objects[0].box, out.objects[0].score                           # doctest: +SKIP
    ```

    Every method takes one image (path, PIL image or numpy array) or a list of them, and returns one
    :class:`~padt.results.GroundedOutput` or a list. Generation keyword arguments (``max_new_tokens``,
    ``do_sample``, ``temperature``, ...) pass through to ``generate``; the default is greedy decoding.

    A model trained with ``answer_format="text-boxes"`` (the text-coordinate baseline, :mod:`padt.text.text_boxes`)
    answers with JSON boxes instead of VRTs: its objects carry the parsed box, no patches, no mask and a score
    of 1.0 (text boxes come with no confidence); malformed JSON is reported in ``problems``.
    """

    def __init__(
        self,
        model: PaDTForConditionalGeneration,
        processor: PaDTProcessor,
        *,
        batch_size: int = 8,
        max_new_tokens: int = 256,
    ) -> None:
        if processor.vrt_id_start != model.text_vocab_size:
            raise ValueError(
                f"processor.vrt_id_start ({processor.vrt_id_start}) must equal the model's text vocabulary size "
                f"({model.text_vocab_size}): they were not saved together"
            )
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.postprocess = GroundingPostProcessor()

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> PaDTPipeline:
        """Load model and processor from one local folder: ours, or one of the official PaDT release
        (see ``docs/official_checkpoints.md``)."""
        model = PaDTForConditionalGeneration.from_pretrained(path, **({"dtype": dtype} if dtype else {}))
        if device is not None:
            model = model.to(device)
        model.eval()
        processor = PaDTProcessor.from_pretrained(path)
        return cls(model, processor, **kwargs)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write model (safetensors) and processor into one folder that :meth:`from_pretrained` reads."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    @property
    def vrts_per_object(self) -> int:
        """How many VRTs the model writes per object (``PaDTConfig.num_vrt_per_object``, 5 as in the paper)."""
        return self.model.config.num_vrt_per_object

    @property
    def answer_format(self) -> AnswerFormat:
        """How the model writes its objects (:mod:`padt.text.answer_formats`), from its configuration."""
        return get_answer_format(getattr(self.model.config, "answer_format", "vrt"))

    # ---- tasks -------------------------------------------------------------------------------------------
    def refer(self, images, expressions: str | Sequence[str], **generate_kwargs: Any):
        """Referring expression comprehension / segmentation: the object(s) an expression describes."""
        images, single = _as_list(images)
        expressions = [expressions] * len(images) if isinstance(expressions, str) else list(expressions)
        if len(expressions) != len(images):
            raise ValueError(f"got {len(images)} images but {len(expressions)} expressions")
        prompts = [rec_prompt(e) for e in expressions]
        return self._unwrap(self.ask(images, prompts, **generate_kwargs), single)

    def detect(self, images, categories: Sequence[str] | Sequence[Sequence[str]], **generate_kwargs: Any):
        """Open-vocabulary detection: every instance of each category name."""
        images, single = _as_list(images)
        if isinstance(categories, str):
            raise TypeError("categories must be a list of names, not a single string")
        if not categories:
            raise ValueError("the category list is empty")
        if isinstance(categories[0], str):
            categories = [list(categories)] * len(images)
        if len(categories) != len(images):
            raise ValueError(f"got {len(images)} images but {len(categories)} category lists")
        prompts = [ovd_prompt(list(c)) for c in categories]
        return self._unwrap(self.ask(images, prompts, **generate_kwargs), single)

    def caption(self, images, **generate_kwargs: Any):
        """Referring image captioning: a description whose nouns are grounded."""
        images, single = _as_list(images)
        outputs = self.ask(images, [ric_prompt()] * len(images), require_labels=False, **generate_kwargs)
        return self._unwrap(outputs, single)

    # ---- general entry points ----------------------------------------------------------------------------
    @torch.no_grad()
    def ask(
        self, images: list, prompts: list[str], *, require_labels: bool = True, **generate_kwargs: Any
    ) -> list[GroundedOutput]:
        """Generate an answer for each (image(s), prompt) pair and ground its objects."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        generate_kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        generate_kwargs.setdefault("do_sample", False)
        results: list[GroundedOutput] = []
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc="padt", disable=len(starts) < 2):
            chunk = slice(start, start + self.batch_size)
            results.extend(self._generate_batch(images[chunk], prompts[chunk], require_labels, generate_kwargs))
        return results

    @torch.no_grad()
    def decode_answer(
        self, image: ImageInput | list[ImageInput], answer: str, prompt: str | None = None,
        *, require_labels: bool = True,
    ) -> GroundedOutput:
        """Ground a given answer (with ``<|VRT_k|>`` tokens) by teacher forcing, for debugging and evaluation.

        An answer naming a patch the image does not have raises ``ValueError``. For a text-box model the answer's
        JSON boxes are read as they are (there is nothing to decode).
        """
        batch = self.processor(
            [image], [prompt if prompt is not None else ric_prompt()], answers=[answer]
        ).to(self.model.device)
        forced = self.model.teacher_forced(batch)
        answer_positions = batch["answer_mask"][0].nonzero().flatten()
        completion = batch["input_ids"][0, answer_positions]
        states = forced.predicting_states[0, answer_positions]  # [answer tokens, D], aligned with the completion
        return self._ground(forced.vision, batch.geometries, [completion], states[None], require_labels)[0]

    # ---- internals ---------------------------------------------------------------------------------------
    def _generate_batch(self, images, prompts, require_labels, generate_kwargs) -> list[GroundedOutput]:
        batch = self.processor(images, prompts).to(self.model.device)
        vision = self.model.encode_images(
            batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], batch["input_ids"].shape[0]
        )
        with vision.recording() as recorded:
            sequences = self.model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                mm_token_type_ids=batch["mm_token_type_ids"],
                vision=vision,
                **generate_kwargs,
            )
        completions = vision.codec.to_local(sequences[:, batch["input_ids"].shape[1]:])
        return self._ground(vision, batch.geometries, list(completions), recorded.states(), require_labels)

    def _ground(
        self, vision: VisionContext, geometries, completions: list[torch.Tensor], states: torch.Tensor,
        require_labels: bool,
    ) -> list[GroundedOutput]:
        """Read every completion, decode every object of every sample in one decoder call, in original pixels.

        ``states[b, t]`` is the state that predicted token ``t`` of completion ``b``.
        """
        codec = vision.codec
        answers = [
            self.answer_format.read(ids.tolist(), self.processor, [geometries[i] for i in codec.sample_images(b)],
                                    require_labels)
            for b, ids in enumerate(completions)
        ]
        queries, decoded_owners = queries_from_answers(answers, codec, device=states.device)
        decoded_objects = []
        if decoded_owners:
            decoded = self.model.ground(vision, states, queries)
            decoded_objects = self.postprocess(decoded, codec, geometries, [obj.label for _, obj in decoded_owners])
        outputs = []
        for b, answer in enumerate(answers):
            sample_geometries = [geometries[i] for i in codec.sample_images(b)]
            sizes = [g.original_hw for g in sample_geometries]
            outputs.append(GroundedOutput(answer.text, [], list(answer.problems), sizes, sample_geometries))
        decoded_by_object = {id(obj): grounded for (_, obj), grounded in zip(decoded_owners, decoded_objects)}
        for b, answer in enumerate(answers):
            for obj in answer.objects:
                if id(obj) in decoded_by_object:
                    outputs[b].objects.append(decoded_by_object[id(obj)])
                elif obj.box is not None:  # read from the text (text-box answers): no patches, mask or confidence
                    outputs[b].objects.append(GroundedObject(obj.label, [], obj.box, 1.0, None, 0))
        return outputs

    @staticmethod
    def _unwrap(outputs: list[GroundedOutput], single: bool):
        return outputs[0] if single else outputs


def _as_list(images) -> tuple[list, bool]:
    """One image -> ([image], True); a list of images (or of per-sample image lists) -> (list, False)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("got an empty list of images")
        return list(images), False
    return [images], True
