"""Starting from a plain Qwen3-VL folder: ``padt convert --model`` writes records on its 32-px cells, ``padt train
--model`` adds the Qwen3-VL PaDT modules (the backbone's weights kept), every trainable parameter learns, and the
trained folder loads as a Qwen3-VL PaDT pipeline."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from padt.backbones import QWEN3_VL
from padt.cli import main as padt_main
from padt.configuration import PaDTSettings
from padt.datasets.records import read_jsonl
from padt.datasets.training import GroundingCollator, GroundingDataset
from padt.losses import PaDTCriterion
from padt.modeling import PaDTQwen3VLForConditionalGeneration
from padt.pipeline import PaDTPipeline
from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS, parameters_without_gradient, tiny_config
from padt.text.prompts import rec_prompt
from padt.text.qwen_tokenizer import build_tiny_tokenizer
from padt.train.config import TrainConfig
from padt.train.loop import train
from padt.train.objective import PaDTObjective
from padt.train.setup import load_starting_model

#: What a plain backbone's config.json does not have.
PADT_KEYS = {f.name for f in dataclasses.fields(PaDTSettings)} | {"model_type", "architectures"}


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory) -> Path:
    """A plain (random, tiny) Qwen3-VL folder as the hub gives one: config, safetensors, tokenizer, preprocessor."""
    folder = tmp_path_factory.mktemp("qwen3_vl")
    settings = {k: v for k, v in tiny_config(backbone="qwen3-vl").to_dict().items() if k not in PADT_KEYS}
    torch.manual_seed(0)
    transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(**settings)).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    Qwen2VLImageProcessorPil(
        min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS, patch_size=16, merge_size=2,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    ).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen3_vl"
    return folder


@pytest.fixture(scope="module")
def qwen3_records(qwen3_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qwen3_records")
    code = padt_main(["convert", "synthetic", "--out", str(out), "--images", "8", "--seed", "2",
                      "--model", str(qwen3_folder), "--image-size", "128", "128"])
    assert code == 0
    return out


def test_convert_writes_records_on_the_folders_32_px_cells(qwen3_records) -> None:
    records = read_jsonl(qwen3_records / "records_rec_train.jsonl")
    assert records and all(r.grid.patch_size == 16 and r.grid.merge_size == 2 for r in records)
    assert {r.grid.max_pixels for r in records} == {TINY_MAX_PIXELS}
    assert records[0].geometry().merged_grid_hw == (4, 4)  # 128 px / 32-px cells


def test_train_adds_the_qwen3_padt_modules_and_keeps_the_backbone(qwen3_folder, qwen3_records, tmp_path) -> None:
    config = TrainConfig(records=[str(qwen3_records / "records_rec_train.jsonl")], images=str(qwen3_records / "images"),
                         output_dir=str(tmp_path / "run"), model=str(qwen3_folder), max_steps=2, batch_size=2)
    model, processor = load_starting_model(config)
    assert type(model) is PaDTQwen3VLForConditionalGeneration and model.config.backbone is QWEN3_VL
    assert processor.patch_size == 16 and processor.max_pixels == TINY_MAX_PIXELS
    assert processor.chat_template == build_tiny_tokenizer().chat_template  # the folder's own template
    saved = load_file(qwen3_folder / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    assert torch.equal(model.vrt_prototypes.norm.weight, torch.zeros_like(model.vrt_prototypes.norm.weight))

    final = train(config)
    assert json.loads((final / "config.json").read_text())["model_type"] == "padt_qwen3_vl"
    pipe = PaDTPipeline.from_pretrained(final)
    assert type(pipe.model) is PaDTQwen3VLForConditionalGeneration
    image = qwen3_records / "images" / read_jsonl(qwen3_records / "records_rec_train.jsonl")[0].image
    out = pipe.refer(str(image), "the red circle", max_new_tokens=4)
    assert out.image_sizes == [(128, 128)]
    assert pipe.processor(str(image), rec_prompt("x"))["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_every_trainable_parameter_gets_a_gradient(qwen3_folder, qwen3_records, tmp_path) -> None:
    config = TrainConfig(records=[str(qwen3_records / "records_rec_train.jsonl")], images=str(qwen3_records / "images"),
                         output_dir=str(tmp_path / "run"), model=str(qwen3_folder), max_steps=1)
    model, processor = load_starting_model(config)
    records = read_jsonl(qwen3_records / "records_rec_train.jsonl")
    dataset = GroundingDataset(records, qwen3_records / "images", processor, mask_scale=4)
    batch = GroundingCollator(processor, 4)([dataset[i] for i in range(3)])
    objective = PaDTObjective(model, PaDTCriterion())
    # DeepStack's merger and the vision tower's learned positions are among them: they must learn too.
    assert any("deepstack_merger_list" in name for name, _ in objective.named_parameters())
    assert parameters_without_gradient(objective, batch) == []
