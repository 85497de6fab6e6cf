"""``padt serve``: a local Gradio web demo. Upload an image, pick refer / detect / caption, see the overlay + JSON.

```
padt serve                              # the demo model, http://127.0.0.1:7860
padt serve --model runs/padt --port 8000
padt serve --host 0.0.0.0               # reachable from other machines: only on a network you trust
```

Nothing here reaches the internet: Gradio's analytics and version check are switched off, no share link is
offered, the page uses system fonts instead of Google Fonts, and server-side rendering (which needs Node) is off.
Gradio is an optional dependency (``pip install 'padt[demo]'``) imported only when the demo is built.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from padt.predict_cli import TASKS, load_pipeline, output_record, render, run_task

if TYPE_CHECKING:
    import gradio as gr

    from padt.pipeline import PaDTPipeline

PLACEHOLDERS = {
    "refer": "a referring expression, e.g. the red circle on the left",
    "detect": "category names separated by commas, e.g. circle, square",
    "caption": "(not used for captions)",
}
#: System font stacks: the default theme would make every browser fetch fonts from Google.
_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "Consolas", "monospace"]


def import_gradio():
    """Import gradio with its analytics (which phone home on import and launch) switched off."""
    # Forced rather than defaulted: this demo promises never to reach the network.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as error:
        raise ImportError("padt serve needs gradio: pip install 'padt[demo]'") from error
    return gradio


def build_app(pipeline: PaDTPipeline, *, max_new_tokens: int = 256) -> gr.Blocks:
    """The demo's Gradio Blocks over ``pipeline`` (not launched: see :func:`launch_app`).

    Element ids for scripts and tests: ``padt-image`` (input image), ``padt-task`` (radio), ``padt-prompt``,
    ``padt-heatmaps`` (checkbox), ``padt-run`` (button), ``padt-overlay`` (output image), ``padt-answer``
    (answer text), ``padt-json`` (the :func:`padt.predict_cli.output_record` JSON), ``padt-gallery``.
    """
    gr = import_gradio()
    from padt.visualize import vrt_step_heatmaps

    def predict(image, task: str, text: str, heatmaps: bool):
        if image is None:
            raise gr.Error("Upload an image first.")
        try:
            output, prompt, require_labels = run_task(pipeline, image, task, text, max_new_tokens=max_new_tokens)
        except ValueError as error:  # an empty expression or category list: tell the user, keep the app up
            raise gr.Error(str(error)) from error
        record = output_record(output, task=task, prompt=prompt)
        steps = []
        if heatmaps:
            steps = vrt_step_heatmaps(pipeline, image, prompt, output=output, require_labels=require_labels)
        gallery = [(heatmap, f"step {n}: {token}") for n, (token, heatmap) in enumerate(steps)]
        return render(pipeline, image, output), output.text, json.dumps(record, indent=2), gallery

    with gr.Blocks(title="PaDT demo", analytics_enabled=False) as app:
        gr.Markdown(
            "## PaDT: patches as decodable tokens\n"
            "The model answers with *visual reference tokens* (VRTs): image patches it names inside its text. "
            "Each run of VRTs is decoded into a box, a mask and a score. Outlined cells are the patches the "
            "model named."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", image_mode="RGB", label="Image", sources=["upload", "clipboard"],
                                 elem_id="padt-image")
                task = gr.Radio(list(TASKS), value="detect", label="Task", elem_id="padt-task")
                text = gr.Textbox(label="Prompt", placeholder=PLACEHOLDERS["detect"], elem_id="padt-prompt")
                heatmaps = gr.Checkbox(value=False, label="Show the model's patch distribution at each VRT",
                                       elem_id="padt-heatmaps")
                run = gr.Button("Run", variant="primary", elem_id="padt-run")
            with gr.Column():
                overlay = gr.Image(type="numpy", format="png", label="Overlay", interactive=False,
                                   elem_id="padt-overlay")
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="padt-answer")
                gallery = gr.Gallery(label="VRT heatmaps", columns=4, height="auto", visible=False,
                                     elem_id="padt-gallery")
                record = gr.Textbox(label="JSON", lines=12, max_lines=30, interactive=False, buttons=["copy"],
                                    elem_id="padt-json")
        task.change(lambda t: gr.Textbox(placeholder=PLACEHOLDERS[t]), task, text)
        heatmaps.change(lambda show: gr.Gallery(visible=show), heatmaps, gallery)
        inputs, outputs = [image, task, text, heatmaps], [overlay, answer, record, gallery]
        run.click(predict, inputs, outputs)
        text.submit(predict, inputs, outputs)
    return app


def launch_app(app: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True, **kwargs: Any):
    """Serve ``app`` at ``http://host:port`` without anything that reaches the internet.

    ``block=False`` returns at once with the server running in a background thread (``app.close()`` stops it).
    Extra ``kwargs`` go to ``gr.Blocks.launch``.
    """
    gr = import_gradio()
    theme = gr.themes.Default(font=_FONTS, font_mono=_MONO_FONTS)
    return app.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,
        mcp_server=False,
        theme=theme,
        prevent_thread_lock=not block,
        **kwargs,
    )


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
