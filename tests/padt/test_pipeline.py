"""PaDTPipeline on the tiny model: task entry points, grounding of given and generated answers, image inputs,
input validation, mixed-size batches, save/load, and the processor/model pairing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from padt import GroundedObject, GroundedOutput, PaDTPipeline
from padt.processing import PaDTProcessor
from padt.testing import forced_answer_kwargs as forced_kwargs
from padt.testing import tiny_pipeline
from padt.text.prompts import rec_prompt

TOKENS = 12  # new tokens per generation: enough to exercise the path, cheap on CPU


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pipe() -> PaDTPipeline:
    """The tiny pipeline with its new modules moved off their start (non-zero prototypes, varied decoder outputs)."""
    pipe = tiny_pipeline(seed=11, max_new_tokens=TOKENS)
    gen = torch.Generator().manual_seed(0)
    model = pipe.model
    with torch.no_grad():
        model.vrt_prototypes.norm.weight.copy_(1.0 + 0.5 * torch.randn(128, generator=gen))
        for param in model.vrt_decoder.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return pipe


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return noise(112, 168)  # 4 x 6 merged cells: 24 VRTs


def assert_object_in_image(obj: GroundedObject, hw: tuple[int, int]) -> None:
    height, width = hw
    x1, y1, x2, y2 = obj.box
    assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
    assert 0.0 <= obj.score <= 1.0
    assert obj.mask is not None and obj.mask.dtype == bool and obj.mask.shape == (height, width)


# ---- tasks ------------------------------------------------------------------------------------------------
def test_tasks_return_one_output_for_one_image_and_a_list_for_a_list(pipe, image):
    other = noise(84, 112, 1)
    single = [pipe.refer(image, "the red circle"), pipe.detect(image, ["circle", "square"]), pipe.caption(image)]
    for out in single:
        assert isinstance(out, GroundedOutput) and out.image_sizes == [(112, 168)]
        assert isinstance(out.text, str) and isinstance(out.problems, list)
    batched = [
        pipe.refer([image, other], "the red circle"),
        pipe.detect([image, other], ["circle", "square"]),
        pipe.caption([image, other]),
    ]
    for out, alone in zip(batched, single):
        assert isinstance(out, list) and len(out) == 2 and all(isinstance(o, GroundedOutput) for o in out)
        assert out[0].image_sizes == [(112, 168)] and out[1].image_sizes == [(84, 112)]
        assert out[0].text == alone.text  # batching (with left padding) does not change the answer


def test_random_models_malformed_output_is_reported_not_raised(pipe, image):
    out = pipe.refer(image, "the red circle")
    assert out.problems, out.text  # a random model writes no well-formed answer ...
    assert any("cut off" in p or "label" in p or "quote" in p for p in out.problems)
    for obj in out.objects:  # ... and whatever it grounds is still well-formed
        assert_object_in_image(obj, (112, 168))


def test_forced_malformed_answer_gives_problems(pipe, image):
    prompt = rec_prompt("the cat")
    answer = 'The "cat refers to <|VRT_1|><|VRT_2|> in this image.'  # the quote never closes
    out = pipe.refer(image, "the cat", **forced_kwargs(pipe, [image], [prompt], [answer], [0]))
    assert out.text == answer
    assert out.objects == [] and any("unclosed quote" in p for p in out.problems)


# ---- grounding ----------------------------------------------------------------------------------------------
def test_decode_answer_grounds_labelled_objects(pipe, image):
    answer = 'In this image, there are 2 "circle" (<|VRT_0|><|VRT_1|><|VRT_7|>, <|VRT_23|>), 1 "square" (<|VRT_5|>).'
    out = pipe.decode_answer(image, answer, prompt="Please detect circles and squares.")
    assert out.text == answer and out.problems == []
    assert [o.label for o in out.objects] == ["circle", "circle", "square"]
    assert [o.patches for o in out.objects] == [[0, 1, 7], [23], [5]]
    assert [o.image_index for o in out.objects] == [0, 0, 0]
    for obj in out.objects:
        assert_object_in_image(obj, (112, 168))
    assert len({o.box for o in out.objects}) == 3  # different VRTs give different boxes


def test_decode_answer_caption_labels_and_multi_image_patches(pipe, image):
    second = noise(56, 84, 2)  # 2 x 3 merged cells: local VRTs 24..29 of this sample
    answer = "A red circle (<|VRT_1|><|VRT_2|>) is next to a blue square (<|VRT_26|>)."
    out = pipe.decode_answer([image, second], answer, prompt="Describe both images.", require_labels=False)
    assert out.image_sizes == [(112, 168), (56, 84)]
    assert [o.label for o in out.objects] == ["A red circle", "is next to a blue square"]
    assert [(o.image_index, o.patches) for o in out.objects] == [(0, [1, 2]), (1, [2])]
    assert_object_in_image(out.objects[0], (112, 168))
    assert_object_in_image(out.objects[1], (56, 84))


def test_answer_naming_a_missing_patch_is_an_error(pipe, image):
    with pytest.raises(ValueError, match=r"<\|VRT_24\|> but its image\(s\) have only 24 patches"):
        pipe.decode_answer(image, 'The "cat" refers to <|VRT_3|><|VRT_24|> in this image.')


def test_generated_answer_is_grounded_like_the_same_answer_given(pipe, image):
    """generate (KV cache, recorded states) -> parse -> decode equals teacher forcing of the same answer."""
    prompt = rec_prompt("the red circle")
    answer = 'The "the red circle" refers to <|VRT_4|><|VRT_5|><|VRT_10|><|VRT_11|><|VRT_11|> in this image.'
    generated = pipe.refer(image, "the red circle", **forced_kwargs(pipe, [image], [prompt], [answer], [0]))
    given = pipe.decode_answer(image, answer, prompt=prompt)
    assert generated.text == given.text == answer and generated.problems == []
    assert len(generated.objects) == len(given.objects) == 1
    a, b = generated.objects[0], given.objects[0]
    assert a.label == b.label == "the red circle" and a.patches == b.patches == [4, 5, 10, 11, 11]
    assert np.allclose(a.box, b.box, atol=1e-3) and abs(a.score - b.score) < 1e-5
    assert (a.mask != b.mask).mean() < 1e-3


def test_mixed_size_batch_equals_each_image_alone(pipe, image):
    other = noise(84, 112, 1)  # 3 x 4 merged cells; its global VRTs start after the first image's 24
    expressions = ["the circle", "the square"]
    answers = [
        'The "the circle" refers to <|VRT_0|><|VRT_6|><|VRT_7|> in this image.',
        'The "the square" refers to <|VRT_11|><|VRT_2|> in this image.',
    ]
    prompts = [rec_prompt(e) for e in expressions]
    batched = pipe.refer(
        [image, other], expressions, **forced_kwargs(pipe, [image, other], prompts, answers, [0, 24])
    )
    for b, (img, hw) in enumerate([(image, (112, 168)), (other, (84, 112))]):
        alone = pipe.refer(img, expressions[b], **forced_kwargs(pipe, [img], [prompts[b]], [answers[b]], [0]))
        together = batched[b]
        assert together.text == alone.text == answers[b] and together.image_sizes == [hw]
        assert [o.patches for o in together.objects] == [o.patches for o in alone.objects]
        assert np.allclose(together.objects[0].box, alone.objects[0].box, atol=1e-3)
        assert abs(together.objects[0].score - alone.objects[0].score) < 1e-5
        assert (together.objects[0].mask != alone.objects[0].mask).mean() < 1e-3
        assert_object_in_image(together.objects[0], hw)


# ---- inputs -------------------------------------------------------------------------------------------------
def test_images_as_path_pil_and_numpy_give_the_same_result(pipe, image, tmp_path):
    path = tmp_path / "scene.png"
    image.save(path)
    answer = 'The "dot" refers to <|VRT_8|><|VRT_9|> in this image.'
    outputs = [pipe.decode_answer(x, answer) for x in (str(path), path, image, np.asarray(image))]
    generated = [pipe.caption(x).text for x in (path, image, np.asarray(image))]
    assert len(set(generated)) == 1
    first = outputs[0].objects[0]
    for out in outputs[1:]:
        obj = out.objects[0]
        assert out.image_sizes == [(112, 168)]
        assert obj.box == first.box and obj.score == first.score and np.array_equal(obj.mask, first.mask)


def test_invalid_requests_are_value_errors(pipe, image):
    with pytest.raises(ValueError, match="expression is empty"):
        pipe.refer(image, "")
    with pytest.raises(ValueError, match="expression is empty"):
        pipe.refer([image, image], ["fine", "  "])
    with pytest.raises(ValueError, match="category list is empty"):
        pipe.detect(image, [])
    with pytest.raises(ValueError, match="category list is empty"):
        pipe.detect([image, image], [["cat"], []])
    with pytest.raises(TypeError, match="not a single string"):
        pipe.detect(image, "person")
    with pytest.raises(ValueError, match="got 2 images but 1 expressions"):
        pipe.refer([image, image], ["one"])
    with pytest.raises(ValueError, match="got 1 images but 2 category lists"):
        pipe.detect([image], [["cat"], ["dog"]])
    with pytest.raises(ValueError, match="got 1 images but 2 prompts"):
        pipe.ask([image], ["a", "b"])
    with pytest.raises(ValueError, match="got no images"):
        pipe.caption([])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pipe.ask([image], [""])


# ---- save / load and pairing -----------------------------------------------------------------------------
def test_from_pretrained_after_save_pretrained_gives_identical_results(pipe, image, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = PaDTPipeline.from_pretrained(tmp_path, max_new_tokens=TOKENS)
    assert not loaded.model.training
    assert loaded.processor.vrt_id_start == pipe.processor.vrt_id_start
    assert loaded.processor.max_pixels == pipe.processor.max_pixels
    assert loaded.refer(image, "the circle").text == pipe.refer(image, "the circle").text
    answer = 'The "circle" refers to <|VRT_0|><|VRT_13|> in this image.'
    ours, theirs = pipe.decode_answer(image, answer), loaded.decode_answer(image, answer)
    assert ours.text == theirs.text
    for a, b in zip(ours.objects, theirs.objects, strict=True):
        assert a.box == b.box and a.score == b.score and np.array_equal(a.mask, b.mask)


def test_processor_and_model_with_different_vocabularies_are_refused(pipe):
    vocab = pipe.model.text_vocab_size
    other = PaDTProcessor.from_tokenizer(pipe.processor.tokenizer, vrt_id_start=vocab + 8)
    with pytest.raises(ValueError, match=rf"vrt_id_start \({vocab + 8}\) must equal the model's text vocabulary size"):
        PaDTPipeline(pipe.model, other)


def test_an_object_whose_vrts_span_two_images_is_dropped_and_reported(pipe, image):
    second = noise(56, 84, 2)  # local VRTs 24..29 of this sample
    answer = 'There are 2 "circle" (<|VRT_23|><|VRT_24|>, <|VRT_3|>) in these images.'
    out = pipe.decode_answer([image, second], answer, prompt="Detect circles.")
    assert [o.patches for o in out.objects] == [[3]]
    assert len(out.problems) == 1 and "names patches of 2 different images" in out.problems[0]
    assert "[23, 24]" in out.problems[0] and "dropped" in out.problems[0]


def test_generated_text_is_decoded_without_special_tokens_like_every_path(pipe, image):
    prompt = rec_prompt("the dot")
    written = 'The "the dot" refers to <|VRT_4|> in<|vision_start|> this image.'
    out = pipe.refer(image, "the dot", **forced_kwargs(pipe, [image], [prompt], [written], [0]))
    assert out.text == 'The "the dot" refers to <|VRT_4|> in this image.'
    assert [o.patches for o in out.objects] == [[4]]


# ---- many questions, many images ---------------------------------------------------------------------------
def test_several_expressions_about_one_image_equal_separate_calls(pipe, image):
    expressions = ["the red circle", "the blue square", "the dot"]
    together = pipe.refer(image, expressions)
    assert isinstance(together, list) and len(together) == 3
    for expression, out in zip(expressions, together, strict=True):
        alone = pipe.refer(image, expression)
        assert out.text == alone.text and out.problems == alone.problems
        assert [o.box for o in out.objects] == pytest.approx([o.box for o in alone.objects], abs=1e-5)
    lists = [["circle"], ["square", "dot"]]
    assert [o.text for o in pipe.detect(image, lists)] == [pipe.detect(image, c).text for c in lists]


def test_a_generator_of_images_is_accepted_and_map_yields_in_order(pipe, image):
    images = [noise(56, 56, seed) for seed in range(5)]
    expected = [o.text for o in pipe.caption(images)]
    assert [o.text for o in pipe.caption(i for i in images)] == expected
    pipe.batch_size, old = 2, pipe.batch_size
    try:
        lazy = pipe.map((i for i in images), task="caption", progress=False)
        first = next(lazy)  # only the first chunk is generated so far
        assert first.text == expected[0]
        assert [first.text] + [o.text for o in lazy] == expected
        refer = list(pipe.map(images, task="refer", expression="the dot", progress=False))
        assert [o.text for o in refer] == [o.text for o in pipe.refer(images, "the dot")]
    finally:
        pipe.batch_size = old
    with pytest.raises(ValueError, match="needs categories"):
        next(pipe.map(images, task="detect"))
    with pytest.raises(ValueError, match="got no images"):
        pipe.caption(iter([]))


# ---- streaming ---------------------------------------------------------------------------------------------
def test_a_streamer_gets_readable_text_and_every_object_once(pipe, image):
    prompt = "Please detect circles and squares."
    answer = 'In this image, there are 2 "circle" (<|VRT_0|><|VRT_1|><|VRT_7|>, <|VRT_23|>), 1 "square" (<|VRT_5|>).'
    events = []
    forced = forced_kwargs(pipe, [image], [prompt], [answer], [0])
    final = pipe.ask([image], [prompt], streamer=events.append, **forced)[0]
    texts = [e for e in events if isinstance(e, str)]
    objects = [e for e in events if isinstance(e, GroundedObject)]
    assert "".join(texts) == final.text == answer and len(texts) > 3  # piece by piece
    assert len(objects) == len(final.objects) == 3
    for streamed, kept in zip(objects, final.objects, strict=True):
        assert (streamed.label, streamed.patches) == (kept.label, kept.patches)
        assert streamed.box == pytest.approx(kept.box, abs=1e-4) and abs(streamed.score - kept.score) < 1e-5
        assert (streamed.mask != kept.mask).mean() < 1e-3
    # each object arrives as soon as its run ends: before the text that follows it is complete
    first_object = events.index(objects[0])
    assert "".join(e for e in events[:first_object] if isinstance(e, str)).endswith("<|VRT_7|>,")


def test_streaming_is_refused_for_several_questions_and_works_for_a_given_answer(pipe, image):
    with pytest.raises(ValueError, match="one question at a time"):
        pipe.refer([image, image], "the dot", streamer=print)
    events = []
    answer = 'The "dot" refers to <|VRT_3|><|VRT_4|> in this image.'
    out = pipe.decode_answer(image, answer, rec_prompt("dot"), streamer=events.append)
    assert events == [out.text, *out.objects]
