"""PaDTPipeline: ask images for objects, get boxes, masks and scores in original-image pixels."""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from padt.model_folder import check_model_folder
from padt.modeling import PaDTForConditionalGeneration
from padt.postprocess import GroundingPostProcessor
from padt.processing import PaDTProcessor
from padt.results import GroundedObject, GroundedOutput
from padt.streaming import GroundingStreamer, StreamCallback
from padt.text.answer_formats import AnswerFormat, get_answer_format
from padt.text.prompts import ovd_prompt, rec_prompt, ric_prompt
from padt.vision.context import VisionContext
from padt.vision.encoded import EncodedImage, question_rows, stacked_cache
from padt.vision.images import ImageInput
from padt.vision.queries import queries_from_answers


class TruncatedAnswerWarning(UserWarning):
    """Answers reached ``max_new_tokens`` before their end token: their last object may be missing."""


#: The answer length when the checkpoint's generation config sets none: what the official code allows.
DEFAULT_MAX_NEW_TOKENS = 1024
_PIPELINE_SETTINGS = {"batch_size", "max_new_tokens"}
_FROM_FOLDER = object()  # from_pretrained's "keep the processor's saved longest_side"
_PREFIX_PROBE = "?"  # any question: encode keeps only the prompt's tokens before it


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
    ``do_sample``, ``temperature``, ...) pass through to ``generate``; the default is greedy decoding with the
    answer length of the checkpoint's ``generation_config.json`` (``max_new_tokens``), else 1024 tokens as the
    official code allows. An answer cut off at that length is flagged (``GroundedOutput.truncated``, a
    ``problems`` entry) and warned about (:class:`TruncatedAnswerWarning`).

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
        max_new_tokens: int | None = None,
    ) -> None:
        if processor.vrt_id_start != model.text_vocab_size:
            raise ValueError(
                f"processor.vrt_id_start ({processor.vrt_id_start}) must equal the model's text vocabulary size "
                f"({model.text_vocab_size}): they were not saved together"
            )
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens if max_new_tokens is not None else default_answer_length(model)
        self.postprocess = GroundingPostProcessor()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        longest_side: int | None | object = _FROM_FOLDER,
        model_kwargs: dict[str, Any] | None = None,
        **pipeline_kwargs: Any,
    ) -> PaDTPipeline:
        """Load model and processor from one local folder: ours, or one of the official PaDT release
        (see ``docs/official_checkpoints.md``).

        Args:
            path: the folder; it is checked first (:func:`padt.model_folder.check_model_folder`), so a folder that
                is not a complete PaDT model gets one error naming the file and the problem.
            device: where to put the model (not with ``device_map`` in ``model_kwargs``).
            dtype: the model's dtype (default: the checkpoint's).
            longest_side: override the processor's saved ``longest_side`` (644 for official folders): an int, or
                ``None`` for native size.
            model_kwargs: passed unchanged to the model's ``from_pretrained`` (``device_map``,
                ``attn_implementation``, ``quantization_config``, ...).
            pipeline_kwargs: ``batch_size``, ``max_new_tokens``.
        """
        unknown = sorted(set(pipeline_kwargs) - _PIPELINE_SETTINGS)
        if unknown:
            raise TypeError(
                f"PaDTPipeline.from_pretrained got unknown keyword arguments {unknown}: pipeline settings are "
                f"{sorted(_PIPELINE_SETTINGS)}; arguments for the model's from_pretrained go in model_kwargs={{...}}"
            )
        model_kwargs = dict(model_kwargs or {})
        if device is not None and "device_map" in model_kwargs:
            raise ValueError("pass either device= or model_kwargs={'device_map': ...}, not both")
        if dtype is not None:
            model_kwargs.setdefault("dtype", dtype)
        check_model_folder(path)
        model = PaDTForConditionalGeneration.from_pretrained(path, **model_kwargs)
        if device is not None:
            model = model.to(device)
        processor = PaDTProcessor.from_pretrained(path)
        if longest_side is not _FROM_FOLDER:
            processor.longest_side = _checked_longest_side(longest_side)
        return cls(model.eval(), processor, **pipeline_kwargs)

    def to(self, device: str | torch.device) -> PaDTPipeline:
        """Move the model to ``device``; returns the pipeline."""
        self.model = self.model.to(device)
        return self

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
        """Referring expression comprehension / segmentation: the object(s) an expression describes.

        One expression for every image (a string), one per image (a list as long as the images), or several
        about one image (one image and a list: one result per expression).
        """
        images, single = _as_list(images)
        if isinstance(expressions, str):
            expressions = [expressions] * len(images)
        else:
            expressions = list(expressions)
            images, single = self._questions_about(images, single, len(expressions), "expressions")
        prompts = [rec_prompt(e) for e in expressions]
        return self._unwrap(self.ask(images, prompts, **generate_kwargs), single)

    def detect(self, images, categories: Sequence[str] | Sequence[Sequence[str]], **generate_kwargs: Any):
        """Open-vocabulary detection: every instance of each category name.

        One category list for every image, one list per image, or several lists about one image (one result each).
        """
        images, single = _as_list(images)
        if isinstance(categories, str):
            raise TypeError("categories must be a list of names, not a single string")
        categories = list(categories)
        if not categories:
            raise ValueError("the category list is empty")
        if isinstance(categories[0], str):
            categories = [list(categories)] * len(images)
        else:
            images, single = self._questions_about(images, single, len(categories), "category lists")
        prompts = [ovd_prompt(list(c)) for c in categories]
        return self._unwrap(self.ask(images, prompts, **generate_kwargs), single)

    def caption(self, images, **generate_kwargs: Any):
        """Referring image captioning: a description whose nouns are grounded."""
        images, single = _as_list(images)
        outputs = self.ask(images, [ric_prompt()] * len(images), require_labels=False, **generate_kwargs)
        return self._unwrap(outputs, single)

    def _questions_about(self, images: list, single: bool, count: int, what: str) -> tuple[list, bool]:
        """One image with several questions: encoded once and repeated per question; else checked one to one."""
        if single:
            encoded = images[0] if isinstance(images[0], EncodedImage) else self.encode(images[0])
            return [encoded] * count, False
        if count != len(images):
            raise ValueError(f"got {len(images)} images but {count} {what}")
        return images, single

    def map(
        self,
        images: Iterable[Any],
        task: str = "caption",
        *,
        expression: str | None = None,
        categories: Sequence[str] | None = None,
        progress: bool = True,
        **generate_kwargs: Any,
    ) -> Iterator[GroundedOutput]:
        """Run one task over any iterable of images (a generator too), yielding one result per image, lazily and
        in input order, ``batch_size`` images at a time.

        Args:
            images: the images (anything the task methods take per image).
            task: ``"refer"`` (needs ``expression``), ``"detect"`` (needs ``categories``) or ``"caption"``.
            progress: a progress bar (with a total when ``images`` has a length).
        """
        ask = self._task(task, expression, categories)
        total = len(images) if hasattr(images, "__len__") else None
        bar = tqdm(total=total, desc=f"padt {task}", unit="image", disable=not progress)
        try:
            for chunk in _chunks(iter(images), self.batch_size):
                outputs = ask(chunk, **generate_kwargs)
                bar.update(len(chunk))
                yield from outputs
        finally:
            bar.close()

    def _task(self, task: str, expression: str | None, categories: Sequence[str] | None):
        """The list-taking task method ``map`` calls per chunk, with its text bound."""
        if task == "refer":
            if not isinstance(expression, str):
                raise ValueError("map(task='refer') needs expression='...' (the same expression for every image)")
            return lambda chunk, **kw: self.refer(chunk, expression, **kw)
        if task == "detect":
            if not categories or isinstance(categories, str):
                raise ValueError("map(task='detect') needs categories=[...] (the same names for every image)")
            return lambda chunk, **kw: self.detect(chunk, list(categories), **kw)
        if task == "caption":
            return self.caption
        raise ValueError(f"task must be 'refer', 'detect' or 'caption', got {task!r}")

    # ---- general entry points ----------------------------------------------------------------------------
    @torch.no_grad()
    def ask(
        self, images: list, prompts: list[str], *, require_labels: bool = True, **generate_kwargs: Any
    ) -> list[GroundedOutput]:
        """Generate an answer for each (image(s), prompt) pair and ground its objects.

        ``streamer=callback`` (here and in every task method) streams one question's answer: ``callback`` gets
        each new piece of text and each object, decoded, as soon as its VRT run ends (:mod:`padt.streaming`).
        """
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        streamer = generate_kwargs.pop("streamer", None)
        if streamer is not None and len(images) != 1:
            raise ValueError(f"a streamer follows one question at a time; got {len(images)} (image, prompt) pairs")
        if streamer is not None:
            generate_kwargs["streamer_callback"] = streamer
        generate_kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        generate_kwargs.setdefault("do_sample", False)
        results: list[GroundedOutput] = []
        chunks = _batches(images, prompts, self.batch_size)
        for chunk_images, chunk_prompts in tqdm(chunks, desc="padt", disable=len(chunks) < 2):
            if isinstance(chunk_images[0], EncodedImage):
                generate = self._generate_with_prefix
            else:
                generate = self._generate_batch
            results.extend(generate(chunk_images, chunk_prompts, require_labels, generate_kwargs))
        cut = sum(output.truncated for output in results)
        if cut:
            warnings.warn(
                f"{cut} of {len(results)} answers reached max_new_tokens={generate_kwargs['max_new_tokens']} before "
                "their end token; their last object may be missing (pass a larger max_new_tokens)",
                TruncatedAnswerWarning,
                stacklevel=3,  # past torch.no_grad's wrapper: the line that asked
            )
        return results

    @torch.no_grad()
    def decode_answer(
        self, image: ImageInput | list[ImageInput], answer: str, prompt: str | None = None,
        *, require_labels: bool = True, streamer: StreamCallback | None = None,
    ) -> GroundedOutput:
        """Ground a given answer (with ``<|VRT_k|>`` tokens) by teacher forcing, for debugging and evaluation.

        An answer naming a patch the image does not have raises ``ValueError``. For a text-box model the answer's
        JSON boxes are read as they are (there is nothing to decode).
        """
        encoded = image if isinstance(image, EncodedImage) else None
        batch = self.processor(
            [encoded.images if encoded else image], [prompt if prompt is not None else ric_prompt()], answers=[answer]
        ).to(self.model.device)
        # An encoded image brings its vision context: the vision tower does not run again.
        forced = self.model.teacher_forced(batch, vision=encoded.vision if encoded else None)
        answer_positions = batch["answer_mask"][0].nonzero().flatten()
        completion = batch["input_ids"][0, answer_positions]
        # [answer tokens, (L + 1,) D], aligned with the completion
        states = forced.predicting(answer_positions, for_decoder=True)[0]
        output = self._ground(forced.vision, batch.geometries, [completion], states[None], require_labels)[0]
        if streamer is not None:  # the whole answer is known at once: its text, then its objects
            for event in [output.text, *output.objects]:
                streamer(event)
        return output

    @torch.no_grad()
    def encode(self, images) -> EncodedImage | list[EncodedImage]:
        """Encode image(s) once to ask many questions: every task method takes the result in place of an image.

        One image (or one sample's list of images... pass ``[[a, b]]`` for a two-image sample) gives one
        :class:`~padt.vision.encoded.EncodedImage`, a list gives a list. It runs the vision tower and the
        language model over the prompt prefix the questions share (up to the end of the image tokens); results of
        later questions equal those of separate calls.
        """
        samples, single = _as_list(images)
        encoded = [self._encode_sample(sample) for sample in samples]
        return encoded[0] if single else encoded

    def _encode_sample(self, sample) -> EncodedImage:
        batch = self.processor([sample], [_PREFIX_PROBE]).to(self.model.device)
        vision = self.model.encode_images(batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], 1)
        ids = batch["input_ids"]
        ends = (ids[0] == self.processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")).nonzero().flatten()
        if not len(ends):
            raise ValueError("encode needs at least one image")
        length = int(ends[-1]) + 1
        prefix = ids[:, :length]
        mm_types = batch["mm_token_type_ids"][:, :length]
        out = self.model(input_ids=vision.codec.to_global(prefix), mm_token_type_ids=mm_types, vision=vision,
                         attention_mask=torch.ones_like(prefix), use_cache=True, logits_to_keep=1)
        images = [self.processor.load(i) for i in (sample if isinstance(sample, (list, tuple)) else [sample])]
        return EncodedImage(images, batch.geometries, vision, prefix, mm_types, out.past_key_values)

    def _generate_with_prefix(self, encoded, prompts, require_labels, generate_kwargs):
        """Questions about encoded images (one or several), in one generate call that prefills only the questions."""
        questions = [self._question_ids(e, prompt) for e, prompt in zip(encoded, prompts, strict=True)]
        pad_id = self.processor.tokenizer.pad_token_id or self.processor.eos_token_id
        input_ids, attention, mm_types = question_rows(encoded, questions, pad_id)
        vision = VisionContext.stacked([e.vision for e in encoded])
        geometries = [g for e in encoded for g in e.geometries]
        kwargs = self._with_streamer(generate_kwargs, vision, geometries, require_labels)
        # The cache covers the prefix; the 3-D positions of the whole rows are computed again for this batch.
        self.model.model.rope_deltas = None
        with vision.recording() as recorded:
            sequences = self.model.generate(
                input_ids=input_ids, attention_mask=attention, mm_token_type_ids=mm_types, vision=vision,
                past_key_values=stacked_cache(encoded), **kwargs,
            )
        completions = vision.codec.to_local(sequences[:, input_ids.shape[1]:])
        return self._ground(vision, geometries, list(completions), recorded.states(), require_labels)

    def _question_ids(self, encoded: EncodedImage, prompt: str) -> list[int]:
        """The prompt's tokens after the shared prefix (its text, the end of the user turn, the answer's start)."""
        ids = self.processor.encode_prompt(prompt, image_tokens=encoded.image_tokens)
        if ids[: encoded.prefix_length] != encoded.prefix_ids[0].tolist():
            raise RuntimeError("the prompt's prefix differs from the encoded image's: the chat template changed")
        return ids[encoded.prefix_length:]

    def _with_streamer(self, generate_kwargs, vision, geometries, require_labels) -> dict[str, Any]:
        kwargs = dict(generate_kwargs)
        callback = kwargs.pop("streamer_callback", None)
        if callback is not None:
            kwargs["streamer"] = GroundingStreamer(self, vision, geometries, require_labels, callback)
        return kwargs

    # ---- internals ---------------------------------------------------------------------------------------
    def _generate_batch(self, images, prompts, require_labels, generate_kwargs) -> list[GroundedOutput]:
        batch = self.processor(images, prompts).to(self.model.device)
        vision = self.model.encode_images(
            batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], batch["input_ids"].shape[0]
        )
        generate_kwargs = self._with_streamer(generate_kwargs, vision, batch.geometries, require_labels)
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
            outputs.append(
                GroundedOutput(answer.text, [], list(answer.problems), sizes, sample_geometries, answer.truncated)
            )
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


def default_answer_length(model: PaDTForConditionalGeneration) -> int:
    """``max_new_tokens`` of the model's generation config (its ``generation_config.json``), else 1024."""
    configured = getattr(model.generation_config, "max_new_tokens", None)
    return int(configured) if configured else DEFAULT_MAX_NEW_TOKENS


def _checked_longest_side(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"longest_side must be a positive int or None, got {value!r}")
    return value


def _as_list(images) -> tuple[list, bool]:
    """One image -> ([image], True); any iterable of images (or of per-sample image lists), a generator too ->
    (list, False)."""
    if _is_one_image(images):
        return [images], True
    try:
        images = list(images)
    except TypeError as error:
        raise TypeError(f"expected an image or an iterable of images, got {type(images).__name__}") from error
    if not images:
        raise ValueError("got no images (an empty list or an exhausted iterator)")
    return images, False


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to ``size`` consecutive items of ``items``, drawn only as they are needed."""
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _is_one_image(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike, Image.Image, np.ndarray, EncodedImage))


def _batches(images: list, prompts: list[str], size: int) -> list[tuple[list, list[str]]]:
    """Consecutive batches of at most ``size`` (image, prompt) pairs; questions about encoded images are kept
    apart from other inputs, so that each batch either continues cached prefixes or has none."""
    batches: list[tuple[list, list[str]]] = []
    for _, group in itertools.groupby(zip(images, prompts), key=lambda pair: isinstance(pair[0], EncodedImage)):
        pairs = list(group)
        for start in range(0, len(pairs), size):
            chunk = pairs[start : start + size]
            batches.append(([image for image, _ in chunk], [prompt for _, prompt in chunk]))
    return batches
