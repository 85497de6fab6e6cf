"""The PaDT models of both backbones on the tiny config: logit isolation, batched == alone, prototypes, gradients
into every new module, text-only inputs, the labels loss, generation (cache, sampling, several return sequences,
no beams), save/load, agreement with the plain backbone, and that transformers itself is left untouched.

Every test that takes ``backbone`` runs on Qwen2.5-VL and on Qwen3-VL; the images are sized in cells of the
backbone (28 or 32 px), so both see the same merged grids and the same VRT counts."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl
from transformers.models.qwen3_vl import modeling_qwen3_vl

import padt  # noqa: F401  (the import must not patch transformers)
from padt.backbones import BACKBONE_NAMES, get_backbone
from padt.configuration import PaDTSettings
from padt.modeling import PaDTForConditionalGeneration, PaDTQwen3VLForConditionalGeneration
from padt.testing import tiny_pipeline
from padt.vision.queries import ObjectQueries

TRANSFORMERS_QWEN_FILE = inspect.getsourcefile(modeling_qwen2_5_vl)
PROMPTS = ["Please find the red thing.", "Please find the square."]
ANSWERS = [
    'The "red thing" refers to <|VRT_0|><|VRT_7|><|VRT_7|><|VRT_11|> in this image.',
    'The "square" refers to <|VRT_3|><|VRT_2|> in this image.',
]


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def perturb_new_modules(model: PaDTForConditionalGeneration, seed: int = 0) -> None:
    """Move the prototypes' LayerNorm off its zero start (so VRT logits are not all 0) and give the decoder large
    random weights (so boxes, scores and masks vary between objects instead of sitting at sigmoid(0))."""
    gen = torch.Generator().manual_seed(seed)
    norm = model.vrt_prototypes.norm
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.5 * torch.randn(norm.weight.shape, generator=gen))
        norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=gen))
        for param in model.vrt_decoder.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))


@pytest.fixture(scope="module", params=BACKBONE_NAMES)
def backbone(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def cell(backbone) -> int:
    return get_backbone(backbone).cell_size


@pytest.fixture(scope="module")
def pipe(backbone):
    pipe = tiny_pipeline(seed=1, backbone=backbone)
    perturb_new_modules(pipe.model)
    return pipe


@pytest.fixture(scope="module")
def images(cell):
    return [noise(4 * cell, 6 * cell, 0), noise(3 * cell, 4 * cell, 1)]  # 4x6 and 3x4 cells: prompts differ


def encode(model, batch, num_samples):
    return model.encode_images(batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], num_samples)


@torch.no_grad()
def teacher_forced(model, processor, images, prompts, answers, padding_side="left"):
    """(batch, vision, global ids, logits, last-layer states) of a teacher-forced pass."""
    batch = processor(images, prompts, answers=answers, padding_side=padding_side)
    vision = encode(model, batch, len(prompts))
    ids = vision.codec.to_global(batch["input_ids"])
    out = model(
        input_ids=ids, attention_mask=batch["attention_mask"], mm_token_type_ids=batch["mm_token_type_ids"],
        vision=vision,
    )
    states = model.answer_states(ids, vision, batch["attention_mask"], batch["mm_token_type_ids"])
    return batch, vision, ids, out.logits, states


def decode_answer_objects(model, vision, ids, states, answer_mask):
    """One object per sample: its VRTs are the answer's VRT tokens, predicted by the states one position earlier."""
    local = vision.codec.to_local(ids)
    samples, counts, vrt_local, positions = [], [], [], []
    for b in range(ids.shape[0]):
        found = ((ids[b] >= model.text_vocab_size) & answer_mask[b]).nonzero().flatten()
        samples.append(b)
        counts.append(len(found))
        vrt_local.append(local[b, found] - model.text_vocab_size)
        positions.append(found)
    queries = ObjectQueries(torch.tensor(samples), torch.tensor(counts), torch.cat(vrt_local), torch.cat(positions))
    predicting = torch.nn.functional.pad(states[:, :-1], (0, 0, 1, 0))  # entry t: the state that predicted token t
    return model.ground(vision, predicting, queries).output


def generate(model, processor, images, prompts, **kwargs):
    batch = processor(images, prompts)
    vision = encode(model, batch, len(prompts))
    with vision.recording() as recorded:
        sequences = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            mm_token_type_ids=batch["mm_token_type_ids"], vision=vision, **kwargs,
        )
    states = recorded.states()
    return batch, vision, sequences, states


# ---- logits -----------------------------------------------------------------------------------------------
def test_vrt_logits_are_isolated_per_sample(pipe, images):
    model, processor = pipe.model, pipe.processor
    vocab = model.text_vocab_size
    batch, vision, ids, logits, _ = teacher_forced(model, processor, images, PROMPTS, ANSWERS)
    spans = vision.codec.sample_spans()
    assert spans == [(0, 24), (24, 36)]
    assert logits.shape[-1] == vocab + 36
    for b, (start, end) in enumerate(spans):
        rows = logits[b, batch["attention_mask"][b].bool()]
        vrt = rows[:, vocab:]
        assert torch.isfinite(rows[:, :vocab]).all()
        assert torch.isfinite(vrt[:, start:end]).all()
        outside = torch.cat([vrt[:, :start], vrt[:, end:]], dim=1)
        assert outside.numel() > 0 and torch.isneginf(outside).all()

    # a different picture for sample 1 (same size) changes nothing of sample 0
    _, _, _, changed, _ = teacher_forced(model, processor, [images[0], noise(84, 112, 99)], PROMPTS, ANSWERS)
    real0 = batch["attention_mask"][0].bool()
    real1 = batch["attention_mask"][1].bool()
    assert torch.allclose(changed[0, real0], logits[0, real0], atol=1e-5, rtol=0)
    assert not torch.allclose(changed[1, real1, :vocab], logits[1, real1, :vocab], atol=1e-3)


def test_batched_logits_and_decodings_equal_each_sample_alone(pipe, images):
    model, processor = pipe.model, pipe.processor
    vocab = model.text_vocab_size
    batch, vision, ids, logits, states = teacher_forced(model, processor, images, PROMPTS, ANSWERS)
    assert batch["attention_mask"][1, 0] == 0  # the shorter sample is left-padded
    together = decode_answer_objects(model, vision, ids, states, batch["answer_mask"])
    spans = vision.codec.sample_spans()
    for b in range(2):
        one, one_vision, one_ids, one_logits, one_states = teacher_forced(
            model, processor, [images[b]], [PROMPTS[b]], [ANSWERS[b]]
        )
        assert one["attention_mask"].all()
        # the states that predict each answer token (position t - 1 for answer token t)
        pos = batch["answer_mask"][b].nonzero().flatten() - 1
        one_pos = one["answer_mask"][0].nonzero().flatten() - 1
        assert len(pos) == len(one_pos)
        start, end = spans[b]
        assert torch.allclose(logits[b, pos, :vocab], one_logits[0, one_pos, :vocab], atol=1e-4, rtol=0)
        assert torch.allclose(
            logits[b, pos, vocab + start : vocab + end], one_logits[0, one_pos, vocab:], atol=1e-4, rtol=0
        )
        alone = decode_answer_objects(model, one_vision, one_ids, one_states, one["answer_mask"])
        assert torch.allclose(together.boxes[b], alone.boxes[0], atol=1e-4, rtol=0)
        assert torch.allclose(together.score_logits[b], alone.score_logits[0], atol=1e-4, rtol=0)
        h, w = (int(v) for v in alone.mask_hw[0])
        assert together.mask_hw[b].tolist() == [h, w]
        masks = together.mask_logits[b, :h, :w], alone.mask_logits[0, :h, :w]
        assert torch.allclose(*masks, atol=1e-5, rtol=1e-4)
    # the two objects really differ (the comparison above is not between constants)
    assert not torch.allclose(together.boxes[0], together.boxes[1], atol=1e-3)


def test_batched_greedy_generation_equals_each_sample_alone(pipe, images):
    model, processor = pipe.model, pipe.processor
    batch, vision, sequences, states = generate(model, processor, images, PROMPTS, max_new_tokens=8, do_sample=False)
    length = batch["input_ids"].shape[1]
    completions = vision.codec.to_local(sequences[:, length:])
    for b in range(2):
        one, one_vision, one_sequences, one_states = generate(
            model, processor, [images[b]], [PROMPTS[b]], max_new_tokens=8, do_sample=False
        )
        one_completion = one_vision.codec.to_local(one_sequences[:, one["input_ids"].shape[1]:])
        assert torch.equal(completions[b], one_completion[0])
        assert torch.allclose(states[b], one_states[0], atol=1e-4, rtol=0)


# ---- prototypes -------------------------------------------------------------------------------------------
def test_prototypes_start_at_exactly_zero(images, backbone):
    fresh = tiny_pipeline(seed=2, backbone=backbone)
    model, processor = fresh.model, fresh.processor
    norm = model.vrt_prototypes.norm
    assert torch.equal(norm.weight, torch.zeros_like(norm.weight))
    assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    batch = processor(images[0], PROMPTS[0])
    with torch.no_grad():
        vision = encode(model, batch, 1)
    assert vision.prototypes.shape == (24, 128)
    assert torch.equal(vision.prototypes, torch.zeros_like(vision.prototypes))
    assert vision.image_embeds.abs().max() > 0  # the image-pad tokens still get the raw merged features


def test_vrt_norm_init_starts_the_prototypes_as_a_plain_layernorm(images, backbone, tmp_path):
    """``vrt_norm_init=1.0``: at initialisation P = n + up(down(n)) with n the unscaled LayerNorm of (x + code);
    the start survives save/load of a checkpoint that lacks the prototype weights."""
    from padt.decoders.layers import sine_position_encoding
    from padt.vision.geometry import merged_cell_centres

    fresh = tiny_pipeline(seed=2, vrt_norm_init=1.0, backbone=backbone)
    model, processor = fresh.model, fresh.processor
    prototypes = model.vrt_prototypes
    assert torch.equal(prototypes.norm.weight, torch.ones_like(prototypes.norm.weight))
    assert torch.equal(prototypes.norm.bias, torch.zeros_like(prototypes.norm.bias))
    with torch.no_grad():
        vision = encode(model, processor(images[0], PROMPTS[0]), 1)
        code = sine_position_encoding(merged_cell_centres(vision.codec.merged_hw), 128)
        normed = torch.nn.functional.layer_norm(vision.image_embeds + code, (128,), eps=prototypes.norm.eps)
        expected = normed + prototypes.up(prototypes.down(normed))
    torch.testing.assert_close(vision.prototypes, expected)
    assert vision.prototypes.norm(dim=-1).min() > 1.0  # not the neutral zero start

    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("vrt_prototypes.")}, weights,
              metadata={"format": "pt"})
    reloaded = PaDTForConditionalGeneration.from_pretrained(tmp_path).vrt_prototypes.norm.weight
    assert reloaded.shape == (128,) and torch.equal(reloaded, torch.ones_like(reloaded))
    with pytest.raises(ValueError, match="vrt_norm_init must be a finite number"):
        type(model.config)(vrt_norm_init=float("nan"))


def test_prototype_position_encoding_tells_alike_patches_apart(pipe, images):
    """The tiny model adds a sine code of each merged cell's centre before the prototypes' LayerNorm."""
    from padt.decoders.layers import sine_position_encoding
    from padt.vision.geometry import merged_cell_centres

    model, processor = pipe.model, pipe.processor
    assert model.config.prototype_position_encoding
    batch = processor(images, PROMPTS)
    with torch.no_grad():
        vision = encode(model, batch, 2)
        centres = merged_cell_centres(vision.codec.merged_hw)
        expected = model.vrt_prototypes(vision.image_embeds, sine_position_encoding(centres, 128))
        torch.testing.assert_close(vision.prototypes, expected)
        same = vision.image_embeds[:1].expand(2, -1)  # one patch's features at two cells
        apart = model.vrt_prototypes(same, sine_position_encoding(centres[:2], 128))
        alike = model.vrt_prototypes(same)
    assert not torch.allclose(apart[0], apart[1]) and torch.equal(alike[0], alike[1])
    with pytest.raises(ValueError, match="needs use_visual_prototype_projection"):
        type(model.config)(prototype_position_encoding=True, use_visual_prototype_projection=False)


def test_vrt_ids_are_embedded_from_the_prototypes(pipe, images):
    model, processor = pipe.model, pipe.processor
    vocab = model.text_vocab_size
    batch = processor(images, PROMPTS, answers=ANSWERS)
    with torch.no_grad():
        vision = encode(model, batch, 2)
        ids = vision.codec.to_global(batch["input_ids"])
        embeds = model.embed_input_ids(ids, vision)
    is_vrt = ids >= vocab
    assert torch.equal(embeds[is_vrt], vision.prototypes[ids[is_vrt] - vocab])
    text = ~is_vrt & (ids != model.config.image_token_id)
    assert torch.equal(embeds[text], model.get_input_embeddings()(ids[text]))
    # sample 1's <|VRT_3|> is global row 24 + 3; changing that prototype changes exactly those embeddings
    row = 24 + 3
    vision.prototypes = vision.prototypes.clone()
    vision.prototypes[row] += 1.0
    with torch.no_grad():
        changed = model.embed_input_ids(ids, vision)
    differs = (changed != embeds).any(dim=-1)
    assert differs.any() and torch.equal(differs, ids == vocab + row)


def test_from_pretrained_keeps_loaded_prototypes_and_initialises_missing_ones(pipe, tmp_path):
    model = pipe.model
    model.save_pretrained(tmp_path / "full")
    loaded = PaDTForConditionalGeneration.from_pretrained(tmp_path / "full")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert loaded.vrt_prototypes.norm.weight.abs().min() > 0  # not re-initialised to zero

    # a checkpoint without the PaDT modules (e.g. a base Qwen2.5-VL) gets our explicit init for them
    model.save_pretrained(tmp_path / "base")
    weights = tmp_path / "base" / "model.safetensors"
    tensors = {k: v for k, v in load_file(weights).items() if not k.startswith(("vrt_prototypes.", "vrt_decoder."))}
    assert len(tensors) < len(load_file(weights))
    save_file(tensors, weights, metadata={"format": "pt"})
    fresh = PaDTForConditionalGeneration.from_pretrained(tmp_path / "base")
    norm = fresh.vrt_prototypes.norm
    assert torch.equal(norm.weight, torch.zeros_like(norm.weight))
    assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    assert 0.01 < float(fresh.vrt_prototypes.down.weight.detach().std()) < 0.03
    gains = [p for n, p in fresh.vrt_decoder.named_parameters() if n.endswith("norm.weight")]
    assert gains and all(torch.equal(g, torch.ones_like(g)) for g in gains)
    assert torch.equal(fresh.model.visual.patch_embed.proj.weight, model.model.visual.patch_embed.proj.weight)


# ---- gradients --------------------------------------------------------------------------------------------
def test_decoder_losses_reach_every_new_parameter(images, backbone):
    """A loss on boxes + scores + masks must reach every prototype and decoder parameter.

    At the zero start the prototypes are 0, so ``down``/``up`` get exactly zero gradient (only the LayerNorm
    learns first); the check is meaningful only once the LayerNorm gain is non-zero, as after a step of training.
    """
    base = tiny_pipeline(seed=4, backbone=backbone)
    processor = base.processor

    def grads(model):
        model.train()
        model.zero_grad(set_to_none=True)
        batch = processor(images, PROMPTS, answers=ANSWERS)
        vision = encode(model, batch, 2)
        ids = vision.codec.to_global(batch["input_ids"])
        states = model.answer_states(ids, vision, batch["attention_mask"], batch["mm_token_type_ids"])
        out = decode_answer_objects(model, vision, ids, states, batch["answer_mask"])
        loss = out.boxes.sum() + out.score_logits.sum() + out.mask_logits.pow(2).mean()
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    at_start = grads(copy.deepcopy(base.model))
    assert torch.equal(at_start["vrt_prototypes.down.weight"], torch.zeros_like(at_start["vrt_prototypes.down.weight"]))
    assert torch.equal(at_start["vrt_prototypes.up.weight"], torch.zeros_like(at_start["vrt_prototypes.up.weight"]))
    assert at_start["vrt_prototypes.norm.weight"].abs().max() > 0
    assert at_start["vrt_prototypes.norm.bias"].abs().max() > 0

    model = copy.deepcopy(base.model)
    with torch.no_grad():
        model.vrt_prototypes.norm.weight.fill_(1.0)
    after = grads(model)
    new = [n for n in after if n.startswith(("vrt_prototypes.", "vrt_decoder."))]
    assert len(new) > 20 and any(n.startswith("vrt_prototypes.") for n in new)
    no_grad = [n for n in new if after[n] is None or not after[n].abs().max() > 0]
    assert no_grad == []
    # and the decoder losses flow on into the language model and the vision tower
    dead = [n for n, g in after.items() if g is None or not torch.isfinite(g).all() or not g.abs().max() > 0]
    assert dead == []


# ---- text-only inputs and the labels loss -----------------------------------------------------------------
def test_text_only_forward_and_generate(pipe):
    model, processor = pipe.model, pipe.processor
    vocab = model.text_vocab_size
    batch = processor([None], ["Say something."])
    assert "pixel_values" not in batch
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            mm_token_type_ids=batch["mm_token_type_ids"],
        )
        sequences = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4,
            min_new_tokens=4, do_sample=False,
        )
    assert out.logits.shape == (1, batch["input_ids"].shape[1], vocab)
    assert torch.isfinite(out.logits).all()
    assert sequences.shape == (1, batch["input_ids"].shape[1] + 4) and (sequences < vocab).all()

    with_vrt = batch["input_ids"].clone()
    with_vrt[0, -1] = vocab + 2
    with pytest.raises(ValueError, match="VRT ids .* but no images were given"):
        model(input_ids=with_vrt, attention_mask=batch["attention_mask"])


def test_sample_without_image_next_to_one_with(pipe, images):
    model, processor = pipe.model, pipe.processor
    vocab = model.text_vocab_size
    batch, vision, _, logits, _ = teacher_forced(
        model, processor, [images[0], None], PROMPTS, [ANSWERS[0], "Nothing here."], padding_side="right"
    )
    assert vision.codec.sample_spans() == [(0, 24), (24, 24)]
    real = batch["attention_mask"][1].bool()
    assert torch.isneginf(logits[1, real, vocab:]).all()
    assert torch.isfinite(logits[1, real, :vocab]).all() and torch.isfinite(logits[0, :, vocab:]).all()


def test_labels_give_the_next_token_cross_entropy(pipe, images):
    model, processor = pipe.model, pipe.processor
    batch = processor(images, PROMPTS, answers=ANSWERS)
    with torch.no_grad():
        vision = encode(model, batch, 2)
        ids = vision.codec.to_global(batch["input_ids"])
        labels = ids.masked_fill(~batch["answer_mask"], -100)
        out = model(
            input_ids=ids, attention_mask=batch["attention_mask"], mm_token_type_ids=batch["mm_token_type_ids"],
            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
            sample_of_image=batch["sample_of_image"], labels=labels,
        )
    assert out.loss is not None and torch.isfinite(out.loss)
    logp = out.logits[:, :-1].log_softmax(-1)
    targets = labels[:, 1:]
    keep = targets != -100
    expected = -logp[keep].gather(-1, targets[keep][:, None]).mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert out.logits.shape[-1] == model.text_vocab_size + 36


# ---- generation -------------------------------------------------------------------------------------------
def test_generation_with_and_without_cache_agree(pipe, images):
    model, processor = pipe.model, pipe.processor
    _, _, cached, cached_states = generate(model, processor, images, PROMPTS, max_new_tokens=10, do_sample=False)
    _, _, uncached, uncached_states = generate(
        model, processor, images, PROMPTS, max_new_tokens=10, do_sample=False, use_cache=False
    )
    assert torch.equal(cached, uncached)
    assert cached_states.shape == (2, 10, 128)
    assert torch.allclose(cached_states, uncached_states, atol=1e-4, rtol=0)
    assert (cached[:, -10:] >= model.text_vocab_size).any()  # the random model does write VRTs


def _assert_in_own_range(generated, spans, vocab, rows_per_sample=1):
    for row in range(generated.shape[0]):
        start, end = spans[row // rows_per_sample]
        ids = generated[row]
        vrt = ids[ids >= vocab] - vocab
        assert ((vrt >= start) & (vrt < end)).all(), (row, vrt.tolist(), (start, end))


def test_sampling_only_names_each_samples_own_patches(pipe, images):
    model, processor = pipe.model, pipe.processor
    vocab = model.text_vocab_size
    torch.manual_seed(0)
    # The perturbed prototypes (position codes included) give large VRT logits; a high temperature lets the
    # sample hold text tokens too.
    batch, vision, sequences, states = generate(
        model, processor, images, PROMPTS, max_new_tokens=24, do_sample=True, temperature=10.0, top_k=0, top_p=1.0
    )
    generated = sequences[:, batch["input_ids"].shape[1]:]
    vrts = generated[generated >= vocab]
    assert vrts.numel() >= 4 and (generated < vocab).any()
    _assert_in_own_range(generated, vision.codec.sample_spans(), vocab)
    assert states.shape[:2] == generated.shape


def test_several_return_sequences_with_sampling_and_a_multi_image_sample(pipe, cell):
    model, processor = pipe.model, pipe.processor
    vocab = model.text_vocab_size
    images = [[noise(4 * cell, 6 * cell, 5), noise(3 * cell, 3 * cell, 6)], noise(4 * cell, 4 * cell, 7)]
    prompts = ["Compare the two pictures.", "Describe it."]
    torch.manual_seed(1)
    batch, vision, sequences, states = generate(
        model, processor, images, prompts, max_new_tokens=6, do_sample=True, num_return_sequences=2,
        temperature=3.0, top_k=0,
    )
    prompt_length = batch["input_ids"].shape[1]
    assert sequences.shape == (4, prompt_length + 6) and states.shape == (4, 6, 128)
    assert torch.equal(sequences[:, :prompt_length], batch["input_ids"].repeat_interleave(2, dim=0))
    assert vision.codec.sample_spans() == [(0, 24 + 9), (33, 33 + 16)]
    _assert_in_own_range(sequences[:, prompt_length:], vision.codec.sample_spans(), vocab, rows_per_sample=2)
    # the prefill state of every copy equals the greedy run's (the copies see the right images and positions)
    _, _, _, greedy_states = generate(model, processor, images, prompts, max_new_tokens=1, do_sample=False)
    assert torch.allclose(states[:, 0], greedy_states[:, 0].repeat_interleave(2, dim=0), atol=1e-4, rtol=0)


def test_beam_search_is_refused(pipe, images):
    with pytest.raises(NotImplementedError, match="beam search"):
        generate(pipe.model, pipe.processor, images[:1], PROMPTS[:1], max_new_tokens=2, num_beams=2)


# ---- save / load ------------------------------------------------------------------------------------------
def test_save_and_load_give_identical_logits_and_decodings(pipe, images, tmp_path):
    model, processor = pipe.model, pipe.processor
    model.save_pretrained(tmp_path)
    loaded = PaDTForConditionalGeneration.from_pretrained(tmp_path).eval()  # opens either backbone's folder
    assert type(loaded) is type(model)
    batch, vision, ids, logits, states = teacher_forced(model, processor, images, PROMPTS, ANSWERS)
    _, loaded_vision, _, loaded_logits, loaded_states = teacher_forced(loaded, processor, images, PROMPTS, ANSWERS)
    real = batch["attention_mask"].bool()
    assert torch.equal(logits[real], loaded_logits[real])
    ours = decode_answer_objects(model, vision, ids, states, batch["answer_mask"])
    theirs = decode_answer_objects(loaded, loaded_vision, ids, loaded_states, batch["answer_mask"])
    assert torch.equal(ours.boxes, theirs.boxes) and torch.equal(ours.score_logits, theirs.score_logits)
    assert torch.equal(ours.mask_logits, theirs.mask_logits)


def test_official_patch_order_round_trips_through_config_json(images, backbone, tmp_path):
    if backbone != "qwen2.5-vl":
        with pytest.raises(ValueError, match="Qwen3-VL has no window attention"):
            tiny_pipeline(seed=5, patch_order="official", backbone=backbone)
        return
    official = tiny_pipeline(seed=5, patch_order="official")
    official.model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["patch_order"] == "official" and saved["model_type"] == "padt_qwen2_5_vl"
    loaded = PaDTForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.patch_order == "official"
    batch = official.processor(images[0], PROMPTS[0])
    with torch.no_grad():
        memory = encode(loaded, batch, 1).memory
        tower = loaded.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    assert torch.equal(memory.high_res, tower.last_hidden_state)  # window order, as the released checkpoints


# ---- transformers is left alone ---------------------------------------------------------------------------
def test_importing_padt_patches_nothing_in_transformers(pipe, images):
    classes = {
        modeling_qwen2_5_vl: ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VisionTransformerPretrainedModel"),
        modeling_qwen3_vl: ("Qwen3VLForConditionalGeneration", "Qwen3VLVisionModel", "Qwen3VLTextModel"),
    }
    for module, names in classes.items():
        for name in names:
            forward = getattr(module, name).forward
            assert forward.__module__ == module.__name__ and forward.__qualname__ == f"{name}.forward"
            assert inspect.getsourcefile(inspect.unwrap(forward)) == inspect.getsourcefile(module)
    vision_class = {PaDTForConditionalGeneration: modeling_qwen2_5_vl.Qwen2_5_VisionTransformerPretrainedModel,
                    PaDTQwen3VLForConditionalGeneration: modeling_qwen3_vl.Qwen3VLVisionModel}[type(pipe.model)]
    assert type(pipe.model.model.visual) is vision_class
    assert PaDTForConditionalGeneration.forward is not transformers.Qwen2_5_VLForConditionalGeneration.forward


#: The plain backbone of each PaDT model class, with its configuration class.
VANILLA = {
    PaDTForConditionalGeneration: (transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLConfig),
    PaDTQwen3VLForConditionalGeneration: (transformers.Qwen3VLForConditionalGeneration, transformers.Qwen3VLConfig),
}


def test_vanilla_qwen_runs_and_agrees_with_padt_on_inputs_without_vrts(pipe, images):
    """The plain backbone with the same weights, running its own vision tower (and, for Qwen3-VL, its own
    DeepStack and interleaved M-RoPE), gives PaDT's text logits: PaDT only adds, it replaces nothing."""
    model, processor = pipe.model, pipe.processor
    padt_keys = {f.name for f in dataclasses.fields(PaDTSettings)} | {"model_type", "architectures"}
    settings = {k: v for k, v in model.config.to_dict().items() if k not in padt_keys}
    model_class, config_class = VANILLA[type(model)]
    vanilla = model_class(config_class(**settings)).eval()
    missing, unexpected = vanilla.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and unexpected and all(k.startswith(("vrt_prototypes.", "vrt_decoder.")) for k in unexpected)
    batch = processor(images, PROMPTS)
    inputs = dict(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        mm_token_type_ids=batch["mm_token_type_ids"], pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
    )
    with torch.no_grad():
        base = vanilla(**inputs).logits
        ours = model(**inputs, sample_of_image=batch["sample_of_image"]).logits
    vocab = model.text_vocab_size
    assert base.shape[-1] == vocab and ours.shape[-1] == vocab + 36
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real][:, :vocab], base[real], atol=1e-5, rtol=0)
    # Greedy generation agrees too (cache, positions and, for Qwen3-VL, DeepStack at the prefill only), once
    # PaDT may name no patch (the plain model has no VRT logits).
    vision = encode(model, batch, 2)
    vision.vrt_mask = torch.zeros_like(vision.vrt_mask)
    with torch.no_grad():
        theirs = vanilla.generate(**inputs, max_new_tokens=6, do_sample=False)
        ours = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            mm_token_type_ids=batch["mm_token_type_ids"], vision=vision, max_new_tokens=6, do_sample=False,
        )
    assert theirs.shape[1] > batch["input_ids"].shape[1] and torch.equal(ours, theirs)
    if vision.deepstack:  # the agreement needs the DeepStack features: without them the text logits move
        vision.deepstack = ()
        with torch.no_grad():
            without = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            mm_token_type_ids=batch["mm_token_type_ids"], vision=vision).logits
        assert not torch.allclose(without[real][:, :vocab], base[real], atol=1e-3, rtol=0)
