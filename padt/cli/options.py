"""Flags that several sub-commands share, defined once: the answer length and the image size of a model.

Their defaults come from the model folder (its ``generation_config.json`` and its processor's ``longest_side``),
so a user never copies the numbers of a checkpoint by hand.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--max-new-tokens`` and ``--longest-side``, both defaulting to what the model folder says."""
    parser.add_argument(
        "--max-new-tokens", type=_positive, default=None,
        help="most tokens the model may write per answer (default: the model's generation_config.json, else 1024)",
    )
    parser.add_argument(
        "--longest-side", type=_side, default=argparse.SUPPRESS,  # absent: the model folder's setting
        help="resize every image so its longest side has this many pixels first, or 'none' for native size "
        "(default: what the model folder records; 644 for the released PaDT checkpoints)",
    )


def pipeline_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``PaDTPipeline.from_pretrained`` from those flags (only the ones given)."""
    options: dict[str, Any] = {}
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    if hasattr(args, "longest_side"):
        options["longest_side"] = args.longest_side
    return options


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _side(text: str) -> int | None:
    return None if text.strip().lower() == "none" else _positive(text)
