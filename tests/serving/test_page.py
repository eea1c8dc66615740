"""The web chat page in real headless Chromium: upload an image, ask, watch the answer stream in, ask again.

Needs Debian's chromium (``apt-get install chromium``) and the playwright Python package; skipped
without them. Saves a screenshot in the test's temporary folder; with ``OPENOVIS_SCREENSHOT=PATH``
set, there instead (``OPENOVIS_SCREENSHOT=docs/serve-page.png`` refreshes the README's picture).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def test_page_sends_an_image_and_streams_the_answer(server, tmp_path) -> None:
    image = tmp_path / "shapes.png"
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).ellipse((8, 8, 40, 40), fill="red")
    picture.save(image)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--no-proxy-server"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 620})
            deltas: list[str] = []
            page.on(
                "response",
                lambda r: deltas.append(r.headers.get("content-type", "")) if "chat" in r.url else None,
            )
            page.goto(server.url + "/")
            sync_api.expect(page.locator("#model")).to_have_text("tiny")
            page.set_input_files("#file", str(image))
            sync_api.expect(page.locator("#preview")).to_be_visible()
            page.fill("#question", "What color is the circle?")
            page.fill("#max-tokens", "12")
            page.click("#send")
            sync_api.expect(page.locator("#status")).to_contain_text("done", timeout=60_000)
            assert deltas and deltas[-1].startswith("text/event-stream")
            user = page.locator(".msg.user").first
            assert user.locator("img").count() == 1 and "circle" in user.inner_text()
            first = page.locator(".msg.assistant").first.inner_text()
            assert (
                first.strip() and page.locator(".msg.error").count() == 0
            )  # the test model answers in letters
            # a second turn: the whole conversation (with the first image) goes back to the server
            page.fill("#question", "And the background?")
            page.click("#send")
            sync_api.expect(page.locator(".msg.assistant")).to_have_count(2)
            sync_api.expect(page.locator("#send")).to_be_enabled(timeout=60_000)
            assert page.locator(".msg.error").count() == 0
            assert page.locator(".msg.assistant").first.inner_text() == first
            shot = Path(os.environ.get("OPENOVIS_SCREENSHOT") or tmp_path / "serve-page.png")
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
        finally:
            browser.close()
