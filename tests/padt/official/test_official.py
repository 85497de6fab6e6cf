"""Checkpoints of the official PaDT release: config translation, the weight-name map against the real 3B/7B
architectures, strict loading of a tiny official-layout folder, the converter round trip, and the patch order."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from padt import PaDTForConditionalGeneration, PaDTPipeline
from padt.cli import main
from padt.official.checkpoint import is_official_layout, translate_config
from padt.official.weights import decoder_name_map, model_weight_shapes, official_to_ours

_spec = importlib.util.spec_from_file_location("padt_official_fixture", Path(__file__).with_name("official_fixture.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

ANSWER = 'The "red cat" refers to <|VRT_0|><|VRT_13|><|VRT_20|><|VRT_21|> in this image.'


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("official") / "PaDT_tiny"
    fx.write_tiny_official_checkpoint(directory, seed=1)
    return directory


@pytest.fixture(scope="module")
def image() -> Image.Image:
    # 224 x 168: an 8 x 6 merged grid over 2 x 2 windows of 4 x 4 cells, so window order != raster order.
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 168, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def official_pipe(official_dir) -> PaDTPipeline:
    return PaDTPipeline.from_pretrained(official_dir)


def _file_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _same_decodings(a, b) -> None:
    assert a.text == b.text and len(a.objects) == len(b.objects) > 0
    for x, y in zip(a.objects, b.objects, strict=True):
        assert x.box == y.box and x.score == y.score and np.array_equal(x.mask, y.mask)


# ---- config --------------------------------------------------------------------------------------------------
def test_3b_config_translates_to_the_official_model():
    config = translate_config(fx.QWEN2_5_VL_3B_OFFICIAL)
    assert config.patch_order == "official" and config.vrt_proj_rank == 64 and config.use_visual_prototype_projection
    text, vision = config.text_config, config.vision_config
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, config.tie_word_embeddings) == (
        151936, 2048, 36, True)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24] and text.rope_parameters["rope_theta"] == 1e6
    assert (vision.depth, vision.hidden_size, vision.fullatt_block_indexes) == (32, 1280, [7, 15, 23, 31])
    assert config.image_token_id == 151655
    decoder = config.decoder_config
    assert (decoder["hidden_size"], decoder["num_attention_heads"], decoder["intermediate_size"]) == (1280, 16, 3420)
    assert (decoder["llm_hidden_size"], decoder["num_low_res_blocks"], decoder["num_high_res_blocks"]) == (2048, 1, 2)
    assert decoder["memory_position_encoding"] is False


def test_bad_official_decoder_configs_are_named():
    base = fx.QWEN2_5_VL_3B_OFFICIAL
    with pytest.raises(ValueError, match=r"unknown keys in the official vl_decoder config: \['depth'\]"):
        translate_config({**base, "vl_decoder": {**base["vl_decoder"], "depth": 3}})
    with pytest.raises(ValueError, match="use_mask_loss=false"):
        translate_config({**base, "vl_decoder": {**base["vl_decoder"], "use_mask_loss": False}})
    with pytest.raises(ValueError, match="no 'vl_decoder'"):
        translate_config({k: v for k, v in base.items() if k != "vl_decoder"})


# ---- the name map against the real architectures ----------------------------------------------------------
@pytest.mark.parametrize(
    "official, layers, tied",
    [(fx.QWEN2_5_VL_3B_OFFICIAL, 36, True), (fx.QWEN2_5_VL_7B_OFFICIAL, 28, False)],
    ids=["3B", "7B"],
)
def test_map_is_one_to_one_onto_the_real_model_with_equal_shapes(official, layers, tied):
    names = fx.official_weight_shapes(official)  # the official checkpoint's tensors, by the documented rule
    assert sum(n.startswith("model.layers.") for n in names) == 12 * layers
    assert sum(n.startswith("visual.blocks.") for n in names) == 12 * 32
    # decoder: 2 embeddings, input projection 5, three blocks of (6 norms, 3 attentions x 4 linears, MLP 2 linears),
    # high-res norm, box MLP 3 linears, score linear, mask up-scaling 3 + 2, mask-token MLP 3 linears
    assert sum(n.startswith("vl_decoder.") for n in names) == 2 + 5 + 3 * (6 + 3 * 8 + 4) + 1 + 6 + 2 + 5 + 6
    assert ("lm_head.weight" in names) is not tied
    config = translate_config(official)
    ours, aliases = model_weight_shapes(config, PaDTForConditionalGeneration)  # on the meta device: no memory
    assert aliases == ({"lm_head.weight": "model.language_model.embed_tokens.weight"} if tied else {})
    decoder_names = decoder_name_map(config.decoder_config)
    mapped = {name: official_to_ours(name, decoder_names) for name in names}
    assert len(set(mapped.values())) == len(mapped), "two official names map onto one of ours"
    assert set(mapped.values()) == set(ours)
    for name, shape in names.items():
        assert ours[mapped[name]] == shape, name


@pytest.mark.parametrize(
    "official, ours",
    [
        ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight"),
        ("model.layers.35.mlp.down_proj.weight", "model.language_model.layers.35.mlp.down_proj.weight"),
        ("model.norm.weight", "model.language_model.norm.weight"),
        ("visual.blocks.31.attn.qkv.bias", "model.visual.blocks.31.attn.qkv.bias"),
        ("visual.merger.mlp.2.weight", "model.visual.merger.mlp.2.weight"),
        ("vis_norm.bias", "vrt_prototypes.norm.bias"),
        ("vis_proj.0.weight", "vrt_prototypes.down.weight"),
        ("vis_proj.1.weight", "vrt_prototypes.up.weight"),
        ("vl_decoder.bbox_score_mask_tokens.weight", "vrt_decoder.task_tokens.weight"),
        ("vl_decoder.input_projection.3.bias", "vrt_decoder.input_projection.mlp.layers.1.bias"),
        ("vl_decoder.low_res_transformer.norm3.weight", "vrt_decoder.low_res_blocks.0.cross_attn_memory_norm.weight"),
        (
            "vl_decoder.high_res_transformer2.cross_attn_image_to_query.proj.bias",
            "vrt_decoder.high_res_blocks.1.memory_update.out_proj.bias",
        ),
        ("vl_decoder.high_res_transformer1.mlp.2.weight", "vrt_decoder.high_res_blocks.0.mlp.layers.1.weight"),
        ("vl_decoder.bbox_prediction.4.bias", "vrt_decoder.box_head.layers.2.bias"),
        ("vl_decoder.mask_output_upscaling1.1.weight", "vrt_decoder.mask_upscaler.stages.0.norm.weight"),
        ("vl_decoder.mask_output_upscaling2.0.weight", "vrt_decoder.mask_upscaler.stages.1.fc.weight"),
        ("vl_decoder.mask_output_mlp.4.weight", "vrt_decoder.mask_token_mlp.layers.2.weight"),
    ],
)
def test_map_spot_checks(official, ours):
    config = translate_config(fx.QWEN2_5_VL_3B_OFFICIAL)
    assert official_to_ours(official, decoder_name_map(config.decoder_config)) == ours


# ---- loading the tiny official folder ---------------------------------------------------------------------
def test_official_folder_loads_every_tensor_into_its_place(official_dir, official_pipe):
    assert is_official_layout(official_dir)
    model = PaDTForConditionalGeneration.from_pretrained(official_dir)
    assert model.config.patch_order == "official" and official_pipe.model.config.patch_order == "official"
    assert model.generation_config.repetition_penalty == 1.05  # the folder's generation config, not a default
    file = _file_tensors(official_dir)
    state = model.state_dict()
    decoder_names = decoder_name_map(model.config.decoder_config)
    assert len(file) == len(state) - 1  # everything but the tied lm_head
    for key, tensor in file.items():
        assert torch.equal(state[official_to_ours(key, decoder_names)], tensor), key
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    processor = official_pipe.processor
    assert processor.vrt_id_start == model.config.text_config.vocab_size == len(processor.tokenizer) + 16
    assert (processor.min_pixels, processor.max_pixels) == (fx.TINY_MIN_PIXELS, fx.TINY_MAX_PIXELS)


def _rewrite(directory: Path, change) -> dict[str, torch.Tensor]:
    """Write the tiny official checkpoint to ``directory`` with ``change(tensors)`` applied; returns the tensors."""
    weights = fx.random_official_weights(fx.tiny_official_config(fx.build_tiny_tokenizer()))
    change(weights)
    fx.write_tiny_official_checkpoint(directory, weights=weights)
    return weights


def test_unknown_missing_and_misshapen_keys_are_errors_that_name_them(tmp_path):
    cases = {
        "extra": (lambda w: w.update({"vl_decoder.extra_head.weight": torch.zeros(2)}),
                  r"unexpected key 'vl_decoder\.extra_head\.weight'"),
        "stranger": (lambda w: w.update({"text_head.weight": torch.zeros(2)}), r"unexpected key 'text_head\.weight'"),
        "llm": (lambda w: w.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(2)}),
                r"'model\.layers\.9\.mlp\.up_proj\.weight': it maps to 'model\.language_model\.layers\.9"),
        "missing": (lambda w: w.pop("vl_decoder.score_prediction.bias"),
                    r"missing key 'vl_decoder\.score_prediction\.bias' \(our 'vrt_decoder\.score_head\.bias'\)"),
        "shape": (lambda w: w.update({"vis_proj.0.weight": torch.zeros(32, 128)}),
                  r"'vis_proj\.0\.weight' has shape \[32, 128\], the model expects \[64, 128\]"),
    }
    for name, (change, message) in cases.items():
        _rewrite(tmp_path / name, change)
        with pytest.raises(ValueError, match=message):
            PaDTForConditionalGeneration.from_pretrained(tmp_path / name)
        assert main(["convert-checkpoint", str(tmp_path / name), str(tmp_path / f"{name}-out")]) == 2
        assert not (tmp_path / f"{name}-out").exists()  # nothing is written before every check passed


def test_tied_lm_head_saved_anyway_must_equal_the_embeddings(tmp_path):
    written = _rewrite(tmp_path / "same", lambda w: w.update({"lm_head.weight": w["model.embed_tokens.weight"] * 1}))
    model = PaDTForConditionalGeneration.from_pretrained(tmp_path / "same")
    assert torch.equal(model.lm_head.weight, written["lm_head.weight"])
    _rewrite(tmp_path / "other", lambda w: w.update({"lm_head.weight": w["model.embed_tokens.weight"] + 1}))
    with pytest.raises(ValueError, match=r"'lm_head\.weight' differs from 'model\.embed_tokens\.weight'"):
        PaDTForConditionalGeneration.from_pretrained(tmp_path / "other")


def test_tokenizer_saved_by_the_official_processor_loses_its_vrt_tokens(tmp_path, official_pipe, image):
    fx.write_tiny_official_checkpoint(tmp_path / "used", seed=1, vrt_tokens_in_tokenizer=40)
    with open(tmp_path / "used" / "tokenizer.json") as handle:
        assert any(t["content"] == "<|VRT_39|>" for t in json.load(handle)["added_tokens"])
    pipe = PaDTPipeline.from_pretrained(tmp_path / "used")
    vocab = pipe.processor.vrt_id_start
    assert len(pipe.processor.tokenizer) == vocab  # padded with <|empty_token_i|>, no VRT token left
    assert pipe.processor.tokenizer.convert_tokens_to_ids("<|empty_token_0|>") == vocab - 16
    _same_decodings(pipe.decode_answer(image, ANSWER), official_pipe.decode_answer(image, ANSWER))


# ---- conversion -----------------------------------------------------------------------------------------------
def test_convert_checkpoint_round_trip_gives_identical_weights_and_decodings(
    official_dir, official_pipe, image, tmp_path
):
    out = tmp_path / "converted"
    assert main(["convert-checkpoint", str(official_dir), str(out)]) == 0
    assert not is_official_layout(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["patch_order"] == "official" and saved["model_type"] == "padt_qwen2_5_vl"
    names = set(_file_tensors(out))
    assert all(n.startswith(("model.language_model.", "model.visual.", "vrt_")) for n in names)
    converted = PaDTPipeline.from_pretrained(out)
    assert converted.model.config.patch_order == "official"
    ours, theirs = official_pipe.model.state_dict(), converted.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert converted.processor.vrt_id_start == official_pipe.processor.vrt_id_start
    assert converted.model.generation_config.repetition_penalty == 1.05
    _same_decodings(official_pipe.decode_answer(image, ANSWER), converted.decode_answer(image, ANSWER))
    # a second conversion into the same (now full) folder is refused
    assert main(["convert-checkpoint", str(official_dir), str(out)]) == 2


def test_convert_checkpoint_refuses_a_folder_of_our_layout(tmp_path, capsys):
    from padt.testing import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "ours")
    assert main(["convert-checkpoint", str(tmp_path / "ours"), str(tmp_path / "out")]) == 2
    assert "not in the official PaDT layout" in capsys.readouterr().err


# ---- the patch order --------------------------------------------------------------------------------------------
def test_official_order_is_used_and_matters(official_pipe, image):
    """The same weights decoded in raster order give other masks: the loaded model really runs the official order."""
    config = official_pipe.model.config.to_dict()
    config["patch_order"] = "raster"
    raster_model = PaDTForConditionalGeneration(type(official_pipe.model.config).from_dict(config))
    raster_model.load_state_dict(official_pipe.model.state_dict())
    raster_pipe = PaDTPipeline(raster_model.eval(), official_pipe.processor)
    official = official_pipe.decode_answer(image, ANSWER).objects[0]
    raster = raster_pipe.decode_answer(image, ANSWER).objects[0]
    for mask in (official.mask, raster.mask):
        assert 0.02 < mask.mean() < 0.98  # masks with both values: the comparison means something
    assert np.mean(official.mask != raster.mask) > 0.05
    assert official.box != raster.box


def test_longest_side_follows_the_official_demo():
    from padt.vision.geometry import GridSpec

    spec = GridSpec(longest_side=644)
    assert spec.input_size(966, 1288) == (483, 644)
    assert spec.input_size(50, 100) == (322, 644)  # the demo scales small images up too
    assert spec.input_size(644, 300) == (644, 300) and GridSpec().input_size(966, 1288) == (966, 1288)


def test_official_folders_load_with_the_demo_longest_side(official_dir, official_pipe, tmp_path):
    assert official_pipe.processor.longest_side == 644
    official_pipe.processor.save_pretrained(tmp_path)
    from padt import PaDTProcessor

    assert PaDTProcessor.from_pretrained(tmp_path).longest_side == 644  # saved with the processor
    assert PaDTPipeline.from_pretrained(official_dir, longest_side=None).processor.longest_side is None


@pytest.mark.parametrize("size", [(200, 300), (700, 930)])  # (height, width): smaller and larger than 644 px
def test_longest_side_results_equal_the_resized_image_scaled_back(official_pipe, size):
    height, width = size
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8))
    scale = 644 / max(height, width)
    resized = photo.resize((int(width * scale), int(height * scale)), Image.Resampling.LANCZOS)
    ours = official_pipe.decode_answer(photo, ANSWER)
    manual = official_pipe.decode_answer(resized, ANSWER)
    assert ours.image_sizes == [(height, width)] and ours.geometries[0].resized_hw == manual.geometries[0].resized_hw
    (a,), (b,) = ours.objects, manual.objects
    assert a.patches == b.patches and abs(a.score - b.score) < 1e-6
    back = np.array(b.box) * np.array([width / resized.width, height / resized.height] * 2)
    assert np.allclose(a.box, back, atol=1e-3)
    assert a.mask.shape == (height, width)
    scaled_mask = np.asarray(Image.fromarray(b.mask).resize((width, height), Image.Resampling.NEAREST))
    # the same mask logits, resampled once to the original size vs twice (to the resized image, then back)
    assert a.mask.any() and (a.mask == scaled_mask).mean() > 0.95
