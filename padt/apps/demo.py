"""The demo behind ``padt demo``: synthetic scenes -> the tiny PaDT (shipped, or trained again) -> held-out
scores -> a gallery PNG.

The recipe below is the whole experiment. padt ships the model it produces (``padt/demo_model``: safetensors,
about 4 MB, with the recipe it was trained with), so ``padt demo`` needs no training; ``padt demo --retrain``
trains it again from scratch with the same recipe and writes it to ``$PADT_DEMO_MODEL`` (default
``~/.cache/padt/demo-model``). ``padt predict`` and ``padt serve`` use :func:`demo_model_dir` when given no
``--model``.

``padt demo --backbone qwen3-vl --retrain`` runs the same recipe on a tiny Qwen3-VL PaDT (:func:`backbone_recipe`):
its scenes' records are written for Qwen3-VL's 32-px cells, and the model goes to
``~/.cache/padt/demo-model-qwen3-vl`` (no Qwen3-VL demo model is shipped).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

#: The demo's experiment: scenes, model, training. The shipped model was trained with exactly this; change it and
#: ``padt demo`` refuses the shipped model until ``--retrain`` produces one for the new recipe.
RECIPE: dict[str, Any] = {
    "scenes": {
        "num_images": 4000, "seed": 1, "image_size": [168, 168], "objects_per_image": [1, 3],
        "object_size": [32, 80], "val_fraction": 0.2,
    },
    "train": {
        "max_steps": 30000, "batch_size": 8, "lr": 1e-3, "schedule": "cosine", "seed": 0, "vrts_per_object": 5,
        "vrt_sampling": "repeats", "decoder_trains_vision": False,
        "model_overrides": {"text_config": {"num_hidden_layers": 4}, "vrt_norm_init": 1.0},
    },
}
#: The model trained with :data:`RECIPE`, shipped inside the package.
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "demo_model"
#: Next to the weights: the recipe they were trained with.
RECIPE_FILE = "padt_demo_recipe.json"
#: Environment variable naming where ``--retrain`` writes (and ``padt predict`` / ``padt serve`` read) the model.
DEMO_MODEL_ENV = "PADT_DEMO_MODEL"
#: Held-out examples per row of the gallery.
GALLERY_ROW = 3
#: Held-out records scored (the first ones of each split): enough for stable figures, quick on a laptop CPU.
EVAL_LIMITS = {"rec": 400, "ovd": 100}


#: The backbone the shipped recipe (and model) uses.
DEFAULT_BACKBONE = "qwen2.5-vl"


def backbone_recipe(backbone: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """:data:`RECIPE` (a copy) for ``backbone``: the same experiment, with the backbone named in the scenes (whose
    records depend on the cell size) and in the training settings; :data:`RECIPE` itself for the default one."""
    from padt.backbones import get_backbone

    recipe = json.loads(json.dumps(RECIPE))
    if get_backbone(backbone).name != DEFAULT_BACKBONE:
        recipe["scenes"]["backbone"] = backbone
        recipe["train"]["backbone"] = backbone
    return recipe


def default_workdir() -> Path:
    return Path.home() / ".cache" / "padt" / "demo-data"


def prepare_scenes(workdir: Path, recipe: dict[str, Any]) -> dict[str, Path]:
    """Write the synthetic scenes and their records once (deterministic by seed); reuse them afterwards."""
    from padt.backbones import get_backbone
    from padt.datasets.records import GridSpec
    from padt.datasets.synthetic_records import convert_synthetic
    from padt.testing import TINY_MAX_PIXELS, TINY_MIN_PIXELS

    backbone = recipe["scenes"].get("backbone", DEFAULT_BACKBONE)
    # Each backbone's scenes in their own folder: the same images, records on that backbone's cells.
    data = workdir / ("scenes" if backbone == DEFAULT_BACKBONE else f"scenes-{backbone}")
    stamp = data / "recipe.json"
    names = ("ovd_train", "ovd_val", "rec_train", "rec_val")
    paths = {name: data / f"records_{name.split('_')[0]}_{name.split('_')[1]}.jsonl" for name in names}
    reusable = stamp.is_file() and json.loads(stamp.read_text()) == recipe["scenes"]
    if reusable and all(p.is_file() for p in paths.values()):
        print(f"[1/4] reusing synthetic scenes in {data}")
        return paths
    print(f"[1/4] drawing synthetic scenes into {data}")
    if data.exists():
        shutil.rmtree(data)
    scenes = dict(recipe["scenes"])
    num_images, seed = scenes.pop("num_images"), scenes.pop("seed")
    cells = get_backbone(scenes.pop("backbone", DEFAULT_BACKBONE))
    grid = GridSpec(cells.patch_size, cells.merge_size, TINY_MIN_PIXELS, TINY_MAX_PIXELS)
    paths = convert_synthetic(
        data, num_images, seed, grid=grid, report=False, image_size=tuple(scenes["image_size"]),
        objects_per_image=tuple(scenes["objects_per_image"]), object_size=tuple(scenes["object_size"]),
        val_fraction=scenes["val_fraction"],
    )
    stamp.write_text(json.dumps(recipe["scenes"]))
    return paths


def retrained_model_dir(backbone: str = DEFAULT_BACKBONE) -> Path:
    """Where ``padt demo --retrain`` writes its model: ``$PADT_DEMO_MODEL``, else ``~/.cache/padt/demo-model``
    (``demo-model-qwen3-vl`` for the Qwen3-VL one, so that it replaces nothing)."""
    override = os.environ.get(DEMO_MODEL_ENV)
    if override:
        return Path(override).expanduser()
    suffix = "" if backbone == DEFAULT_BACKBONE else f"-{backbone}"
    return Path.home() / ".cache" / "padt" / f"demo-model{suffix}"


def demo_model_dir() -> Path:
    """The demo model that ``padt predict`` / ``padt serve`` use without ``--model``.

    ``$PADT_DEMO_MODEL`` when set (whether or not it exists yet); else the model ``padt demo --retrain`` wrote to
    ``~/.cache/padt/demo-model`` if it was trained with the current :data:`RECIPE`; else the shipped model.
    """
    if os.environ.get(DEMO_MODEL_ENV):
        return retrained_model_dir()
    cached = retrained_model_dir()
    return cached if model_recipe(cached) == RECIPE else SHIPPED_MODEL


def model_recipe(model_dir: Path) -> dict[str, Any] | None:
    """The recipe stored next to a demo model, or None when there is none (not a demo model, or missing)."""
    path = Path(model_dir) / RECIPE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def prepare_model(workdir: Path, scenes: dict[str, Path], recipe: dict[str, Any], retrain: bool) -> Path:
    """The shipped model (which must have been trained with ``recipe``), or a new one trained with ``recipe``."""
    backbone = recipe["train"].get("backbone", DEFAULT_BACKBONE)
    if not retrain:
        if backbone != DEFAULT_BACKBONE:
            raise ValueError(
                f"padt ships no {backbone} demo model: run `padt demo --backbone {backbone} --retrain` to train one"
            )
        if model_recipe(SHIPPED_MODEL) != recipe:
            raise ValueError(
                f"the shipped demo model ({SHIPPED_MODEL}) was not trained with this recipe: run "
                "`padt demo --retrain` to train one that is"
            )
        print(f"[2/4] using the shipped demo model ({SHIPPED_MODEL}), trained with this recipe "
              "(`padt demo --retrain` trains it again)")
        return SHIPPED_MODEL

    from padt.train.config import TrainConfig
    from padt.train.loop import train

    name = "PaDT" if backbone == DEFAULT_BACKBONE else f"{backbone} PaDT"
    print(f"[2/4] training the tiny {name} ({recipe['train']['max_steps']} steps) ...")
    run_dir = workdir / ("run" if backbone == DEFAULT_BACKBONE else f"run-{backbone}")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = TrainConfig(
        records=[str(scenes["rec_train"]), str(scenes["ovd_train"])], images=str(scenes["rec_train"].parent / "images"),
        output_dir=str(run_dir), tiny=True, **recipe["train"],
    )
    started = time.perf_counter()
    final = train(config)
    print(f"      trained in {time.perf_counter() - started:.0f} s")
    (final / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    model_dir = retrained_model_dir(backbone)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(final, model_dir)
    return model_dir


def evaluate_model(pipeline, scenes: dict[str, Path]) -> dict[str, float]:
    """REC Acc@0.5, RES cIoU/gIoU and OVD AP/AP50 on the held-out scenes."""
    from padt.datasets.records import read_jsonl
    from padt.evaluation import evaluate

    print("[3/4] evaluating on held-out scenes ...")
    images = scenes["rec_val"].parent / "images"
    rec = evaluate(pipeline, read_jsonl(scenes["rec_val"]), images, "rec,res", limit=EVAL_LIMITS["rec"]).metrics
    ovd = evaluate(pipeline, read_jsonl(scenes["ovd_val"]), images, "ovd", limit=EVAL_LIMITS["ovd"]).metrics
    return {
        "REC Acc@0.5": rec["rec/acc@0.5"],
        "RES cIoU": rec["res/ciou"],
        "RES gIoU": rec["res/giou"],
        "OVD AP": ovd["ovd/bbox_AP"],
        "OVD AP50": ovd["ovd/bbox_AP50"],
    }


def write_gallery(pipeline, scenes: dict[str, Path], out: Path) -> Path:
    """Held-out predictions for REC, RES and OVD prompts: boxes, scores, masks and the VRT patches."""
    from padt.datasets.records import read_jsonl
    from padt.visualize import draw_grounding, make_gallery, save_image

    print("[4/4] drawing the gallery ...")
    images = scenes["rec_val"].parent / "images"
    rec = _one_per_image(read_jsonl(scenes["rec_val"]))
    ovd = read_jsonl(scenes["ovd_val"])
    n = GALLERY_ROW
    picks = [("REC", r, dict(show_masks=False)) for r in rec[:n]]
    picks += [("RES", r, dict(show_boxes=False)) for r in rec[n : 2 * n]]
    picks += [("OVD", r, {}) for r in ovd[:n]]
    loaded = [pipeline.processor.load(images / record.image) for _, record, _ in picks]
    outputs = pipeline.ask(loaded, [record.prompt for _, record, _ in picks])
    tiles = []
    for (task, record, options), image, output in zip(picks, loaded, outputs):
        drawn = draw_grounding(image, output, **options)
        tiles.append((drawn, f"{task}: {_prompt_subject(record.prompt)}"))
    return save_image(out, make_gallery(tiles, columns=3, tile_size=288))


def _one_per_image(records: list) -> list:
    """The first record of each image: REC has several expressions per scene, the gallery shows distinct scenes."""
    seen, unique = set(), []
    for record in records:
        if record.image not in seen:
            seen.add(record.image)
            unique.append(record)
    return unique


def _prompt_subject(prompt: str) -> str:
    """The quoted expression of a REC prompt or the category list of an OVD prompt, for a tile title."""
    if ":" in prompt:
        return prompt.split(":", 1)[1].strip().rstrip(".")
    return prompt
