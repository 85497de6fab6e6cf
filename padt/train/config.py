"""Training settings: one dataclass, readable from YAML, overridable by command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from padt.text.answer_formats import get_answer_format

SAMPLING_MODES = ("random", "repeats", "extremes", "all")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    """Everything ``padt train`` needs. Field names are the YAML keys and, with ``-`` for ``_``, the flags.

    Starting weights: ``model`` (a PaDT or plain Qwen2.5-VL folder) or ``tiny`` (the random tiny model of
    :func:`padt.testing.tiny_pipeline`; ``model_overrides``, YAML only, changes its configuration, e.g.
    ``{text_config: {hidden_size: 256}}``). Length: ``max_steps`` or ``epochs`` (optimizer steps, each on
    ``batch_size * grad_accum * world_size`` samples). ``answer_format``: ``"vrt"`` (PaDT) or ``"text-boxes"`` (the
    text-coordinate baseline: Qwen2.5-VL's JSON boxes, token cross-entropy only; see :mod:`padt.text.text_boxes`).
    ``vrts_per_object``: VRTs written per object in the training answers; ``None`` takes the model's
    ``PaDTConfig.num_vrt_per_object`` (5, as the paper trains).
    """

    records: list[str] = field(default_factory=list)
    images: str = "."
    output_dir: str = "runs/padt"
    model: str | None = None
    tiny: bool = False
    model_overrides: dict[str, Any] = field(default_factory=dict)
    max_steps: int | None = None
    epochs: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.0
    schedule: str = "linear"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    freeze_llm: bool = False
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    answer_format: str = "vrt"
    vrts_per_object: int | None = None
    vrt_sampling: str = "random"
    decoder_warmup_steps: int | None = None
    decoder_trains_vision: bool = True
    loss_weights: dict[str, float] = field(default_factory=dict)
    eval_records: str | None = None
    eval_every: int = 0
    save_every: int = 0
    seed: int = 42
    resume: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.records, str):
            self.records = [self.records]
        problems = []
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
