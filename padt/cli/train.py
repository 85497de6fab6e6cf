"""``padt train``: fine-tune a PaDT model on JSONL records (every :class:`~padt.train.config.TrainConfig` field is a
flag; ``--config FILE.yaml`` gives them all, flags win)."""

from __future__ import annotations

import argparse
import dataclasses
import typing


def register(subparsers: argparse._SubParsersAction) -> None:
    from padt.train.config import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="fine-tune a PaDT model on JSONL records",
        description="Fine-tune a PaDT model. Every setting can also come from --config FILE.yaml; flags win.",
    )
    parser.add_argument("--config", help="YAML file of training settings")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif origin is list:
            parser.add_argument(flag, nargs="+", action="extend", default=None)
        elif origin is dict and f.name == "loss_weights":
            parser.add_argument(flag, type=_parse_weights, default=None, help="NAME=VALUE,NAME=VALUE")
        elif origin is dict:
            continue  # nested settings: YAML only
        else:
            kind = args[0] if args else hint
            parser.add_argument(flag, type=kind, default=None)
    parser.set_defaults(run=_run)


def _parse_weights(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE,NAME=VALUE, got {text!r}") from error


def _run(args: argparse.Namespace) -> int:
    from padt.train.config import TrainConfig
    from padt.train.loop import train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    config = TrainConfig.from_yaml(args.config, **overrides) if args.config else TrainConfig(**overrides)
    final = train(config)
    print(f"final model: {final}")
    return 0
