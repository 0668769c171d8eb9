"""OAuth PKCE in Chromium, as an app built for OpenRouter runs it: the user is sent to /auth, signs in, approves,
and the app's callback server on loopback gets the code it trades for a key."""

from __future__ import annotations

import base64
import hashlib
import http.server
import secrets
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.browser.conftest import screenshot
from tests.conftest import MASTER_KEY


@pytest.fixture
def callback_server() -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    received: list[dict[str, list[str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            if urlsplit(self.path).path == "/callback":  # not the browser's /favicon.ico
                received.append(parse_qs(urlsplit(self.path).query))
            body = b"<!doctype html><title>App</title><h1>Signed in to the app</h1>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/callback", received
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("method", ["S256", "plain"])
def test_pkce_in_the_browser(page, gateway, fake_openai, callback_server, method) -> None:
    callback, received = callback_server
    verifier = secrets.token_urlsafe(48)
    challenge = (base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                 if method == "S256" else verifier)
    page.goto(gateway.url + "/auth?" + urlencode({"callback_url": callback, "code_challenge": challenge,
                                                  "code_challenge_method": method}))
    page.get_by_label("Management key").fill(MASTER_KEY)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Authorise an app").wait_for()
    assert "127.0.0.1" in page.content()
    page.get_by_label("Credit limit (USD, optional)").fill("1.5")
    screenshot(page, f"consent-{method}")
    page.get_by_role("button", name="Approve").click()
    page.get_by_role("heading", name="Signed in to the app").wait_for()
    code = received[-1]["code"][0]

    resp = httpx.post(gateway.url + "/api/v1/auth/keys", timeout=15,
                      json={"code": code, "code_verifier": verifier, "code_challenge_method": method})
    assert resp.status_code == 200, resp.text
    key = resp.json()["key"]
    chat = httpx.post(gateway.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=15,
                      json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200
    info = httpx.get(gateway.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert info["limit"] == 1.5 and info["label"]
