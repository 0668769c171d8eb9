"""Browser tests: Debian's Chromium driven by Playwright (launched by path: browser downloads are impossible here).

scripts/test installs Chromium when it is missing (scripts/ci-browser.sh). Without it these tests skip, except under
CI, where they fail. Screenshots go to test-artifacts/screenshots/ (not committed) for a reviewer to look at.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("CROSSROADS_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# Without the background-networking flags Chromium keeps trying Google's hosts, which this network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


# Package scope: sync Playwright keeps an event loop running in the main thread while it is started, and the tests
# outside this folder call asyncio.run().
@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} not found: scripts/ci-browser.sh installs Debian's chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    documents = watch_documents(context)
    yield page
    check_documents(documents)
    context.close()


def watch_documents(context) -> list:
    """Every document the context's pages load, for tests/secret_watch.py once the test is done."""
    documents: list = []
    context.on("response", lambda response: documents.append(response)
               if response.request.resource_type == "document" else None)
    return documents


def check_documents(documents: list) -> None:
    from playwright.sync_api import Error

    from tests import secret_watch

    for response in documents:
        if 300 <= response.status < 400:
            continue  # a redirect has no body
        try:
            body = response.body()
        except Error:  # evicted from the browser's buffer by later loads: seen by the test when it was shown
            continue
        url = urlsplit(response.url)
        secret_watch.check_answer(response.request.method, url.path, response.status,
                                  response.headers.get("content-type", ""), body)


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@contextmanager
def loopback_site(page_for: Callable[[str], bytes | None]) -> Iterator[str]:
    """An HTTP server on a free loopback port, in a thread, answering GET with the HTML `page_for(path)` gives
    (404 for None); yields its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            body = page_for(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
