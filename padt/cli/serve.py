"""``padt serve``: a local Gradio web demo (:mod:`padt.apps.web`). Upload an image, pick refer / detect / caption,
see the overlay + JSON.

```
padt serve                              # the demo model, http://127.0.0.1:7860
padt serve --model runs/padt --port 8000
padt serve --host 0.0.0.0               # reachable from other machines: only on a network you trust
```
"""

from __future__ import annotations

import argparse
import sys

from padt.apps.tasks import load_pipeline


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``padt serve`` to the ``padt`` command."""
    parser = subparsers.add_parser(
        "serve", help="local web demo (Gradio)", description=__doc__.splitlines()[0].replace("``", "")
    )
    parser.add_argument("--model", help="model folder (default: the demo model, see `padt demo`)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    from padt.apps.web import build_app, import_gradio, launch_app

    try:
        import_gradio()  # fail on a missing gradio before spending time on the model
    except ImportError as error:
        print(f"padt serve: error: {error}", file=sys.stderr)
        return 2
    pipeline = load_pipeline(args.model, args.device)
    app = build_app(pipeline, max_new_tokens=args.max_new_tokens)
    try:
        # quiet: Gradio's own banner suggests share=True, which this demo does not offer.
        launch_app(app, host=args.host, port=args.port, block=False, quiet=True)
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        print(f"padt serve: error: cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    print(f"padt serve: http://{args.host}:{args.port} (Ctrl+C stops it)")
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
