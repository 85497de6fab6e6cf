"""Layer-wise attention pooling of VRT states (``PaDTConfig.vrt_state_layers``): off changes nothing, on it starts
as the last layer, trains every new parameter, decodes the same from generation and teacher forcing, and
round-trips through save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from padt.datasets.records import read_jsonl
from padt.datasets.training import GroundingCollator, GroundingDataset
from padt.decoders import LayerAttentionPooling
from padt.losses import PaDTCriterion
from padt.pipeline import PaDTPipeline
from padt.testing import forced_answer_kwargs, parameters_without_gradient, tiny_config, tiny_pipeline
from padt.text.prompts import ovd_prompt
from padt.train.objective import PaDTObjective

PROMPT = ovd_prompt(["circle", "square"])
ANSWER = 'There are 2 "circle" (<|VRT_0|><|VRT_1|><|VRT_7|>, <|VRT_23|>) and 1 "square" (<|VRT_5|><|VRT_5|>).'


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (112, 168, 3), dtype=np.uint8))


def _boxes(output) -> torch.Tensor:
    return torch.tensor([obj.box for obj in output.objects])


def _pooling_pipeline(perturb: bool, backbone: str = "qwen2.5-vl") -> PaDTPipeline:
    pipe = tiny_pipeline(seed=2, vrt_state_layers=[0, 1], backbone=backbone)
    if perturb:  # off the zero start, so that the pooled layers change what the decoder reads
        gen = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for param in pipe.model.vrt_state_pooling.parameters():
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
    return pipe


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"vrt_state_layers must be distinct layer indices in \[0, 2\)"):
        tiny_config(vrt_state_layers=[2])
    with pytest.raises(ValueError, match="vrt_state_layers must be distinct"):
        tiny_config(vrt_state_layers=[0, 0])
    with pytest.raises(ValueError, match="vrt_state_layers must be distinct"):
        tiny_config(vrt_state_layers=[])
    assert tiny_config().vrt_state_layers is None
    with pytest.raises(ValueError, match="expects 3 states per VRT"):
        LayerAttentionPooling(16, 2)(torch.zeros(4, 2, 16))


def test_off_adds_nothing_and_on_starts_as_the_last_layer(image) -> None:
    plain = tiny_pipeline(seed=2)
    assert plain.model.vrt_state_pooling is None
    assert not any("vrt_state_pooling" in name for name in plain.model.state_dict())
    pooled = _pooling_pipeline(perturb=False)
    missing, unexpected = pooled.model.load_state_dict(plain.model.state_dict(), strict=False)
    assert unexpected == [] and missing and all(name.startswith("vrt_state_pooling.") for name in missing)
    kwargs = forced_answer_kwargs(plain, [image], [PROMPT], [ANSWER], [0])
    expected = plain.ask([image], [PROMPT], **kwargs)[0]
    got = pooled.ask([image], [PROMPT], **kwargs)[0]
    assert len(got.objects) == 3
    torch.testing.assert_close(_boxes(got), _boxes(expected), rtol=0, atol=0)


def test_generation_and_teacher_forcing_decode_the_same_objects(image) -> None:
    pipe = _pooling_pipeline(perturb=True)
    generated = pipe.ask([image], [PROMPT], **forced_answer_kwargs(pipe, [image], [PROMPT], [ANSWER], [0]))[0]
    forced = pipe.decode_answer(image, ANSWER, PROMPT)
    torch.testing.assert_close(_boxes(generated), _boxes(forced), rtol=1e-4, atol=1e-5)
    scores = torch.tensor([o.score for o in generated.objects])
    torch.testing.assert_close(scores, torch.tensor([o.score for o in forced.objects]), rtol=1e-4, atol=1e-5)
    # The pooled layers matter: the last layer alone decodes other boxes.
    with torch.no_grad():
        pipe.model.vrt_state_pooling.out.weight.zero_()
    assert not torch.allclose(_boxes(pipe.decode_answer(image, ANSWER, PROMPT)), _boxes(forced), atol=1e-4)


def test_qwen3_vl_pools_layers_alike() -> None:
    pipe = _pooling_pipeline(perturb=True, backbone="qwen3-vl")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (128, 192, 3), dtype=np.uint8))  # 4 x 6 cells
    generated = pipe.ask([image], [PROMPT], **forced_answer_kwargs(pipe, [image], [PROMPT], [ANSWER], [0]))[0]
    forced = pipe.decode_answer(image, ANSWER, PROMPT)
    assert len(forced.objects) == 3
    torch.testing.assert_close(_boxes(generated), _boxes(forced), rtol=1e-4, atol=1e-4)


def test_every_new_parameter_gets_a_gradient(synthetic_records, images_dir) -> None:
    pipe = tiny_pipeline(seed=1, vrt_state_layers=[0, 1])
    model = pipe.model.train()
    dataset = GroundingDataset(read_jsonl(synthetic_records["rec_train"]), images_dir, pipe.processor, mask_scale=4)
    batch = GroundingCollator(pipe.processor, 4)([dataset[i] for i in range(3)])
    objective = PaDTObjective(model, PaDTCriterion())
    # The output projection starts at zero: only it gets a gradient at first, the attention after one step.
    objective(batch)["loss"].backward()
    pooling = dict(model.vrt_state_pooling.named_parameters())
    assert set(pooling) == {"norms.0.weight", "norms.1.weight", "query.weight", "key.weight", "layer_embedding",
                            "out.weight"}
    assert pooling["out.weight"].grad.abs().sum() > 0 and not pooling["query.weight"].grad.abs().sum() > 0
    objective.zero_grad()
    assert parameters_without_gradient(objective, batch) == []


def test_save_and_load_round_trip(image, tmp_path) -> None:
    pipe = _pooling_pipeline(perturb=True)
    pipe.save_pretrained(tmp_path / "pooled")
    loaded = PaDTPipeline.from_pretrained(tmp_path / "pooled")
    assert loaded.model.config.vrt_state_layers == [0, 1]
    for name, tensor in pipe.model.vrt_state_pooling.state_dict().items():
        assert torch.equal(loaded.model.vrt_state_pooling.state_dict()[name], tensor), name
    torch.testing.assert_close(
        _boxes(loaded.decode_answer(image, ANSWER, PROMPT)), _boxes(pipe.decode_answer(image, ANSWER, PROMPT)),
        rtol=0, atol=0,
    )
