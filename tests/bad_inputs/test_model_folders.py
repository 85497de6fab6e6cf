"""Damaged or wrong model folders: one line that names the folder, the file and the problem (exit 2 on the
command line), never a traceback or a model with weights re-initialised at random."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from padt import PaDTPipeline
from padt.cli import main
from padt.configuration import PaDTConfig
from padt.model_folder import PADT_MODEL_TYPES
from padt.testing import tiny_pipeline


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "model"
    tiny_pipeline(seed=0).save_pretrained(path)
    return path


@pytest.fixture
def folder(good, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(good, copy)
    return copy


def predict_fails(folder: Path, tmp_path: Path, capsys) -> str:
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((56, 56, 3), dtype=np.uint8)).save(image)
    code = main(["predict", "--model", str(folder), "--image", str(image), "--refer", "the dot"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_the_model_types_are_the_configurations_own():
    from padt.configuration import PaDTQwen3VLConfig

    assert PADT_MODEL_TYPES == (PaDTConfig.model_type, PaDTQwen3VLConfig.model_type)


def test_truncated_safetensors(folder, tmp_path, capsys):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = predict_fails(folder, tmp_path, capsys)
    assert str(weights) in err and "not a readable safetensors file (truncated or corrupt?)" in err


def test_missing_weights(folder, tmp_path, capsys):
    (folder / "model.safetensors").unlink()
    err = predict_fails(folder, tmp_path, capsys)
    assert f"{folder} has no weights: expected model.safetensors or model.safetensors.index.json" in err


def test_pickled_weights_only_are_named(folder):
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"found pytorch_model\.bin: padt reads safetensors only"):
        PaDTPipeline.from_pretrained(folder)


def test_corrupt_config_json(folder, tmp_path, capsys):
    (folder / "config.json").write_text('{"model_type": "padt_qwen2_5_vl",')
    err = predict_fails(folder, tmp_path, capsys)
    assert f"{folder / 'config.json'} is not valid JSON" in err


def test_missing_tokenizer_files(folder, tmp_path, capsys):
    (folder / "tokenizer.json").unlink()
    err = predict_fails(folder, tmp_path, capsys)
    assert f"{folder} has no tokenizer files (expected tokenizer.json or vocab.json)" in err


def test_a_plain_qwen_folder_is_for_padt_train(folder, tmp_path, capsys):
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "qwen2_5_vl"
    (folder / "config.json").write_text(json.dumps(config))
    err = predict_fails(folder, tmp_path, capsys)
    assert "is a plain qwen2_5_vl folder, not a PaDT model" in err and f"padt train --model {folder}" in err


def test_a_text_only_folder_is_refused(folder):
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    expected = r"model_type 'qwen2': not a PaDT model \(expected one of 'padt_qwen2_5_vl', 'padt_qwen3_vl'\)"
    with pytest.raises(ValueError, match=expected):
        PaDTPipeline.from_pretrained(folder)


def test_padt_config_without_padt_weights_is_refused(folder):
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(folder / "model.safetensors").items() if not k.startswith("vrt_")}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="the weights have no PaDT modules"):
        PaDTPipeline.from_pretrained(folder)


def test_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PaDTPipeline.from_pretrained(tmp_path / "nowhere")
