"""``padt train``: fine-tune a PaDT model on JSONL records (every :class:`~padt.train.config.TrainConfig` field is a
flag; ``--config FILE.yaml`` gives them all, flags win).

The flags, their help and their argument groups all come from ``TrainConfig``'s field metadata
(:func:`padt.train.config.setting_help`, :data:`padt.train.config.GROUPS`), so a YAML key and its flag are
documented in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def register(subparsers: argparse._SubParsersAction) -> None:
    from padt.train.config import GROUPS, TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="fine-tune a PaDT model on JSONL records",
        description="Fine-tune a PaDT model. Every setting can also come from --config FILE.yaml (the same names "
        "with _ for -; model_overrides is YAML only); flags win. An --output-dir holding an earlier run needs --resume "
        "or --overwrite.",
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of training settings (default: none)")
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        _add_flag(groups[f.metadata["group"]], f, hints[f.name])
    parser.set_defaults(run=_run)


def _add_flag(group: argparse._ArgumentGroup, setting: dataclasses.Field, hint: typing.Any) -> None:
    """The flag of one TrainConfig field (none for nested dict settings, which are YAML only).

    Every flag defaults to None, so that only the flags given override the YAML file; the help shows the
    setting's real default instead.
    """
    from padt.train.config import setting_help

    flag = "--" + setting.name.replace("_", "-")
    text = setting_help(setting).replace("%", "%%")  # argparse formats help with %
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif origin is list:
        group.add_argument(flag, nargs="+", action="extend", default=None, help=text)
    elif origin is dict and setting.name == "loss_weights":
        group.add_argument(flag, type=_parse_weights, default=None, metavar="NAME=VALUE,...", help=text)
    elif origin is dict:
        return  # nested settings: YAML only
    else:
        group.add_argument(flag, type=args[0] if args else hint, default=None, help=text)


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
