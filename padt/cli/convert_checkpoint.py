"""``padt convert-checkpoint OFFICIAL_DIR OUT_DIR``: rewrite a released PaDT checkpoint in our layout.

```
padt convert-checkpoint ~/models/PaDT_Pro_3B ~/models/PaDT_Pro_3B-padt
```

The output holds the same weights (bit for bit, same dtype) under our names, our ``config.json`` (which records
``patch_order: "official"``), the generation config and the processor; it loads without any name mapping.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``convert-checkpoint`` to ``subparsers`` (from ``parser.add_subparsers()``)."""
    parser = subparsers.add_parser(
        "convert-checkpoint",
        help="rewrite an official PaDT checkpoint folder (PaDT-MLLM/PaDT_*) in padt's layout",
        description="Convert a downloaded official PaDT checkpoint (transformers 4.50 layout) into padt's layout. "
        "Every weight name and shape is checked first; nothing is written unless all of them map. "
        "See docs/official_checkpoints.md.",
    )
    parser.add_argument("official_dir", type=Path, help="the downloaded official folder (config.json with vl_decoder)")
    parser.add_argument("out_dir", type=Path, help="where to write the converted model (must not exist or be empty)")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from padt.official.checkpoint import is_official_layout
    from padt.official.convert import convert_official_checkpoint

    if not args.official_dir.is_dir():
        raise FileNotFoundError(f"{args.official_dir} is not a folder")
    if not is_official_layout(args.official_dir):
        raise ValueError(
            f"{args.official_dir} is not in the official PaDT layout (its config.json has no 'vl_decoder' dict)"
        )
    out = convert_official_checkpoint(args.official_dir, args.out_dir)
    print(f"wrote {out} (patch_order 'official'); load it with padt.PaDTPipeline.from_pretrained")
    return 0
