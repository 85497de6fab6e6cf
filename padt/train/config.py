"""Training settings: one dataclass, readable from YAML, overridable by command-line flags."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from padt.backbones import BACKBONE_NAMES
from padt.text.answer_formats import get_answer_format

SAMPLING_MODES = ("random", "repeats", "extremes", "all")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("linear", "cosine", "constant")


#: Argument groups of ``padt train --help``: the ``group`` of each setting's metadata -> the group's title.
GROUPS = {
    "data": "data",
    "model": "model (starting weights, precision, freezing)",
    "optimisation": "optimisation (length, batches, learning rate)",
    "targets": "answers, VRT targets and losses",
    "lora": "LoRA",
    "checkpoints": "output folder and checkpoints",
    "evaluation": "evaluation during training",
}


def _setting(
    default: Any = None, *, group: str, text: str, factory: Callable[[], Any] | None = None, shown: str | None = None
) -> Any:
    """A TrainConfig field whose metadata documents it once, for the YAML key and the flag alike.

    ``group`` is a key of :data:`GROUPS`; ``text`` is the one-line help; ``shown`` replaces the default in the
    help where the value alone would not say it (``None`` meaning "the model's own value", ...).
    """
    if group not in GROUPS:
        raise ValueError(f"padt/train/config.py: setting group {group!r} is not one of {sorted(GROUPS)}")
    metadata = {"group": group, "help": text, "shown_default": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def setting_help(setting: dataclasses.Field) -> str:
    """The one-line help of a TrainConfig field, ending with its default: ``"... (default: 2e-05)"``."""
    shown = setting.metadata.get("shown_default")
    if shown is None:
        default = setting.default_factory() if setting.default_factory is not dataclasses.MISSING else setting.default
        shown = _show_default(default)
    return f"{setting.metadata['help']} (default: {shown})"


def _show_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) if value else "none"
    return str(value)


@dataclass
class TrainConfig:
    """Everything ``padt train`` needs. Field names are the YAML keys and, with ``-`` for ``_``, the flags.

    Each field's ``metadata`` holds its one-line ``help`` and its ``group`` (see :data:`GROUPS`): the source of
    ``padt train --help`` (:func:`setting_help`).

    Starting weights: ``model`` (a PaDT or plain Qwen2.5-VL / Qwen3-VL folder) or ``tiny`` (the random tiny model of
    :func:`padt.testing.tiny_pipeline` on ``backbone``; ``model_overrides``, YAML only, changes its configuration,
    e.g. ``{text_config: {hidden_size: 256}}``). Length: ``max_steps`` or ``epochs`` (optimizer steps, each on
    ``batch_size * grad_accum * world_size`` samples). ``answer_format``: ``"vrt"`` (PaDT) or ``"text-boxes"`` (the
    text-coordinate baseline: Qwen2.5-VL's JSON boxes, token cross-entropy only; see :mod:`padt.text.text_boxes`).
    ``vrts_per_object``: VRTs written per object in the training answers; ``None`` takes the model's
    ``PaDTConfig.num_vrt_per_object`` (5, as the paper trains). An ``output_dir`` that holds an earlier run
    (checkpoints or ``metrics.jsonl``) needs ``resume`` (continue it) or ``overwrite`` (delete them first).
    """

    records: list[str] = _setting(
        group="data", factory=list, text="training records: one or more JSONL files made by `padt convert`"
    )
    images: str = _setting(
        ".", group="data", text="folder the records' image paths are relative to (no path may leave it)"
    )
    output_dir: str = _setting(
        "runs/padt", group="checkpoints", text="run folder: train_config.json, metrics.jsonl, checkpoints/, final/"
    )
    model: str | None = _setting(
        group="model",
        text="starting weights: a PaDT folder (ours or a released one) or a plain Qwen2.5-VL / Qwen3-VL folder",
    )
    tiny: bool = _setting(False, group="model", text="start from the random tiny model instead of --model")
    backbone: str = _setting(
        "qwen2.5-vl", group="model",
        text=f"backbone of the --tiny model: one of {', '.join(BACKBONE_NAMES)} (--model folders say their own)",
    )
    model_overrides: dict[str, Any] = _setting(
        group="model", factory=dict, text="YAML only: configuration changes of the tiny model"
    )
    max_steps: int | None = _setting(group="optimisation", text="training length in optimizer steps (or --epochs)")
    epochs: float | None = _setting(
        group="optimisation", text="training length in passes over the records, fractions allowed (or --max-steps)"
    )
    batch_size: int = _setting(4, group="optimisation", text="records per process in one micro-batch")
    grad_accum: int = _setting(
        1, group="optimisation", text="micro-batches per optimizer step (a step sees batch x accum x processes)"
    )
    lr: float = _setting(2e-5, group="optimisation", text="AdamW's peak learning rate (reached after the warm-up)")
    weight_decay: float = _setting(0.0, group="optimisation", text="AdamW's weight decay")
    schedule: str = _setting(
        "linear", group="optimisation", text=f"learning-rate decay after the warm-up: one of {', '.join(SCHEDULES)}"
    )
    lr_warmup_steps: int = _setting(0, group="optimisation", text="steps of linear learning-rate warm-up from 0")
    max_grad_norm: float = _setting(1.0, group="optimisation", text="clip the gradient norm to this (0: no clipping)")
    precision: str = _setting(
        "fp32", group="model", text=f"one of {', '.join(PRECISIONS)} (bf16: mixed precision through accelerate)"
    )
    gradient_checkpointing: bool = _setting(
        False, group="model", text="recompute activations in backward: less memory, slower steps"
    )
    freeze_vision: bool = _setting(False, group="model", text="freeze the vision tower")
    freeze_llm: bool = _setting(
        False, group="model", text="freeze the language model and its head (the PaDT modules always train)"
    )
    lora: bool = _setting(False, group="lora", text="train LoRA adapters (peft), merged into the saved model")
    lora_rank: int = _setting(16, group="lora", text="LoRA rank")
    lora_alpha: int = _setting(32, group="lora", text="LoRA alpha (the update is scaled by alpha / rank)")
    lora_dropout: float = _setting(0.0, group="lora", text="dropout on the LoRA branch")
    lora_targets: list[str] = _setting(
        group="lora", factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], text="module names LoRA adapts"
    )
    answer_format: str = _setting(
        "vrt", group="targets", text="training answers: vrt (PaDT) or text-boxes (the text-coordinate baseline)"
    )
    vrts_per_object: int | None = _setting(
        group="targets", text="VRTs written per object in the training answers",
        shown="the model's num_vrt_per_object, 5",
    )
    vrt_sampling: str = _setting(
        "random", group="targets", text=f"how the VRTs of an object are drawn: one of {', '.join(SAMPLING_MODES)}"
    )
    decoder_warmup_steps: int | None = _setting(
        group="targets", text="first steps in which the decoder reads the ground-truth VRTs' prototypes",
        shown="min(300, a quarter of the steps)",
    )
    decoder_trains_vision: bool = _setting(
        True, group="targets",
        text="box and mask losses also train the vision tower through the decoder's memory (off: it is detached)",
    )
    loss_weights: dict[str, float] = _setting(
        group="targets", factory=dict, shown="every term 1",
        text="weights of the loss terms ce, box_l1, box_giou, score, mask_dice, mask_focal",
    )
    eval_records: str | None = _setting(
        group="evaluation", text="held-out JSONL records (same --images) scored during training"
    )
    eval_every: int = _setting(
        0, group="evaluation", text="score --eval-records every N steps and at the end (0: never)"
    )
    save_every: int = _setting(
        0, group="checkpoints", text="write a checkpoint every N steps (0: only the last one)"
    )
    seed: int = _setting(
        42, group="optimisation", text="seed of the tiny model's init, the data order and the VRT sampling"
    )
    resume: bool = _setting(
        False, group="checkpoints", text="continue the run of --output-dir from its checkpoints/latest"
    )
    overwrite: bool = _setting(
        False, group="checkpoints",
        text="delete the checkpoints and metrics.jsonl of an earlier run in --output-dir, then start afresh",
    )

    def __post_init__(self) -> None:
        if isinstance(self.records, str):
            self.records = [self.records]
        problems = []
        if self.backbone not in BACKBONE_NAMES:
            problems.append(f"backbone must be one of {BACKBONE_NAMES}, got {self.backbone!r}")
        if self.vrt_sampling not in SAMPLING_MODES:
            problems.append(f"vrt_sampling must be one of {SAMPLING_MODES}, got {self.vrt_sampling!r}")
        try:
            get_answer_format(self.answer_format)
        except ValueError as error:
            problems.append(str(error))
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("batch_size", "grad_accum", "vrts_per_object"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be at least 1, got {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            problems.append(f"epochs must be positive, got {self.epochs}")
        if self.resume and self.overwrite:
            problems.append("resume and overwrite exclude each other: continue the earlier run or delete it")
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))

    def check_ready(self) -> None:
        """Errors that only matter when training starts (not when a config is merely built)."""
        if not self.records:
            raise ValueError("no training records: give --records FILE.jsonl (or 'records:' in the YAML file)")
        if (self.model is None) == (not self.tiny):
            raise ValueError("give exactly one of --model DIR and --tiny")
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give the training length: --max-steps N or --epochs E")

    def warmup_steps(self, total_steps: int) -> int:
        """Steps during which the decoder sees ground-truth prototypes: min(300, a quarter of training)."""
        if self.decoder_warmup_steps is not None:
            return self.decoder_warmup_steps
        return min(300, total_steps // 4)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML mapping of fields; ``overrides`` (e.g. from flags) win. Unknown keys are an error."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read training config {path}: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"training config {path} must be a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"training config {path}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**{**data, **overrides})
