"""The web demo as a script (the same app as ``padt serve``), with a ``--tiny`` switch to try it without a model.

    python demos/web_app.py --tiny                 # random tiny model: the UI works, the answers are noise
    python demos/web_app.py --model DIR --port 8000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from _model_choice import add_model_arguments, pipeline_from_arguments  # demos/ is the script folder

from padt.apps.web import build_app, launch_app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    pipe = pipeline_from_arguments(args, "web_app")
    if pipe is None:
        return 2
    print(f"web demo: http://{args.host}:{args.port}")
    launch_app(build_app(pipe, max_new_tokens=args.max_new_tokens), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
