"""PaDTDecoderConfig: defaults, derived sizes, JSON round trip and validation messages."""

import json

import pytest

from padt.decoders import PaDTDecoderConfig


def test_defaults_match_the_released_decoder():
    cfg = PaDTDecoderConfig()
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (1280, 16, 3420)
    assert cfg.head_dim == 80  # the Qwen2.5-VL vision head dim, so its rotary tables apply
    assert cfg.mask_subpixels == 4  # 2 stages of 2x2
    assert cfg.mask_embedding_dim == 80


def test_round_trip_through_json():
    cfg = PaDTDecoderConfig(
        hidden_size=64,
        num_attention_heads=4,
        llm_hidden_size=96,
        mask_upscale_stages=1,
        num_high_res_blocks=3,
        attn_implementation="auto",
    )
    again = PaDTDecoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.mask_subpixels == 2 and again.mask_embedding_dim == 16


def test_without_mask_head_has_no_mask_sizes():
    cfg = PaDTDecoderConfig(mask_head=False, mask_upscale_stages=0)
    assert cfg.mask_subpixels == 0 and cfg.mask_embedding_dim == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "divisible by num_attention_heads"),
        ({"hidden_size": 36, "num_attention_heads": 4}, "must be even"),
        ({"hidden_size": 40, "num_attention_heads": 4, "mask_upscale_stages": 2}, "divisible by 4"),
        ({"mask_upscale_stages": 0}, "mask_upscale_stages must be >= 1"),
        ({"attn_implementation": "eager"}, "attn_implementation must be one of"),
        ({"num_low_res_blocks": 0, "num_high_res_blocks": 0}, "at least one two-way block"),
        ({"hidden_size": 0}, "positive integer"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
    ],
)
def test_validation_errors_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PaDTDecoderConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown PaDTDecoderConfig keys: \\['num_heads'\\]"):
        PaDTDecoderConfig.from_dict({"num_heads": 16})
