"""One grounding path: the pipeline, the training objective and the visualiser run the same teacher-forced pass
and hand the decoder the same inputs, so one answer decodes to the same objects everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from padt.datasets.training import GroundingCollator, ObjectTarget, TrainingExample
from padt.losses import PaDTCriterion
from padt.testing import tiny_pipeline
from padt.text.prompts import ovd_prompt
from padt.train.objective import PaDTObjective
from padt.visualize import vrt_step_probabilities

PROMPT = ovd_prompt(["circle", "square"])
ANSWER = 'There are 2 "circle" (<|VRT_0|><|VRT_1|><|VRT_7|>, <|VRT_23|>) and 1 "square" (<|VRT_5|><|VRT_5|>).'
OBJECT_VRTS = [[0, 1, 7], [23], [5, 5]]


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline(seed=5)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the zero start, so that different inputs give different outputs
        pipe.model.vrt_prototypes.norm.weight.copy_(1.0 + 0.5 * torch.randn(128, generator=gen))
        for param in pipe.model.vrt_decoder.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return pipe


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (112, 168, 3), dtype=np.uint8))  # 4 x 6 cells


def decoder_calls(model, monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Every call of the model's decoder from now on: its VRT states, rows and outputs."""
    calls, decode = [], model.vrt_decoder.forward

    def recording(vrt_states, vrt_counts, object_image, memory, **kwargs):
        output = decode(vrt_states, vrt_counts, object_image, memory, **kwargs)
        calls.append(dict(states=vrt_states.detach(), counts=vrt_counts, image=object_image,
                          rows=kwargs.get("vrt_rows"), boxes=output.boxes.detach(),
                          scores=output.score_logits.detach(), masks=output.mask_logits.detach()))
        return output

    monkeypatch.setattr(model.vrt_decoder, "forward", recording)
    return calls


def training_batch(pipe, image):
    objects = [ObjectTarget(vrts, sorted(set(vrts)), (0.5, 0.5, 0.2, 0.2), None) for vrts in OBJECT_VRTS]
    return GroundingCollator(pipe.processor, pipe.model.vrt_decoder.config.mask_subpixels)(
        [TrainingExample(image, PROMPT, ANSWER, objects, "r0")]
    )


def test_pipeline_and_training_objective_decode_the_same_objects(pipe, image, monkeypatch):
    calls = decoder_calls(pipe.model, monkeypatch)
    output = pipe.decode_answer(image, ANSWER, PROMPT)
    objective = PaDTObjective(pipe.model, PaDTCriterion())
    with torch.no_grad():
        objective(training_batch(pipe, image))
    assert len(calls) == 2
    served, trained = calls
    for key in ("states", "counts", "image", "rows", "boxes", "scores", "masks"):
        torch.testing.assert_close(served[key], trained[key], rtol=1e-5, atol=1e-6, msg=key)
    assert [o.patches for o in output.objects] == OBJECT_VRTS
    assert len({o.box for o in output.objects}) == 3  # the objects differ: the comparison is not vacuous


def test_the_visualiser_reads_the_states_the_decoder_gets(pipe, image, monkeypatch):
    calls = decoder_calls(pipe.model, monkeypatch)
    output = pipe.decode_answer(image, ANSWER, PROMPT)
    (call,) = calls
    _, steps = vrt_step_probabilities(pipe, image, PROMPT, output=output)
    assert [token for token, _ in steps] == [f"<|VRT_{k}|>" for vrts in OBJECT_VRTS for k in vrts]
    # the VRT distribution of each state that reached the decoder, over this image's patches
    model = pipe.model
    batch = pipe.processor([image], [PROMPT], answers=[ANSWER])
    with torch.no_grad():
        vision = model.encode_images(batch["pixel_values"], batch["image_grid_thw"], batch["sample_of_image"], 1)
        expected = model.vrt_logits(call["states"][None], vision)[0].softmax(-1)
    for (_, probabilities), row in zip(steps, expected, strict=True):
        torch.testing.assert_close(probabilities, row, rtol=1e-5, atol=1e-6)
