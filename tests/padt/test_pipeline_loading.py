"""PaDTPipeline.from_pretrained: loading options reach transformers, unknown keywords fail, the answer length and
longest side come from the folder, and pipe.to moves the model."""

from __future__ import annotations

import json

import pytest
import torch

from padt import PaDTPipeline
from padt.pipeline import DEFAULT_MAX_NEW_TOKENS, TruncatedAnswerWarning
from padt.testing import tiny_pipeline
from padt.text.prompts import rec_prompt


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    tiny_pipeline(seed=2).save_pretrained(path)
    return path


def test_model_kwargs_reach_the_models_from_pretrained(folder):
    pipe = PaDTPipeline.from_pretrained(folder, model_kwargs={"attn_implementation": "eager"})
    assert pipe.model.config._attn_implementation == "eager"
    assert PaDTPipeline.from_pretrained(folder).model.config._attn_implementation != "eager"
    assert PaDTPipeline.from_pretrained(folder, dtype=torch.bfloat16).model.dtype == torch.bfloat16


def test_unknown_keywords_are_named(folder):
    with pytest.raises(TypeError, match=r"unknown keyword arguments \['attn_implementation'\].*model_kwargs"):
        PaDTPipeline.from_pretrained(folder, attn_implementation="eager")
    with pytest.raises(ValueError, match="either device= or model_kwargs"):
        PaDTPipeline.from_pretrained(folder, device="cpu", model_kwargs={"device_map": "cpu"})


def test_answer_length_follows_the_generation_config_else_1024(folder, tmp_path):
    assert DEFAULT_MAX_NEW_TOKENS == 1024
    assert PaDTPipeline.from_pretrained(folder).max_new_tokens == 1024  # the tiny folder sets none
    assert PaDTPipeline.from_pretrained(folder, max_new_tokens=7).max_new_tokens == 7
    pipe = tiny_pipeline(seed=2)
    pipe.model.generation_config.max_new_tokens = 300
    pipe.save_pretrained(tmp_path / "long")
    assert json.loads((tmp_path / "long" / "generation_config.json").read_text())["max_new_tokens"] == 300
    assert PaDTPipeline.from_pretrained(tmp_path / "long").max_new_tokens == 300


def test_longest_side_is_saved_with_the_processor_and_can_be_overridden(folder, tmp_path):
    assert PaDTPipeline.from_pretrained(folder).processor.longest_side is None
    pipe = PaDTPipeline.from_pretrained(folder, longest_side=300)
    assert pipe.processor.longest_side == 300 and pipe.processor.grid_spec.input_size(150, 100) == (300, 200)
    pipe.save_pretrained(tmp_path / "saved")
    assert PaDTPipeline.from_pretrained(tmp_path / "saved").processor.longest_side == 300
    with pytest.raises(ValueError, match="longest_side must be a positive int or None"):
        PaDTPipeline.from_pretrained(folder, longest_side=0)


def test_to_moves_the_model_and_returns_the_pipeline(folder):
    pipe = PaDTPipeline.from_pretrained(folder)
    assert pipe.to("cpu") is pipe and pipe.model.device.type == "cpu"


def test_a_cut_off_answer_is_flagged_and_warned_about():
    pipe = tiny_pipeline(seed=2, max_new_tokens=3)  # a random model does not finish in 3 tokens
    image = torch.zeros(56, 56, 3, dtype=torch.uint8).numpy()
    with pytest.warns(TruncatedAnswerWarning, match="1 of 1 answers reached max_new_tokens=3"):
        (out,) = pipe.ask([image], [rec_prompt("the dot")])
    assert out.truncated and any("cut off" in p for p in out.problems)
    assert out.to_dict()["truncated"] is True
