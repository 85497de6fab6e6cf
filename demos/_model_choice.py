"""The ``--model DIR | --tiny`` choice shared by the demo scripts."""

from __future__ import annotations

import argparse
import sys


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model folder (default: the demo model of `make demo`)")
    source.add_argument("--tiny", action="store_true", help="a random tiny model (no files needed; answers are noise)")


def pipeline_from_arguments(args: argparse.Namespace, script: str):
    """The chosen pipeline, or None after printing why it could not be loaded (the script then exits 2)."""
    if args.tiny:
        from padt.testing import tiny_pipeline

        return tiny_pipeline()
    from padt.apps.tasks import load_pipeline

    try:
        return load_pipeline(args.model)
    except FileNotFoundError as error:
        print(f"{script}: {error}\n(or run with --tiny for a random model)", file=sys.stderr)
        return None
