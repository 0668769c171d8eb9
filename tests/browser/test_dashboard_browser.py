"""A team lead's first session in the dashboard, in Chromium: sign in, make a key, use it, see it, disable it."""

from __future__ import annotations

import re
import time

import httpx

from crossroads.dashboard.app import _usd as usd
from tests.browser.conftest import screenshot
from tests.conftest import MASTER_KEY

CHAT = "/api/v1/chat/completions"
HELLO = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def sign_in(page, gateway) -> None:
    page.goto(gateway.url + "/")
    assert page.url.endswith("/signin")
    screenshot(page, "signin")
    page.get_by_label("Management key").fill(MASTER_KEY)
    page.get_by_role("button", name="Sign in with key").click()
    page.get_by_role("link", name="Overview").wait_for()


def test_key_lifecycle_in_the_browser(page, gateway, fake_openai) -> None:
    sign_in(page, gateway)
    for label in ("Overview", "API Keys", "Models", "Activity", "Connections"):
        assert page.get_by_role("link", name=label).is_visible()
    page.get_by_role("link", name="API Keys").click()
    page.get_by_label("Name").fill("<script>alert(1)</script> browser")
    page.get_by_label("Credit limit (USD)").fill("5")
    page.get_by_label("Allowed models (comma separated, globs allowed)").fill("openai/*")
    page.get_by_role("button", name="Create key").click()
    new_key = page.get_by_label("New API key")
    plaintext = new_key.input_value()
    assert plaintext.startswith("sk-")
    assert page.get_by_text("<script>alert(1)</script> browser").is_visible()  # shown as text, never run
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == plaintext
    screenshot(page, "keys")

    resp = httpx.post(gateway.url + CHAT, headers={"Authorization": f"Bearer {plaintext}"}, json=HELLO, timeout=15)
    assert resp.status_code == 200
    generation_id = resp.json()["id"]
    cost = resp.json()["usage"]["cost"]

    page.reload()  # a second visit never shows the key again
    assert page.get_by_label("New API key").count() == 0 and plaintext not in page.content()

    deadline = time.monotonic() + 10
    while True:  # the record is written off the request path, in a batch
        page.get_by_role("link", name="Activity").click()
        if page.get_by_role("link", name=re.compile(r"\d{4}-\d\d-\d\d")).count() and generation_id in page.content():
            break
        assert time.monotonic() < deadline, "the request never showed in Activity"
        time.sleep(0.2)
    row = page.locator("tr", has_text="<script>alert(1)</script> browser").first
    assert "openai/gpt-4o-mini" in row.inner_text() and usd(cost) in row.inner_text()
    screenshot(page, "activity")

    page.get_by_role("link", name="API Keys").click()
    page.locator("tr", has_text="<script>alert(1)</script> browser").get_by_role("button", name="Disable").click()
    assert page.locator("tr", has_text="<script>alert(1)</script> browser").get_by_role("button", name="Enable").is_visible()
    refused = httpx.post(gateway.url + CHAT, headers={"Authorization": f"Bearer {plaintext}"}, json=HELLO, timeout=15)
    assert refused.status_code == 401

    for name in ("Overview", "Models", "Connections", "Credits"):
        page.get_by_role("link", name=name).click()
        page.get_by_role("heading", name=name).wait_for()
        screenshot(page, name.lower())
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.get_by_role("link", name="API Keys").click()
    assert page.get_by_role("button", name="Create key").is_visible()
    screenshot(page, "keys-phone")

    page.get_by_role("button", name="Sign out").click()
    assert page.url.endswith("/signin")
    page.goto(gateway.url + "/keys")
    assert "/signin" in page.url


def test_a_form_post_without_the_csrf_token_is_refused(page, gateway) -> None:
    sign_in(page, gateway)
    page.get_by_role("link", name="API Keys").click()
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    page.get_by_label("Name").fill("no-csrf")
    page.get_by_role("button", name="Create key").click()
    assert "CSRF" in page.content()
    keys = httpx.get(gateway.url + "/api/v1/keys", headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["data"]
    assert "no-csrf" not in [k["name"] for k in keys]
