"""``padt serve``: a local Gradio web demo (:mod:`padt.apps.web`). Upload an image, pick refer / detect / caption,
see the overlay + JSON.

```
padt serve                              # the demo model, http://127.0.0.1:7860
padt serve --model runs/padt --port 8000
padt serve --host 0.0.0.0               # reachable from other machines: only on a network you trust
padt serve --max-file-size 5MB          # refuse uploads above 5 MB (default 20MB)
```
"""

from __future__ import annotations

import argparse
import sys

from padt.apps.tasks import load_pipeline
from padt.apps.web import DEFAULT_MAX_FILE_SIZE, parse_file_size
from padt.cli.options import add_model_options, pipeline_options


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``padt serve`` to the ``padt`` command."""
    parser = subparsers.add_parser(
        "serve",
        help="local web demo (Gradio)",
        description="padt serve: a local Gradio web demo. Upload an image, pick refer / detect / caption, see the "
        "overlay + JSON.",
    )
    parser.add_argument("--model", help="model folder (default: the demo model, see `padt demo`)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port to serve on, 1..65535 (default 7860)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")
    add_model_options(parser)
    parser.add_argument(
        "--max-file-size",
        default=DEFAULT_MAX_FILE_SIZE,
        help=f"largest upload accepted, bytes or with a unit B/KB/MB/GB, e.g. 5MB (default {DEFAULT_MAX_FILE_SIZE})",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    try:
        max_file_size = parse_file_size(args.max_file_size)
    except ValueError as error:
        raise ValueError(f"--max-file-size: {error}") from error
    from padt.apps.web import build_app, import_gradio, launch_app

    try:
        import_gradio()  # fail on a missing gradio before spending time on the model
    except ImportError as error:
        print(f"padt serve: error: {error}", file=sys.stderr)
        return 2
    pipeline = load_pipeline(args.model, args.device, **pipeline_options(args))
    app = build_app(pipeline)
    try:
        # quiet: Gradio's own banner suggests share=True, which this demo does not offer.
        launch_app(app, host=args.host, port=args.port, block=False, max_file_size=max_file_size, quiet=True)
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        print(f"padt serve: error: cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    print(f"padt serve: http://{args.host}:{args.port} (Ctrl+C stops it)")
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
