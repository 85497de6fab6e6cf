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

Uploads: Gradio refuses a file above :data:`DEFAULT_MAX_FILE_SIZE` (``--max-file-size``) before storing it. The
demo reads an upload itself with :func:`padt.vision.images.load_image` (its rules per pixel type, its pixel limit
against decompression bombs), so a file that is not an image, or too large an image, gets a message that names
the file as it was uploaded, never where the server keeps it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padt.apps.tasks import TASKS, output_record, render, run_task, task_prompt

if TYPE_CHECKING:
    import gradio as gr
    from PIL import Image

    from padt.pipeline import PaDTPipeline

PLACEHOLDERS = {
    "refer": "a referring expression, e.g. the red circle on the left",
    "detect": "category names separated by commas, e.g. circle, square",
    "caption": "(not used for captions)",
}
#: System font stacks: the default theme would make every browser fetch fonts from Google.
_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "Consolas", "monospace"]
#: Largest upload ``padt serve`` accepts by default (``--max-file-size``): any photo fits, a video does not.
DEFAULT_MAX_FILE_SIZE = "20MB"
#: Units of :func:`parse_file_size`, powers of 1024 as in Gradio.
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def parse_file_size(size: str | int) -> int:
    """Bytes of an upload limit: an integer (bytes) or a string such as ``"20MB"``, ``"512KB"`` (B, KB, MB, GB)."""
    if isinstance(size, int) and not isinstance(size, bool):
        number, unit = size, "B"
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(size))
        if match is None or match.group(2).upper() not in ("", *_SIZE_UNITS):
            raise ValueError(f"max file size must be a byte count or like '20MB' (units B, KB, MB, GB), got {size!r}")
        number, unit = int(match.group(1)), match.group(2).upper() or "B"
    if number <= 0:
        raise ValueError(f"max file size must be positive, got {size!r}")
    return number * _SIZE_UNITS[unit]


def import_gradio():
    """Import gradio with its analytics (which phone home on import and launch) switched off."""
    # Forced rather than defaulted: this demo promises never to reach the network.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as error:
        raise ImportError("padt serve needs gradio: pip install 'padt[demo]'") from error
    return gradio


def build_app(pipeline: PaDTPipeline, *, max_new_tokens: int | None = None) -> gr.Blocks:
    """The demo's Gradio Blocks over ``pipeline`` (not launched: see :func:`launch_app`).

    Element ids for scripts and tests: ``padt-image`` (input image), ``padt-task`` (radio), ``padt-prompt``,
    ``padt-heatmaps`` (checkbox), ``padt-run`` (button), ``padt-overlay`` (output image), ``padt-answer``
    (answer text), ``padt-json`` (the :func:`padt.apps.tasks.output_record` JSON), ``padt-gallery``.
    """
    gr = import_gradio()
    predict = _predictor(pipeline, max_new_tokens)
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
        # preprocess=False: predict gets the upload's file record and reads it with padt's rules (uploaded_image),
        # instead of Gradio decoding whatever was uploaded and failing with the server-side path in its error.
        run.click(predict, inputs, outputs, preprocess=False)
        text.submit(predict, inputs, outputs, preprocess=False)
    return app


def _predictor(pipeline: PaDTPipeline, max_new_tokens: int | None):
    """The demo's event handler: (upload record, task, text, heatmaps?) -> overlay, answer, JSON, gallery.

    A generator: while the model writes, the answer's text grows and each object appears on the overlay as soon
    as it is decoded (:mod:`padt.streaming`); the JSON and the heatmaps come with the finished answer.
    """
    gr = import_gradio()
    from padt.results import GroundedObject, GroundedOutput
    from padt.visualize import vrt_step_heatmaps

    def predict(upload: Any, task: str, text: str, heatmaps: bool):
        image = uploaded_image(upload)
        try:
            task_prompt(task, text)  # an empty expression or category list: tell the user, keep the app up
        except ValueError as error:
            raise gr.Error(str(error)) from error
        length = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}  # default: the pipeline's
        events: queue.Queue = queue.Queue()
        worker = threading.Thread(target=_answer_into, args=(events, pipeline, image, task, text, length))
        worker.start()
        answer, objects, geometry = "", [], pipeline.processor.geometry(image)
        while (event := events.get()) is not _DONE:
            if isinstance(event, GroundedObject):
                objects.append(event)
                partial = GroundedOutput(answer, list(objects), [], [geometry.original_hw], [geometry])
                yield render(image, partial), answer, "", []
            elif isinstance(event, str):
                answer += event
                yield gr.skip(), answer, "", []
        worker.join()
        output, prompt, require_labels = events.get()
        if isinstance(output, Exception):
            raise gr.Error(str(output)) from output
        record = output_record(output, task=task, prompt=prompt)
        steps = []
        if heatmaps:
            steps = vrt_step_heatmaps(pipeline, image, prompt, output=output, require_labels=require_labels)
        gallery = [(heatmap, f"step {n}: {token}") for n, (token, heatmap) in enumerate(steps)]
        yield render(image, output), output.text, json.dumps(record, indent=2), gallery

    return predict


_DONE = object()  # the end of a streamed answer, after which the result follows on the queue


def _answer_into(events: queue.Queue, pipeline, image, task: str, text: str, length: dict[str, Any]) -> None:
    """Run one task with a streamer that puts text pieces and objects on ``events``, then ``_DONE`` and the
    result ``(output, prompt, require_labels)`` (or ``(error, None, None)``)."""
    try:
        result = run_task(pipeline, image, task, text, streamer=events.put, **length)
    except Exception as error:  # shown to the user by the handler; the app stays up
        result = (error, None, None)
    events.put(_DONE)
    events.put(result)


def uploaded_image(upload: Any) -> Image.Image:
    """The RGB image of a Gradio upload record (``{"path", "orig_name", ...}``), by :func:`load_image`'s rules.

    Raises ``gr.Error`` (shown to the user) when nothing was uploaded or the file is not an image padt can use;
    the message names the file as the user called it, never the server's copy.
    """
    gr = import_gradio()
    from PIL import UnidentifiedImageError

    from padt.vision.images import load_image

    path = upload.get("path") if isinstance(upload, dict) else None
    if not path:
        raise gr.Error("Upload an image first (PNG, JPEG, WebP, GIF, BMP or TIFF).")
    # Only harmless characters of the user's file name go back into the page.
    name = re.sub(r"[^\w .()+-]", "_", Path(str(upload.get("orig_name") or "the upload")).name)[:80]
    try:
        return load_image(path)
    except FileNotFoundError as error:
        raise gr.Error(f"{name} is no longer on the server: upload it again.") from error
    except ValueError as error:
        if isinstance(error.__cause__, UnidentifiedImageError):
            message = f"{name} is not an image: upload a PNG, JPEG, WebP, GIF, BMP or TIFF file."
        else:
            message = f"cannot use {name}: " + str(error).replace(str(path), name)
        raise gr.Error(message) from error


def launch_app(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
    **kwargs: Any,
):
    """Serve ``app`` at ``http://host:port`` without anything that reaches the internet.

    ``host`` defaults to this machine only. Uploads above ``max_file_size`` (:func:`parse_file_size`; default
    :data:`DEFAULT_MAX_FILE_SIZE`) are refused before they are stored. ``block=False`` returns at once with the
    server running in a background thread (``app.close()`` stops it). Extra ``kwargs`` go to ``gr.Blocks.launch``.
    """
    limit = parse_file_size(max_file_size)
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
        max_file_size=limit,
        **kwargs,
    )
