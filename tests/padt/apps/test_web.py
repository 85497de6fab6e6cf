"""The web demo end to end in headless Chromium: upload an image, detect, read the overlay and the JSON back.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` and ``gradio`` pip packages;
``playwright install`` is never run (it downloads browsers): the test drives the system Chromium. Set
``PADT_CHROMIUM=/path/to/chrome`` to use another Chromium build. Where something is missing the browser tests are
skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from padt.cli import build_parser

H, W = 120, 180
RESULT_KEYS = {"task", "prompt", "text", "objects", "problems", "image_sizes"}
# gradio 6.31's queue calls pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")
ANSWER = 'There are 2 "circle" (<|VRT_3|><|VRT_4|>, <|VRT_10|>) in this image.'


def find_chromium() -> str:
    """``$PADT_CHROMIUM``, else the first Chromium on PATH (Debian installs ``/usr/bin/chromium``); else skip."""
    override = os.environ.get("PADT_CHROMIUM")
    if override:
        if not Path(override).is_file():
            pytest.skip(f"PADT_CHROMIUM={override} is not a file")
        return override
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium executable: apt-get install -y chromium (or set PADT_CHROMIUM=/path/to/chrome); "
                "looked for chromium, chromium-browser, google-chrome, chrome on PATH")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_binds_localhost_by_default_and_offers_no_share_link():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--share"])


def test_serve_without_a_model_exits_2_and_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio", reason="gradio is missing: pip install gradio")
    from padt.cli import main

    monkeypatch.setenv("PADT_DEMO_MODEL", str(tmp_path / "demo-model"))
    assert main(["serve", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "demo-model") in err and "make demo" in err


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright pip package is missing: pip install playwright (no `playwright install`)")
    executable = find_chromium()
    with sync_playwright() as playwright:
        try:
            # --no-sandbox: containers run tests as root, where Chromium's sandbox refuses to start.
            chromium = playwright.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
        except PlaywrightError as error:
            pytest.skip(f"playwright could not launch Chromium at {executable}: {str(error).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server():
    """The demo app over a random tiny pipeline, served on a free 127.0.0.1 port from a background thread."""
    try:
        from padt.apps.web import build_app, launch_app
    except ImportError:
        pytest.skip("gradio is missing: pip install gradio")
    from padt.testing import tiny_pipeline

    pipeline = tiny_pipeline(max_new_tokens=8)
    app = build_app(pipeline, max_new_tokens=8)
    port = free_port()
    launch_app(app, host="127.0.0.1", port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", pipeline
    finally:
        app.close()


def run_once(page, image_path: Path, task: str, prompt: str, timeout_ms: int = 30_000) -> dict:
    """Fill in the form, press Run, wait for a new JSON result and return it parsed."""
    page.locator("#padt-image input[type=file]").set_input_files(str(image_path))
    page.get_by_label(task, exact=True).check()
    page.locator("#padt-prompt textarea").fill(prompt)
    previous = page.locator("#padt-json textarea").input_value()
    page.locator("#padt-run").click()
    page.wait_for_function(
        "previous => { const box = document.querySelector('#padt-json textarea');"
        " return box && box.value.length > 0 && box.value !== previous; }",
        arg=previous,
        timeout=timeout_ms,
    )
    return json.loads(page.locator("#padt-json textarea").input_value())


def test_upload_detect_and_read_the_results(browser, server, tmp_path, monkeypatch):
    url, pipeline = server
    image = np.full((H, W, 3), 235, dtype=np.uint8)
    image[30:90, 40:100] = (200, 30, 30)
    image_path = tmp_path / "scene.png"
    Image.fromarray(image).save(image_path)

    page = browser.new_page()
    outside = []

    def refuse_the_internet(route):
        # The demo promises to work offline: record and refuse every request that leaves this machine.
        if urlparse(route.request.url).hostname not in ("127.0.0.1", "localhost"):
            outside.append(route.request.url)
            return route.abort()
        return route.continue_()

    page.route("**/*", refuse_the_internet)
    page.goto(url, wait_until="domcontentloaded")

    # 1) The random model as it is: it answers noise, but the page must still show a result.
    result = run_once(page, image_path, "detect", "circle, square")
    assert RESULT_KEYS <= set(result)
    assert result["task"] == "detect" and '["circle", "square"]' in result["prompt"]
    assert result["image_sizes"] == [[H, W]]
    overlay = page.locator("#padt-overlay img")
    assert overlay.count() == 1 and overlay.get_attribute("src")

    # 2) A known answer (teacher-forced through the real model): objects and per-step heatmaps show up.
    def ask(images, prompts, *, require_labels=True, **generate_kwargs):
        return [pipeline.decode_answer(i, ANSWER, p, require_labels=require_labels) for i, p in zip(images, prompts)]

    monkeypatch.setattr(pipeline, "ask", ask)
    page.locator("#padt-heatmaps input[type=checkbox]").check()
    result = run_once(page, image_path, "detect", "circle")
    assert [o["patches"] for o in result["objects"]] == [[3, 4], [10]]
    for obj in result["objects"]:
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 <= x2 <= W and 0 <= y1 <= y2 <= H
    page.locator("#padt-gallery img").nth(2).wait_for(timeout=10_000)  # one picture per VRT step: 3
    assert page.locator("#padt-gallery img").count() >= 3
    assert "circle" in page.locator("#padt-answer textarea").input_value()
    assert outside == [], f"the page tried to reach the internet: {outside}"
    page.close()
