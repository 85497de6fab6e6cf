"""A tiny random PaDT for tests, examples and the demo: builds in about a second, runs on any CPU.

The tiny model is a real :class:`~padt.PaDTForConditionalGeneration` (Qwen2.5-VL, the default) or
:class:`~padt.PaDTQwen3VLForConditionalGeneration` (``backbone="qwen3-vl"``): all code paths of the full-size
model, with a small configuration and a small byte-level BPE tokenizer trained offline with the Qwen special
tokens (:func:`padt.text.qwen_tokenizer.build_tiny_tokenizer`) and the backbone's chat template.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from padt.backbones import QWEN2_5_VL, get_backbone
from padt.configuration import PaDTConfig, PaDTQwen3VLConfig, padt_config_class
from padt.modeling import MODEL_CLASSES
from padt.pipeline import PaDTPipeline
from padt.processing import PaDTProcessor
from padt.text.prompts import VRT_PATTERN
from padt.text.qwen_tokenizer import build_tiny_tokenizer

#: Pixel budget of the tiny model: 224x224 images give a 8x8 merged grid (64 VRTs).
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 224 * 224


def tiny_config(tokenizer=None, backbone: str = QWEN2_5_VL.name, **overrides: Any) -> PaDTConfig | PaDTQwen3VLConfig:
    """The tiny configuration: text 2x128 (4 heads), vision 2x64 (2 heads of 32), decoder 1+1 blocks, on
    ``backbone`` (``"qwen2.5-vl"``: 14-px patches, window attention; ``"qwen3-vl"``: 16-px patches, DeepStack
    from the first vision layer, interleaved M-RoPE).

    ``overrides`` replace top-level fields (``vrt_proj_rank=4``, ``patch_order="official"``, ...);
    ``text_config``/``vision_config``/``decoder_config`` dicts are merged into the defaults.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _SPECIALS.items()}
    spec = get_backbone(backbone)
    text, vision = _tiny_text(len(tokenizer), ids, spec.name), _tiny_vision(spec.name)
    # At width 64 the reference's N(0, 0.02) init nearly silences the 3-layer box MLP; ~1/sqrt(64) trains fast.
    # Position encodings in the decoder's memory let the box head read coordinates (see PaDTDecoderConfig).
    decoder = dict(
        num_low_res_blocks=1, num_high_res_blocks=1, intermediate_size=128, initializer_range=0.125,
        memory_position_encoding=settings_patch_order(overrides) == "raster", vrt_patch_features=True,
    )
    text.update(overrides.pop("text_config", {}))
    vision.update(overrides.pop("vision_config", {}))
    decoder.update(overrides.pop("decoder_config", {}))
    settings = dict(vrt_proj_rank=16, tie_word_embeddings=True, prototype_position_encoding=True)
    settings.update(overrides)
    return padt_config_class(spec.padt_model_type)(
        text_config=text,
        vision_config=vision,
        decoder_config=decoder,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        **settings,
    )


def _tiny_text(vocab_size: int, ids: dict[str, int], backbone: str) -> dict[str, Any]:
    """The tiny language model: 2 layers of width 128, 4 heads of 32 (2 key/value heads)."""
    text = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
        bos_token_id=ids["pad"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    if backbone == "qwen3-vl":  # explicit head width; M-RoPE sections interleaved over the 16 rotary pairs
        text.update(head_dim=32)
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
    return text


def _tiny_vision(backbone: str) -> dict[str, Any]:
    """The tiny vision tower: 2 blocks of width 64, 2 heads of 32, merged 2 x 2 into width 128."""
    spec = get_backbone(backbone)
    vision = dict(
        depth=2, hidden_size=64, num_heads=2, intermediate_size=128, out_hidden_size=128,
        patch_size=spec.patch_size, spatial_merge_size=spec.merge_size,
    )
    if backbone == "qwen3-vl":  # a learned 8 x 8 position grid (resampled per image); DeepStack from block 0
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=[0])
    else:  # block 0 attends within 112-px windows, block 1 globally
        vision.update(fullatt_block_indexes=[1], window_size=112)
    return vision


def settings_patch_order(overrides: dict[str, Any]) -> str:
    return overrides.get("patch_order", "raster")


_SPECIALS = {
    "pad": "<|endoftext|>",
    "eos": "<|im_end|>",
    "image": "<|image_pad|>",
    "video": "<|video_pad|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
}


def tiny_pipeline(
    seed: int = 0,
    *,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
    max_new_tokens: int = 48,
    backbone: str = QWEN2_5_VL.name,
    **overrides: Any,
) -> PaDTPipeline:
    """A random tiny PaDT pipeline on ``backbone`` (model in eval mode, float32, CPU), deterministic for a
    ``seed``."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tokenizer, backbone, **overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MODEL_CLASSES[backbone](config)
    model.generation_config.eos_token_id = [config.text_config.eos_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.eval()
    processor = PaDTProcessor.from_tokenizer(
        tokenizer, vrt_id_start=config.text_config.vocab_size, min_pixels=min_pixels, max_pixels=max_pixels,
        backbone=config.backbone,
    )
    return PaDTPipeline(model, processor, max_new_tokens=max_new_tokens)


class ForceAnswer(LogitsProcessor):
    """Makes ``generate`` write given (batch-global) ids row by row, then the end token."""

    def __init__(self, scripts: list[list[int]], prompt_length: int, eos_id: int) -> None:
        self.scripts, self.prompt_length, self.eos_id = scripts, prompt_length, eos_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        for row, script in enumerate(self.scripts):
            forced[row, script[step] if step < len(script) else self.eos_id] = 0.0
        return forced


def forced_answer_kwargs(pipe, images, prompts, answers, offsets) -> dict:
    """``generate`` keyword arguments that make ``pipe``'s model write ``answers`` whatever its weights: a model that
    answers as a test says. VRTs in ``answers`` are local to their sample; ``offsets`` (one per answer) shifts
    them to batch-global ids (the sum of the patches of the samples before it). Unlike answers given for teacher
    forcing, a script may hold the tokenizer's control tokens (``<|vision_start|>``...): a model can write them."""
    processor = pipe.processor
    vocab = processor.vrt_id_start
    prompt_length = processor(images, prompts)["input_ids"].shape[1]
    scripts = [
        [t + offset if t >= vocab else t for t in _script_ids(processor, answer)]
        for answer, offset in zip(answers, offsets)
    ]
    force = ForceAnswer(scripts, prompt_length, processor.eos_token_id)
    return dict(logits_processor=LogitsProcessorList([force]), max_new_tokens=max(map(len, scripts)) + 1)


def _script_ids(processor, answer: str) -> list[int]:
    """``answer``'s ids with ``<|VRT_k|>`` as local VRT ids and control tokens as their ids."""
    ids, cursor = [], 0
    for match in VRT_PATTERN.finditer(answer):
        ids += processor.tokenizer.encode(answer[cursor : match.start()], add_special_tokens=False)
        ids.append(processor.vrt_id_start + int(match.group(1)))
        cursor = match.end()
    return ids + processor.tokenizer.encode(answer[cursor:], add_special_tokens=False)


def parameters_without_gradient(objective: torch.nn.Module, batch: Any, lr: float = 0.1) -> list[str]:
    """Names of ``objective``'s parameters whose gradient on ``batch`` is missing or all zero, after one SGD step
    on that batch. The step comes first because zero-started modules (the prototypes' LayerNorm gain, a layer
    pooling's output projection) pass no gradient to what lies before them until they have moved."""
    optimizer = torch.optim.SGD(objective.parameters(), lr=lr)
    objective(batch)["loss"].backward()
    optimizer.step()
    optimizer.zero_grad()
    objective(batch)["loss"].backward()
    return [name for name, p in objective.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
