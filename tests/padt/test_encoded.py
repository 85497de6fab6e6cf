"""Encode once, ask many: an encoded image (vision context + KV cache of the shared prompt prefix) gives the same
tokens, boxes, masks and scores as separate calls, for every task, with one and with several images per sample,
on both backbones (Qwen3-VL's DeepStack features enter with the prefix only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from padt.backbones import BACKBONE_NAMES
from padt.testing import forced_answer_kwargs as forced_kwargs
from padt.testing import tiny_pipeline
from padt.text.prompts import ovd_prompt, rec_prompt
from padt.vision.encoded import EncodedImage


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=BACKBONE_NAMES)
def pipe(request):
    pipe = tiny_pipeline(seed=11, max_new_tokens=12, backbone=request.param)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pipe.model.vrt_prototypes.norm.weight.copy_(1.0 + 0.5 * torch.randn(128, generator=gen))
        for param in pipe.model.vrt_decoder.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return pipe


@pytest.fixture(scope="module")
def image(pipe) -> Image.Image:
    cell = pipe.model.config.backbone.cell_size
    return noise(4 * cell, 6 * cell)  # 24 VRTs


@pytest.fixture(scope="module")
def second(pipe) -> Image.Image:
    cell = pipe.model.config.backbone.cell_size
    return noise(2 * cell, 3 * cell, 2)  # 6 VRTs


def same(a, b) -> None:
    """The same answer and objects; boxes equal to 1e-5 of the image size (float32 noise of another batch)."""
    assert a.text == b.text and a.problems == b.problems and len(a.objects) == len(b.objects)
    for x, y in zip(a.objects, b.objects, strict=True):
        assert (x.label, x.patches, x.image_index) == (y.label, y.patches, y.image_index)
        height, width = a.image_sizes[x.image_index]
        scale = np.array([width, height, width, height])
        assert np.allclose(np.array(x.box) / scale, np.array(y.box) / scale, atol=1e-5)
        assert abs(x.score - y.score) < 1e-5
        assert (x.mask != y.mask).mean() < 1e-4


def test_encode_returns_one_or_a_list(pipe, image, second):
    encoded = pipe.encode(image)
    assert isinstance(encoded, EncodedImage) and encoded.geometries[0].original_hw == (image.height, image.width)
    assert encoded.image_tokens == [24] and encoded.prefix_ids[0, -1] == pipe.processor.tokenizer.convert_tokens_to_ids(
        "<|vision_end|>"
    )
    assert len(pipe.encode([image, second])) == 2


@pytest.mark.parametrize("two_images", [False, True], ids=["one image", "two images"])
def test_forced_answers_about_one_encoded_image_equal_separate_calls(pipe, image, second, two_images):
    sample = [image, second] if two_images else image
    encoded = pipe.encode([sample])[0]
    answers = [
        'The "the red circle" refers to <|VRT_4|><|VRT_5|><|VRT_10|> in this image.',
        'The "dot" refers to <|VRT_23|><|VRT_23|> in this image.',
        'In this image, there are 2 "circle" (<|VRT_0|><|VRT_1|>, <|VRT_20|>), 1 "square" (<|VRT_5|>).',
    ]
    prompts = [rec_prompt("the red circle"), rec_prompt("dot"), ovd_prompt(["circle", "square"])]
    patches = 30 if isinstance(sample, list) else 24  # VRTs per sample: the offsets of the batch's samples
    kwargs = forced_kwargs(pipe, [sample] * 3, prompts, answers, [0, patches, 2 * patches])
    together = pipe.ask([encoded] * 3, prompts, **kwargs)
    assert [o.text for o in together] == answers
    for prompt, answer, out in zip(prompts, answers, together, strict=True):
        alone = pipe.ask([sample], [prompt], **forced_kwargs(pipe, [sample], [prompt], [answer], [0]))[0]
        same(out, alone)
    taught = pipe.decode_answer(encoded, answers[2], prompts[2])
    same(taught, pipe.decode_answer(sample, answers[2], prompts[2]))


def test_every_task_takes_an_encoded_image(pipe, image):
    encoded = pipe.encode(image)
    for task in ("refer", "detect", "caption"):
        args = {"refer": ("the dot",), "detect": (["circle"],), "caption": ()}[task]
        same(getattr(pipe, task)(encoded, *args), getattr(pipe, task)(image, *args))
    expressions = ["the red circle", "a much longer expression about the square on the left", "dot"]
    for got, expression in zip(pipe.refer(image, expressions), expressions, strict=True):
        same(got, pipe.refer(image, expression))  # one image, many expressions: encoded once under the hood
    same(pipe.caption([encoded, encoded])[1], pipe.caption(image))
    assert [o.text for o in pipe.map([encoded, image], task="caption", progress=False)] == [
        pipe.caption(image).text
    ] * 2


def test_questions_about_several_encoded_images_share_one_batch(pipe, image, second):
    small, large = pipe.encode([second, image])  # prefixes of different lengths: padded on the left
    assert small.prefix_length < large.prefix_length
    prompts = [rec_prompt("a"), rec_prompt("the other one"), ovd_prompt(["dot"])]
    answers = ['The "a" refers to <|VRT_2|> in this image.', 'The "the other one" refers to <|VRT_20|> in this image.',
               'There is 1 "dot" (<|VRT_5|>) in this image.']
    images = [second, image, second]
    kwargs = forced_kwargs(pipe, images, prompts, answers, [0, 6, 30])
    together = pipe.ask([small, large, small], prompts, **kwargs)
    assert [o.text for o in together] == answers
    for image, prompt, answer, out in zip(images, prompts, answers, together, strict=True):
        same(out, pipe.ask([image], [prompt], **forced_kwargs(pipe, [image], [prompt], [answer], [0]))[0])
