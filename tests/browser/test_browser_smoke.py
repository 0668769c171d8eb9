"""The browser infrastructure on its own, without the dashboard: Chromium loads a page from a loopback server, runs
its script on a click, and a screenshot is written."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tests.browser.conftest import SCREENSHOTS, screenshot

PAGE = b"""<!doctype html>
<title>Smoke</title>
<p id="out">before</p>
<button id="go">Change</button>
<script>document.getElementById("go").onclick = () => { document.getElementById("out").textContent = "after"; };</script>
"""


@pytest.fixture
def site() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free one
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_click_runs_the_page_script(page, site) -> None:
    page.goto(site)
    assert page.locator("#out").text_content() == "before"
    page.get_by_role("button", name="Change").click()
    page.wait_for_function("document.getElementById('out').textContent === 'after'")
    assert page.locator("#out").text_content() == "after"
    screenshot(page, "smoke")
    assert (SCREENSHOTS / "smoke.png").stat().st_size > 0
