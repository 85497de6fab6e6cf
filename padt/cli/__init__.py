"""The ``padt`` command: ``padt convert|train|eval|predict|demo|serve ...``.

Each sub-command imports its heavy modules only when it runs, so ``padt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: One module per sub-command, each with ``register(subparsers)``; the order is the order of ``padt --help``.
SUBCOMMANDS = ("convert", "convert_checkpoint", "train", "predict", "serve", "eval", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="padt", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"padt.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # Bad input is the user's to fix: say what is wrong without a traceback.
        print(f"padt {args.command}: error: {error}", file=sys.stderr)
        return 2

