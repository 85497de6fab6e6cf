"""PaDTPipeline: ask images for objects, get boxes, masks and scores in original-image pixels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from padt.modeling import PaDTForConditionalGeneration
from padt.official.checkpoint import is_official_layout, load_official_processor
from padt.postprocess import boxes_to_pixels, mask_to_pixels
from padt.processing import PaDTProcessor
from padt.results import GroundedObject, GroundedOutput
from padt.text.parser import ParsedAnswer, parse_answer
from padt.text.prompts import ovd_prompt, rec_prompt, ric_prompt
from padt.text.text_boxes import parse_text_boxes
from padt.vision.context import VisionContext
from padt.vision.images import ImageInput


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
        processor = load_official_processor(path) if is_official_layout(path) else PaDTProcessor.from_pretrained(path)
        return cls(model, processor, **kwargs)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write model (safetensors) and processor into one folder that :meth:`from_pretrained` reads."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    @property
    def answer_format(self) -> str:
        """``"vrt"`` (PaDT) or ``"text-boxes"`` (the text-coordinate baseline), from the model's configuration."""
        return getattr(self.model.config, "answer_format", "vrt")

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
        if self.answer_format == "text-boxes":
            images = list(image) if isinstance(image, (list, tuple)) else [image]
            geometries = [self.processor.geometry(i) for i in images]
            return _text_box_output(answer, geometries, truncated=False)
        batch = self.processor(
            [image], [prompt if prompt is not None else ric_prompt()], answers=[answer]
        ).to(self.model.device)
        vision = self._encode(batch)
        input_ids = vision.codec.to_global(batch["input_ids"])
        hidden = self.model.answer_states(input_ids, vision, batch["attention_mask"], batch["mm_token_type_ids"])
        answer_positions = batch["answer_mask"][0].nonzero().flatten()
        completion = batch["input_ids"][0, answer_positions]
        # The state that predicted the answer token at position t is the state at t - 1.
        states = hidden[0, answer_positions - 1]
        parsed = self._parse(completion, require_labels)
        return self._ground(vision, batch.geometries, [parsed], states[None])[0]

    # ---- internals ---------------------------------------------------------------------------------------
    def _encode(self, batch) -> VisionContext:
        return self.model.encode_images(
            batch["pixel_values"], batch["image_grid_thw"], batch["image_sample"], batch["input_ids"].shape[0]
        )

    def _generate_batch(self, images, prompts, require_labels, generate_kwargs) -> list[GroundedOutput]:
        batch = self.processor(images, prompts).to(self.model.device)
        vision = self._encode(batch)
        vision.start_recording()
        try:
            sequences = self.model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                mm_token_type_ids=batch["mm_token_type_ids"],
                vision=vision,
                **generate_kwargs,
            )
        finally:
            states = vision.stop_recording()
        completions = vision.codec.to_local(sequences[:, batch["input_ids"].shape[1]:])
        if self.answer_format == "text-boxes":
            return [self._parse_text_boxes(row, vision.codec, batch.geometries, b) for b, row in enumerate(completions)]
        parsed = [self._parse(row, require_labels) for row in completions]
        return self._ground(vision, batch.geometries, parsed, states)

    def _parse(self, completion_ids: torch.Tensor, require_labels: bool) -> ParsedAnswer:
        return parse_answer(
            completion_ids.tolist(),
            vrt_id_start=self.processor.vrt_id_start,
            decode_text=self.processor.tokenizer.decode,
            eos_ids=self.processor.eos_ids,
            require_labels=require_labels,
        )

    def _parse_text_boxes(self, completion_ids: torch.Tensor, codec, geometries, sample: int) -> GroundedOutput:
        ids = completion_ids.tolist()
        eos = set(self.processor.eos_ids)
        end = next((i for i, token in enumerate(ids) if token in eos), None)
        text = self.processor.decode(ids if end is None else ids[:end], skip_special_tokens=True)
        mine = [geometries[i] for i in range(codec.num_images) if codec.image_sample[i] == sample]
        return _text_box_output(text, mine, truncated=end is None)

    def _ground(self, vision: VisionContext, geometries, parsed: list[ParsedAnswer], states: torch.Tensor):
        """Decode every object of every sample in one decoder call; map results to original pixels."""
        codec = vision.codec
        picked, counts, object_image, owners, vrt_index = [], [], [], [], []
        spans = codec.sample_spans()
        for b, answer in enumerate(parsed):
            for obj in answer.objects:
                positions = torch.tensor(obj.positions, device=states.device)
                picked.append(states[b, positions])
                vrt_index += [spans[b][0] + p for p in obj.patches]
                counts.append(len(obj.positions))
                image, _ = codec.local_to_image_patch(b, obj.patches[0])
                object_image.append(image)
                owners.append((b, obj))
        outputs = [
            GroundedOutput(a.text, [], list(a.problems), _sizes(codec, geometries, b)) for b, a in enumerate(parsed)
        ]
        if not picked:
            return outputs
        device = states.device
        decoded = self.model.decode_objects(
            vision,
            torch.cat(picked),
            torch.tensor(counts, device=device),
            torch.tensor(object_image, device=device),
            torch.tensor(vrt_index, device=device),
        )
        scores = decoded.score_logits.float().sigmoid().tolist()
        first_image_of_sample = _first_images(codec)
        for k, (b, obj) in enumerate(owners):
            image = object_image[k]
            image_hw = geometries[image].original_hw
            box = boxes_to_pixels(decoded.boxes[k : k + 1], image_hw)[0].tolist()
            mask = None
            if decoded.mask_logits is not None:
                valid = tuple(int(v) for v in decoded.mask_hw[k])
                mask = mask_to_pixels(decoded.mask_logits[k], valid, image_hw)
            patches = [codec.local_to_image_patch(b, p)[1] for p in obj.patches]
            outputs[b].objects.append(
                GroundedObject(obj.label, patches, tuple(box), scores[k], mask, image - first_image_of_sample[b])
            )
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


def _text_box_output(text: str, geometries: list, *, truncated: bool) -> GroundedOutput:
    """A text-box answer as a GroundedOutput: boxes read against the sample's first image, score 1.0, no mask."""
    sizes = [g.original_hw for g in geometries]
    if not geometries:
        return GroundedOutput(text, [], ["the sample has no image to read the boxes against"], sizes)
    boxes, problems = parse_text_boxes(text, geometries[0], truncated=truncated)
    if len(geometries) > 1:
        problems.append("the sample has several images; text boxes are read against the first")
    objects = [GroundedObject(label, [], box, 1.0, None, 0) for label, box in boxes]
    return GroundedOutput(text, objects, problems, sizes)


def _first_images(codec) -> list[int]:
    first = [0] * codec.num_samples
    for image in reversed(range(codec.num_images)):
        first[codec.image_sample[image]] = image
    return first


def _sizes(codec, geometries, sample: int) -> list[tuple[int, int]]:
    return [geometries[i].original_hw for i in range(codec.num_images) if codec.image_sample[i] == sample]
