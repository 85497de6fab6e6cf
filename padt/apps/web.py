"""The local Gradio web demo behind ``padt serve``. Upload an image, pick refer / detect / caption, see the overlay
+ JSON.

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

import json
import os
from typing import TYPE_CHECKING, Any

from padt.apps.tasks import TASKS, output_record, render, run_task

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
    (answer text), ``padt-json`` (the :func:`padt.apps.tasks.output_record` JSON), ``padt-gallery``.
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
        return render(image, output), output.text, json.dumps(record, indent=2), gallery

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
