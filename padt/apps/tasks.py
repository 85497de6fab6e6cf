"""Run one task (refer / detect / caption) on one image and turn the answer into JSON or a picture.

Shared by ``padt predict``, ``padt serve`` and the demo scripts. Without a model folder the demo's tiny model
is used (:func:`padt.apps.demo.demo_model_dir`: ``$PADT_DEMO_MODEL`` if set, else the one ``padt demo --retrain``
trained, else the one shipped with padt).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from padt.pipeline import PaDTPipeline
    from padt.results import GroundedOutput

TASKS = ("refer", "detect", "caption")


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """The model folder to load: ``model`` if given, else the demo model; ``FileNotFoundError`` if it is missing."""
    from padt.apps.demo import DEMO_MODEL_ENV, demo_model_dir

    if model is not None:
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"model folder {path} {what}: pass a folder written by save_pretrained")
        return path
    path = demo_model_dir()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no --model given and the demo model is not at {path} ({DEMO_MODEL_ENV}): run `padt demo --retrain` "
            f"to train it there, unset {DEMO_MODEL_ENV} to use the model shipped with padt (the one `make demo` "
            "shows), or pass --model FOLDER"
        )
    return path


def load_pipeline(model: str | os.PathLike | None, device: str | None = None, **kwargs: Any) -> PaDTPipeline:
    """:func:`resolve_model_dir` then ``PaDTPipeline.from_pretrained`` on ``device`` (default: cuda if present)."""
    import torch

    from padt.pipeline import PaDTPipeline

    path = resolve_model_dir(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return PaDTPipeline.from_pretrained(path, device=device, **kwargs)


def task_prompt(task: str, text: str | None) -> tuple[str, bool]:
    """(prompt, require_labels) for a task: the expression for ``refer``, comma-separated names for ``detect``.

    ``text`` is ignored for ``caption``. Raises ``ValueError`` for an unknown task or a missing/empty text.
    """
    from padt.text.prompts import ovd_prompt, rec_prompt, ric_prompt

    if task == "caption":
        return ric_prompt(), False
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not text or not text.strip():
        what = "a referring expression" if task == "refer" else "category names separated by commas"
        raise ValueError(f"{task} needs {what}")
    if task == "refer":
        return rec_prompt(text.strip()), True
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no category names in {text!r}: separate names with commas, e.g. 'person,horse'")
    return ovd_prompt(names), True


def run_task(
    pipeline: PaDTPipeline, image: Any, task: str, text: str | None, **generate_kwargs: Any
) -> tuple[GroundedOutput, str, bool]:
    """Ask ``pipeline`` one task about one image: returns (output, prompt, require_labels).

    The same as ``pipeline.refer`` / ``detect`` / ``caption``, but the prompt comes back too, so callers can
    draw the per-step VRT heatmaps of the same answer (:func:`padt.visualize.vrt_step_heatmaps`).
    """
    prompt, require_labels = task_prompt(task, text)
    output = pipeline.ask([image], [prompt], require_labels=require_labels, **generate_kwargs)[0]
    return output, prompt, require_labels


def output_record(output: GroundedOutput, *, task: str, prompt: str, **extra: Any) -> dict[str, Any]:
    """The JSON written by ``padt predict`` and shown by ``padt serve``.

    Keys: ``task``, ``prompt``, anything in ``extra`` (e.g. ``image``, ``model``), then ``output.to_dict`` with
    masks: ``text``, ``objects`` (``label``, ``patches``, ``box`` xyxy in original pixels, ``score``,
    ``image_index``, ``mask_rle`` as COCO RLE), ``problems``, ``image_sizes``.
    """
    return {"task": task, "prompt": prompt, **extra, **output.to_dict(include_masks=True)}


def summary(output: GroundedOutput) -> str:
    """A few human-readable lines: the answer and one line per object."""
    lines = [f"answer: {output.text.strip()!r}"]
    if not output.objects:
        lines.append("no objects")
    for i, obj in enumerate(output.objects):
        box = ", ".join(f"{v:.1f}" for v in obj.box)
        lines.append(f"  {i}: {obj.label!r:30} score {obj.score:.3f}  box [{box}]  {len(obj.patches)} patches")
    for problem in output.problems:
        lines.append(f"  note: {problem}")
    return "\n".join(lines)


def render(image: Any, output: GroundedOutput) -> np.ndarray:
    """The overlay picture of ``output`` on ``image`` (patch cells on the grid the output records)."""
    from padt.visualize import draw_grounding

    return draw_grounding(image, output)

