"""OAuth PKCE in Chromium, as an app built for OpenRouter runs it: the user is sent to /auth, signs in, approves,
and the app's callback server on loopback gets the code it trades for a key."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.browser.conftest import loopback_site, screenshot
from tests.conftest import MASTER_KEY

APP_PAGE = b"<!doctype html><title>App</title><h1>Signed in to the app</h1>"


@pytest.fixture
def callback_server() -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    """The app's side: its callback page, and the query of every request to it."""
    received: list[dict[str, list[str]]] = []

    def page_for(path: str) -> bytes | None:
        if urlsplit(path).path != "/callback":  # e.g. the browser's /favicon.ico
            return None
        received.append(parse_qs(urlsplit(path).query))
        return APP_PAGE

    with loopback_site(page_for) as url:
        yield url + "/callback", received


@pytest.mark.parametrize("method", ["S256", "plain"])
def test_pkce_in_the_browser(page, gateway, fake_openai, callback_server, method) -> None:
    callback, received = callback_server
    verifier = secrets.token_urlsafe(48)
    challenge = (base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                 if method == "S256" else verifier)
    page.goto(gateway.url + "/auth?" + urlencode({"callback_url": callback, "code_challenge": challenge,
                                                  "code_challenge_method": method}))
    page.get_by_label("Management key").fill(MASTER_KEY)
    page.get_by_role("button", name="Sign in with key").click()
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
