"""PaDTProcessor: images + prompts (+ answers with visual reference tokens) -> model inputs, and ids -> text.

An image-only Qwen2.5-VL processor (the Qwen video processor needs torchvision, which this project never installs)
with the VRT id convention of :mod:`padt.vision.codec`: text ids are ``< V`` (``vrt_id_start``, the model's number of
text-embedding rows, not ``len(tokenizer)``) and the **local** VRT id of patch ``k`` of a sample is ``V + k``.
VRTs are never added to the tokenizer: :meth:`PaDTProcessor.encode_text` maps ``<|VRT_k|>`` to ``V + k`` and
:meth:`PaDTProcessor.decode` maps it back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2_5_VLProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from padt.backbones import QWEN2_5_VL, QWEN3_VL, Backbone
from padt.official.checkpoint import is_official_layout, load_official_processor
from padt.text.answer_formats import get_answer_format
from padt.text.parser import ParsedAnswer
from padt.text.prompts import VRT_PATTERN, vrt_token
from padt.text.qwen_tokenizer import QWEN2_5_VL_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE
from padt.vision.geometry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, GridSpec, ImageGeometry
from padt.vision.images import ImageInput, load_image

#: The chat template each backbone's processor uses.
CHAT_TEMPLATES = {QWEN2_5_VL.name: QWEN2_5_VL_CHAT_TEMPLATE, QWEN3_VL.name: QWEN3_VL_CHAT_TEMPLATE}


class PaDTBatch(BatchFeature):
    """A :class:`~transformers.BatchFeature` that also carries ``geometries`` outside the tensor dict.

    ``geometries`` is a list with one :class:`padt.vision.geometry.ImageGeometry` per image, in the order of
    ``image_grid_thw`` (sample order, then image order inside a sample). It is an attribute rather than a key so
    that ``batch.to(device)`` and tensor conversion never touch it; ``.to()`` returns the same object, so it stays.
    """

    def __init__(self, data: dict[str, Any] | None = None, geometries: list[ImageGeometry] | None = None):
        super().__init__(data)
        self.geometries = list(geometries or [])

    def __getstate__(self) -> dict[str, Any]:  # BatchFeature pickles only `data`; keep the geometries too
        return {"data": self.data, "geometries": self.geometries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.data = state.get("data", {})
        self.geometries = state.get("geometries", [])


class PaDTProcessor(Qwen2_5_VLProcessor):
    """Qwen-VL processor for PaDT (Qwen2.5-VL or Qwen3-VL: patch size, normalisation and chat template say which):
    images only, VRT-aware text, answers for teacher forcing.

    Build one with :meth:`from_tokenizer`, or load a saved one with ``PaDTProcessor.from_pretrained(folder)``
    (``vrt_id_start``, ``longest_side`` and the pixel budget are saved in ``processor_config.json``).

    Args:
        image_processor: a ``Qwen2VLImageProcessorPil`` (holds ``min_pixels``/``max_pixels``, ``patch_size``,
            ``merge_size``).
        tokenizer: a Qwen2 tokenizer (see :mod:`padt.text.qwen_tokenizer`).
        chat_template: defaults to the Qwen2.5-VL chat template.
        vrt_id_start: V, the first VRT id = the model's number of text-embedding rows. Must be ``>= len(tokenizer)``.
        longest_side: when set, every image is first resized (LANCZOS, up or down) so that its longest side has this
            many pixels, as the official PaDT demo does (644 for the released checkpoints, whose decoders saw
            COCO-sized images); ``None`` keeps the native size within the pixel budget. Results still come back in
            original-image pixels (:mod:`padt.vision.geometry`).
    """

    def __init__(
        self,
        image_processor: Qwen2VLImageProcessorPil | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        vrt_id_start: int | None = None,  # positional-or-keyword: from_pretrained passes only those back
        longest_side: int | None = None,
    ) -> None:
        if tokenizer is None:
            raise ValueError("PaDTProcessor needs a tokenizer (see padt.text.qwen_tokenizer)")
        # Qwen2_5_VLProcessor.__init__ insists on a video processor; set what it would set, then skip it.
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        if vrt_id_start is not None and int(vrt_id_start) < len(tokenizer):
            raise ValueError(
                f"vrt_id_start ({vrt_id_start}) must be >= len(tokenizer) ({len(tokenizer)}): VRT ids would collide "
                "with text ids"
            )
        self.vrt_id_start = None if vrt_id_start is None else int(vrt_id_start)
        self.longest_side = None if longest_side is None else int(longest_side)
        GridSpec(longest_side=self.longest_side)  # refuses a non-positive side, naming it
        ProcessorMixin.__init__(
            self, image_processor, tokenizer, chat_template=chat_template or QWEN2_5_VL_CHAT_TEMPLATE
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """transformers' ``from_pretrained``; a local folder of the official PaDT release is read by
        :func:`padt.official.checkpoint.load_official_processor` (its tokenizer without VRT tokens, its pixel
        budget, ``vrt_id_start`` from its config)."""
        if is_official_layout(pretrained_model_name_or_path):
            return load_official_processor(pretrained_model_name_or_path, cls)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        *,
        vrt_id_start: int | None,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        longest_side: int | None = None,
        backbone: Backbone = QWEN2_5_VL,
        chat_template: str | None = None,
    ) -> PaDTProcessor:
        """A processor over ``tokenizer`` for ``backbone`` (its patch and merge sizes, normalisation and chat
        template; ``chat_template`` replaces the template, e.g. with a backbone folder's own), with the given pixel
        budget (defaults: the official PaDT budget) and ``longest_side`` (default: native size)."""
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=min_pixels, max_pixels=max_pixels, patch_size=backbone.patch_size,
            merge_size=backbone.merge_size, image_mean=list(backbone.image_mean), image_std=list(backbone.image_std),
        )
        template = chat_template or CHAT_TEMPLATES[backbone.name]
        return cls(image_processor, tokenizer, chat_template=template, vrt_id_start=vrt_id_start,
                   longest_side=longest_side)

    # ---- settings --------------------------------------------------------------------------------------------
    @property
    def min_pixels(self) -> int:
        return int(self.image_processor.size["shortest_edge"])

    @property
    def max_pixels(self) -> int:
        return int(self.image_processor.size["longest_edge"])

    @property
    def patch_size(self) -> int:
        return int(self.image_processor.patch_size)

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    @property
    def eos_token_id(self) -> int:
        """``<|im_end|>``, which ends every assistant turn (the answer's last supervised token)."""
        return int(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Ids that end a generated answer: ``<|im_end|>`` and ``<|endoftext|>`` (Qwen2.5-VL's generation config)."""
        return tuple(sorted({self.eos_token_id, int(self.tokenizer.convert_tokens_to_ids("<|endoftext|>"))}))

    def _vrt_start(self) -> int:
        if self.vrt_id_start is None:
            raise ValueError("vrt_id_start is not set: set processor.vrt_id_start = model.config vocab size (V)")
        return self.vrt_id_start

    # ---- images ----------------------------------------------------------------------------------------------
    def load(self, image: ImageInput) -> Image.Image:
        """:func:`padt.vision.images.load_image`: RGB PIL image, EXIF orientation applied."""
        return load_image(image)

    @property
    def grid_spec(self) -> GridSpec:
        """The settings that decide every image's grid: patch and merge sizes, pixel budget."""
        return GridSpec(self.patch_size, self.merge_size, self.min_pixels, self.max_pixels, self.longest_side)

    def geometry(self, image: Image.Image | ImageInput) -> ImageGeometry:
        """Where ``image`` (a loaded PIL image, or anything :meth:`load` takes) lands on this processor's grids."""
        pil = image if isinstance(image, Image.Image) else self.load(image)
        return self.grid_spec.geometry(pil.height, pil.width)

    def _load_for_model(self, image: ImageInput) -> tuple[Image.Image, ImageGeometry]:
        pil = self.load(image)
        geometry = self.geometry(pil)  # also rejects aspect ratios beyond Qwen's 200:1, naming them
        size = self.grid_spec.input_size(pil.height, pil.width)
        if size != (pil.height, pil.width):
            # Resize before the image processor so its smart_resize starts from the size geometry() assumed.
            pil = pil.resize((size[1], size[0]), Image.Resampling.LANCZOS)
        return pil, geometry

    # ---- text ------------------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Token ids of an answer ``text``; each ``<|VRT_k|>`` becomes the local id ``vrt_id_start + k``.

        The text between VRTs is encoded as plain text (:meth:`encode_plain`): answers quote user text (expressions,
        category names from datasets or from ``decode_answer``'s caller), and a ``<|im_end|>`` written there must
        neither end the answer the model is taught nor become any other control token.
        """
        ids: list[int] = []
        cursor = 0
        for match in VRT_PATTERN.finditer(text):
            ids += self.encode_plain(text[cursor : match.start()])
            ids.append(self._vrt_start() + int(match.group(1)))
            cursor = match.end()
        return ids + self.encode_plain(text[cursor:])

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of ``text`` as ordinary text: no added token of the tokenizer (``<|im_end|>``,
        ``<|image_pad|>``, ``<tool_call>`` ...) and no VRT comes out, whatever ``text`` holds; the ids decode back
        to ``text``.

        For a fast tokenizer the byte-level BPE runs without the added-token matcher (normaliser, pre-tokeniser,
        model): this is what ``split_special_tokens=True`` does for the special tokens, but that option still matches
        the non-special added tokens. Raises ``ValueError`` if an added token's id still comes out.
        """
        if not text:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or backend.pre_tokenizer is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        else:
            normalized = text if backend.normalizer is None else backend.normalizer.normalize_str(text)
            pieces = backend.pre_tokenizer.pre_tokenize_str(normalized)
            ids = [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]
        forged = sorted(set(ids) & set(self.tokenizer.added_tokens_decoder))
        if forged:
            names = self.tokenizer.convert_ids_to_tokens(forged)
            raise ValueError(f"cannot encode {text!r} as plain text: the tokenizer still gives added tokens {names}")
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True, **kwargs: Any) -> str:
        """Text of local ids ``ids`` (1-D); ids ``>= vrt_id_start`` are written ``<|VRT_k|>``.

        Contiguous runs of text ids are decoded together so multi-byte characters split over tokens survive.
        """
        values = ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        start = self._vrt_start()
        pieces: list[str] = []
        run: list[int] = []
        for token in values:
            if token >= start:
                if run:
                    pieces.append(self.tokenizer.decode(run, skip_special_tokens=skip_special_tokens, **kwargs))
                    run = []
                pieces.append(vrt_token(token - start))
            else:
                run.append(token)
        if run:
            pieces.append(self.tokenizer.decode(run, skip_special_tokens=skip_special_tokens, **kwargs))
        return "".join(pieces)

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        """:meth:`decode` of each row of ``sequences`` ([B, T] tensor or list of id lists)."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens, **kwargs) for row in sequences]

    def parse(self, completion_ids: Sequence[int] | torch.Tensor, *, require_labels: bool = True) -> ParsedAnswer:
        """:func:`padt.text.parser.parse_answer` with this tokenizer, ``vrt_id_start`` and the Qwen end tokens."""
        self._vrt_start()  # a clear error when it is not set
        values = completion_ids.tolist() if isinstance(completion_ids, torch.Tensor) else completion_ids
        return get_answer_format("vrt").read(values, self, [], require_labels)

    def build_prompt(self, prompt: str, num_images: int = 1, add_generation_prompt: bool = True) -> str:
        """Chat-template text of one user turn: ``num_images`` image placeholders, then ``prompt``.

        This is text for people and for the plain Hugging Face call (``processor(text=...)``), which would turn a
        control token written in ``prompt`` into a real one; :meth:`prepare` tokenises with :meth:`encode_prompt`.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"the prompt is empty or not a string: {prompt!r}")
        before, after = self._template_around_prompt(num_images, add_generation_prompt)
        return before + prompt + after

    def encode_prompt(
        self, prompt: str, image_tokens: Sequence[int] = (), add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of :meth:`build_prompt` for ``len(image_tokens)`` images, image ``i``'s ``<|image_pad|>``
        repeated ``image_tokens[i]`` times (its merged-grid cells), as the Hugging Face processor expands it.

        The chat template's own text is tokenised as usual, so its control tokens (``<|im_start|>``,
        ``<|im_end|>``, ``<|vision_start|>`` ...) and image placeholders are real; ``prompt`` is user text and is
        tokenised on its own with :meth:`encode_plain`, so whatever it holds (``<|im_end|>``, ``<|image_pad|>``,
        ``<|VRT_3|>`` ...) stays text: it can neither end the user turn nor add an image or VRT token.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"the prompt is empty or not a string: {prompt!r}")
        counts = [int(n) for n in image_tokens]
        if any(n <= 0 for n in counts):
            raise ValueError(f"image_tokens must be positive counts of image tokens, one per image; got {counts}")
        before, after = self._template_around_prompt(len(counts), add_generation_prompt)
        remaining = iter(counts)
        ids = self._template_ids(before, remaining) + self.encode_plain(prompt) + self._template_ids(after, remaining)
        if next(remaining, None) is not None:
            raise ValueError(f"the chat template wrote fewer {self.image_token} placeholders than {len(counts)} images")
        return ids

    #: Stands in for the prompt when the chat template is rendered, so that the template's text can be told apart
    #: from the user's. Private-use characters: no tokenizer has them and no template filter changes them.
    _PROMPT_SLOT = "\U000f8000padt-prompt\U000f8001"

    def _template_around_prompt(self, num_images: int, add_generation_prompt: bool) -> tuple[str, str]:
        """The chat-template text before and after the prompt of one user turn with ``num_images`` images."""
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": self._PROMPT_SLOT}]
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        parts = rendered.split(self._PROMPT_SLOT)
        if len(parts) != 2:
            raise ValueError(
                f"the chat template must write the user's text exactly once, unchanged; it wrote it {len(parts) - 1} "
                "times (processor.chat_template)"
            )
        return parts[0], parts[1]

    def _template_ids(self, template_text: str, image_tokens) -> list[int]:
        """Ids of chat-template text; each ``<|image_pad|>`` is repeated the next count of iterator ``image_tokens``."""
        chunks = template_text.split(self.image_token)
        ids = self.tokenizer.encode(chunks[0], add_special_tokens=False) if chunks[0] else []
        for chunk in chunks[1:]:
            count = next(image_tokens, None)
            if count is None:
                raise ValueError(f"the chat template wrote more {self.image_token} placeholders than there are images")
            ids += [self.image_token_id] * count
            ids += self.tokenizer.encode(chunk, add_special_tokens=False) if chunk else []
        return ids

    def _prompt_rows(self, prompt_list, geometries, sample_of_image, add_generation_prompt: bool) -> list[list[int]]:
        """:meth:`encode_prompt` of every sample; each image has one ``<|image_pad|>`` per merged-grid cell."""
        return [
            self.encode_prompt(
                prompt, [g.num_vrts for g, s in zip(geometries, sample_of_image) if s == b], add_generation_prompt
            )
            for b, prompt in enumerate(prompt_list)
        ]

    # ---- batches ---------------------------------------------------------------------------------------------
    def __call__(self, images=None, prompts=None, answers=None, *, text=None, **kwargs: Any):
        """:meth:`prepare`; with ``text=`` it is the plain Hugging Face processor call (chat templates, pipelines)."""
        if text is not None:
            return super().__call__(images=images, text=text, **kwargs)
        return self.prepare(images, prompts, answers, **kwargs)

    def prepare(
        self,
        images: ImageInput | Sequence[ImageInput | Sequence[ImageInput] | None],
        prompts: str | Sequence[str],
        answers: str | Sequence[str] | None = None,
        *,
        add_generation_prompt: bool = True,
        padding_side: str | None = None,
    ) -> PaDTBatch:
        """Tokenise a batch of (image(s), prompt[, answer]) samples.

        Args:
            images: with a single prompt string, one image or a list of images for that sample; with a list of
                prompts, one entry per sample: an image, a list of images (multi-image sample), or ``None``/``[]``.
                An image is a path, a PIL image or a numpy array. Images come before the text in the user turn.
            prompts: the user text of each sample (non-empty).
            answers: optional assistant text per sample with ``<|VRT_k|>`` tokens (k local to the sample); the
                answer is followed by ``<|im_end|>``.
            add_generation_prompt: append ``<|im_start|>assistant\\n`` (required when answers are given).
            padding_side: ``"left"`` or ``"right"``. Default: left without answers (generation appends every
                row's next token in the same last column), right with answers (teacher forcing: every row starts
                at column 0 with no gap, so real tokens never attend to or sit behind padding whatever the
                attention backend, and logits/targets of a row line up with a plain one-step shift).

        Returns:
            :class:`PaDTBatch` with ``input_ids`` [B, T] (local VRT ids inside answers), ``attention_mask`` [B, T],
            ``mm_token_type_ids`` [B, T] (1 on ``<|image_pad|>``, else 0), ``pixel_values`` [ΣN, 3·2·patch²] and
            ``image_grid_thw`` [I, 3] (absent when no sample has an image), ``sample_of_image`` [I] (batch row of each
            image), ``answer_mask`` bool [B, T] (answers only: the answer tokens and their ``<|im_end|>``), and the
            attribute ``geometries`` (one ImageGeometry per image).
        """
        prompt_list, per_sample, answer_list = _split_samples(images, prompts, answers)
        if answer_list is not None and not add_generation_prompt:
            raise ValueError("answers follow the generation prompt; add_generation_prompt must be True")
        side = padding_side or ("right" if answer_list is not None else "left")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        encoded, flat, geometries, sample_of_image = self._encode_prompts(
            prompt_list, per_sample, add_generation_prompt
        )
        rows, answer_flags = self._rows(encoded["input_ids"], answer_list, geometries, sample_of_image)
        data = self._padded(rows, answer_flags, side)
        if flat:
            data["pixel_values"] = torch.as_tensor(encoded["pixel_values"], dtype=torch.float32)
            data["image_grid_thw"] = torch.as_tensor(encoded["image_grid_thw"], dtype=torch.long)
        data["sample_of_image"] = torch.tensor(sample_of_image, dtype=torch.long)
        if answer_list is None:
            del data["answer_mask"]
        return PaDTBatch(data, geometries)

    def _encode_prompts(self, prompt_list, per_sample, add_generation_prompt: bool):
        """Chat-template every sample, load its images and run the HF processor once over the batch."""
        flat, geometries, sample_of_image = [], [], []
        for b, (prompt, sample_images) in enumerate(zip(prompt_list, per_sample)):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {b} is empty or not a string: {prompt!r}")
            for image in sample_images:
                pil, geometry = self._load_for_model(image)
                flat.append(pil)
                geometries.append(geometry)
                sample_of_image.append(b)
        # Images only: encode_prompt tokenises the text, so that control tokens written in a prompt stay text.
        encoded = dict(ProcessorMixin.__call__(self, images=flat, return_tensors=None)) if flat else {}
        for index, geometry in enumerate(geometries):
            got = [int(v) for v in encoded["image_grid_thw"][index]]
            if got != [1, *geometry.patch_grid_hw]:  # invariant: geometry() mirrors the image processor
                raise RuntimeError(f"image {index}: processor grid {got} != geometry {[1, *geometry.patch_grid_hw]}")
        encoded["input_ids"] = self._prompt_rows(prompt_list, geometries, sample_of_image, add_generation_prompt)
        return encoded, flat, geometries, sample_of_image

    def _rows(self, prompt_rows, answer_list, geometries, sample_of_image) -> tuple[list[list[int]], list[list[bool]]]:
        """Each sample's ids (prompt, then answer and ``<|im_end|>``) and which of them belong to the answer."""
        rows, answer_flags = [], []
        for b, prompt_ids in enumerate(prompt_rows):
            ids = list(prompt_ids)
            flags = [False] * len(ids)
            if answer_list is not None:
                patches = sum(g.num_vrts for g, sample in zip(geometries, sample_of_image) if sample == b)
                answer_ids = self._answer_ids(answer_list[b], b, patches)
                ids += answer_ids
                flags += [True] * len(answer_ids)
            rows.append(ids)
            answer_flags.append(flags)
        return rows, answer_flags

    def _answer_ids(self, answer: str, sample: int, patches: int) -> list[int]:
        answer_ids = self.encode_text(answer) + [self.eos_token_id]
        bad = [i - self._vrt_start() for i in answer_ids if i >= self._vrt_start() + patches]
        if bad:
            raise ValueError(
                f"answer {sample} names <|VRT_{bad[0]}|> but its image(s) have only {patches} patches "
                f"(valid VRT indices 0..{patches - 1})"
            )
        return answer_ids

    def _padded(self, rows: list[list[int]], answer_flags: list[list[bool]], side: str) -> dict[str, Any]:
        """``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and ``answer_mask``, padded on ``side``."""
        length = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        input_ids = torch.full((len(rows), length), int(pad_id), dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        answer_mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for b, (ids, flags) in enumerate(zip(rows, answer_flags)):
            cols = slice(length - len(ids), length) if side == "left" else slice(0, len(ids))
            input_ids[b, cols] = torch.tensor(ids, dtype=torch.long)
            attention[b, cols] = 1
            answer_mask[b, cols] = torch.tensor(flags, dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            # image tokens only: VRT ids (>= V) are text for M-RoPE, and padding is never an image token
            "mm_token_type_ids": ((input_ids == self.image_token_id) & (attention == 1)).long(),
            "answer_mask": answer_mask,
        }


def _split_samples(images, prompts, answers) -> tuple[list[str], list[list], list[str] | None]:
    """The batch as per-sample lists: prompts, each sample's images, answers (or ``None``)."""
    single = isinstance(prompts, str)
    prompt_list = [prompts] if single else list(prompts)
    if not prompt_list:
        raise ValueError("prompts is empty")
    if single:
        per_sample = [list(images) if isinstance(images, (list, tuple)) else [images]]
    else:
        if not isinstance(images, (list, tuple)) or len(images) != len(prompt_list):
            raise ValueError(f"images must be a list with one entry per prompt ({len(prompt_list)} prompts)")
        per_sample = [
            [] if item is None else list(item) if isinstance(item, (list, tuple)) else [item] for item in images
        ]
    answer_list: list[str] | None = None
    if answers is not None:
        answer_list = [answers] if isinstance(answers, str) else list(answers)
        if len(answer_list) != len(prompt_list) or not all(isinstance(a, str) for a in answer_list):
            raise ValueError(f"answers must be one string per prompt ({len(prompt_list)} prompts)")
    return prompt_list, per_sample, answer_list


__all__ = ["PaDTBatch", "PaDTProcessor"]


def _register() -> None:
    # transformers' public registration API, so AutoProcessor.from_pretrained finds PaDTProcessor for PaDT folders.
    from transformers import AutoProcessor

    from padt.configuration import CONFIG_CLASSES

    for config_class in CONFIG_CLASSES:
        AutoProcessor.register(config_class, PaDTProcessor, exist_ok=True)


_register()
