"""The dashboard over HTTP: sign-in, sessions, CSRF, security headers, escaping, the once-shown key, the pages.

tests/browser/ drives the same pages in Chromium."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayServer, gateway_config

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


@contextmanager
def signed_in(gateway: GatewayServer, key: str = MASTER_KEY) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=15) as client:
        resp = client.post("/signin", data={"key": key})
        assert resp.status_code == 303 and resp.headers["location"] == "/", resp.text[:300]
        yield client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def create_key(client: httpx.Client, **fields: str) -> tuple[httpx.Response, str | None]:
    page = client.get("/keys")
    resp = client.post("/keys", data={"csrf": csrf_of(page.text), **fields})
    if resp.status_code != 303:
        return resp, None
    shown = client.get("/keys")
    match = re.search(r'aria-label="New API key" readonly value="([^"]+)"', shown.text)
    return shown, match.group(1) if match else None


def test_pages_need_a_session(gateway) -> None:
    for path in ("/", "/keys", "/models", "/activity", "/connections"):
        resp = httpx.get(gateway.url + path)
        expected = "/signin" if path == "/" else "/signin?" + urlencode({"next": path})
        assert resp.status_code == 303 and resp.headers["location"] == expected, path
    page = httpx.get(gateway.url + "/signin")
    assert page.status_code == 200 and '<label for="key">' in page.text


def test_security_headers_and_cookie_attributes(gateway) -> None:
    page = httpx.get(gateway.url + "/signin")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] and page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline for the policy to refuse
    resp = httpx.post(gateway.url + "/signin", data={"key": MASTER_KEY})
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP here
    behind_tls = httpx.post(gateway.url + "/signin", data={"key": MASTER_KEY}, headers={"X-Forwarded-Proto": "https"})
    assert "; Secure" in behind_tls.headers["set-cookie"]


def test_navigation_names_and_static_assets(gateway) -> None:
    with signed_in(gateway) as client:
        page = client.get("/")
        for label in ("Overview", "API Keys", "Models", "Activity", "Connections"):
            assert f">{label}</a>" in page.text
        for asset, kind in (("/static/dashboard.css", "text/css"), ("/static/dashboard.js", "text/javascript")):
            resp = client.get(asset)
            assert resp.status_code == 200 and resp.headers["content-type"].startswith(kind)


def test_a_regular_key_cannot_sign_in(gateway) -> None:
    with signed_in(gateway) as admin:
        _, regular = create_key(admin, name="not-for-signin")
    assert regular
    resp = httpx.post(gateway.url + "/signin", data={"key": regular})
    assert resp.status_code == 401 and "not a management key" in resp.text and "set-cookie" not in resp.headers
    assert regular not in resp.text


def test_failed_sign_ins_are_throttled_per_address(fake_openai, fake_anthropic, fake_gemini, fake_local,
                                                   tmp_path) -> None:
    """On a gateway of its own: the throttle is per process, and this test leaves 127.0.0.1 throttled."""
    config = gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path / "data")
    proc = GatewayServer(config, tmp_path).start()
    try:
        statuses = [httpx.post(proc.url + "/signin", data={"key": "sk-cr-wrong"}).status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429], statuses
        throttled = httpx.post(proc.url + "/signin", data={"key": MASTER_KEY})  # even the right key, for a while
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0
        assert MASTER_KEY not in throttled.text and "sk-cr-wrong" not in throttled.text
    finally:
        proc.stop()


def test_connections_show_capacity_use_and_route_conditions(fake_openai, fake_anthropic, fake_gemini, fake_local,
                                                            tmp_path) -> None:
    config = gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path / "data")
    config["providers"][0].update(rpm=50, tpm=100000)
    config["routes"] = [{
        "name": "support-bot", "rpm": 7,
        "targets": [{"connection": "oai", "model": "gpt-4o-mini", "name": "small"},
                    {"connection": "ant", "model": "claude-sonnet-4-20250514", "name": "big"}],
        "fallback": ["google/gemini-2.5-flash"],
        "conditions": [{"when": {"prompt_tokens": {"gt": 1000}}, "target": "big"},
                       {"when": {"header": {"x-team": "<b>ops</b>"}}, "action": "block", "message": "not you"}]}]
    proc = GatewayServer(config, tmp_path).start()
    try:
        for model in ("openai/gpt-4o-mini", "openai/gpt-4o-mini", "support-bot"):
            resp = httpx.post(proc.url + "/api/v1/chat/completions", headers=AUTH,
                              json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert resp.status_code == 200, resp.text
        with signed_in(proc) as client:
            page = client.get("/connections").text
    finally:
        proc.stop()
    oai_row = re.search(r"<tr><td>oai</td>.*?</tr>", page, re.S).group(0)
    # Three requests through oai this minute (the route's went to its first target); tokens are the fake's usage.
    assert re.search(r"rpm: 3 / 50", oai_row) and re.search(r"tpm: [1-9]\d* / 100000", oai_row), oai_row
    assert "no limit" in re.search(r"<tr><td>ant</td>.*?</tr>", page, re.S).group(0)
    route_row = re.search(r"<tr><td>support-bot</td>.*?</tr>", page, re.S).group(0)
    assert "rpm: 1 / 7" in route_row and "google/gemini-2.5-flash" in route_row
    assert "prompt_tokens gt 1000 → big" in route_row
    assert "header.x-team eq &#39;&lt;b&gt;ops&lt;/b&gt;&#39; → block (not you)" in route_row  # escaped


def test_management_key_signs_in(gateway) -> None:
    with signed_in(gateway) as admin:
        _, management = create_key(admin, name="ops", management="on")
    assert management
    with signed_in(gateway, management) as client:
        assert client.get("/keys").status_code == 200


def test_state_changes_need_the_csrf_token(gateway) -> None:
    with signed_in(gateway) as client:
        before = httpx.get(gateway.url + "/api/v1/keys", headers=AUTH).json()["data"]
        for data in ({"name": "csrf-less"}, {"name": "csrf-wrong", "csrf": "nope"}):
            resp = client.post("/keys", data=data)
            assert resp.status_code == 403, resp.text[:200]
            assert resp.headers["content-type"].startswith("text/html") and "CSRF token" in resp.text
            assert ">Back to the overview</a>" in resp.text
        cross = client.post("/keys", data={"name": "cross", "csrf": csrf_of(client.get("/keys").text)},
                            headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403
        assert httpx.get(gateway.url + "/api/v1/keys", headers=AUTH).json()["data"] == before
        assert client.post("/signout", data={}).status_code == 403
        assert client.get("/keys").status_code == 200  # still signed in


def test_key_created_shown_once_escaped_and_usable(gateway, fake_openai) -> None:
    with signed_in(gateway) as client:
        page, plaintext = create_key(client, name="<script>alert(1)</script>", limit="5", limit_reset="monthly",
                                     allowed_models="openai/*", rpm="100", priority="high")
        assert plaintext and plaintext.startswith("sk-")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert(1)" not in page.text
        again = client.get("/keys")
        assert plaintext not in again.text and 'aria-label="New API key"' not in again.text
        listed = [k for k in httpx.get(gateway.url + "/api/v1/keys", headers=AUTH).json()["data"]
                  if k["name"] == "<script>alert(1)</script>"]
        assert listed and listed[0]["limit"] == 5 and listed[0]["allowed_models"] == ["openai/*"]
        assert listed[0]["limit_reset"] == "monthly" and listed[0]["rpm"] == 100 and listed[0]["priority"] == "high"
        resp = httpx.post(gateway.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {plaintext}"},
                          json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200
        refused = httpx.post(gateway.url + "/api/v1/chat/completions",
                             headers={"Authorization": f"Bearer {plaintext}"},
                             json={"model": "anthropic/claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 403
        key_hash = listed[0]["hash"]
        deadline = time.monotonic() + 10  # generation records are written in batches, off the request path
        while "openai/gpt-4o-mini" not in (activity := client.get("/activity", params={"key": key_hash})).text:
            assert time.monotonic() < deadline, "the request never showed in Activity"
            time.sleep(0.1)
        assert "openai/gpt-4o-mini" in activity.text and "&lt;script&gt;" in activity.text
        csrf = csrf_of(again.text)
        assert client.post("/keys/update", data={"csrf": csrf, "hash": key_hash, "action": "disable"}).status_code == 303
        disabled = httpx.post(gateway.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {plaintext}"},
                              json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert disabled.status_code == 401
        assert client.post("/keys/update", data={"csrf": csrf, "hash": key_hash, "action": "delete"}).status_code == 303
        assert key_hash not in client.get("/keys").text


def test_bad_key_form_is_a_clear_error(gateway) -> None:
    with signed_in(gateway) as client:
        page, plaintext = create_key(client, name="bad", limit="-1")
        assert page.status_code == 400 and plaintext is None and "limit" in page.text


def test_sign_out_ends_the_session(gateway) -> None:
    with signed_in(gateway) as client:
        csrf = csrf_of(client.get("/").text)
        resp = client.post("/signout", data={"csrf": csrf})
        assert resp.status_code == 303 and "Max-Age=0" in resp.headers["set-cookie"]
        token = resp.request.headers["cookie"]
    replay = httpx.get(gateway.url + "/keys", headers={"Cookie": token})
    assert replay.status_code == 303 and replay.headers["location"].startswith("/signin")  # the old cookie is dead


@pytest.mark.parametrize("path", ["/models", "/connections", "/activity?page=x", "/"])
def test_pages_render(gateway, path) -> None:
    with signed_in(gateway) as client:
        resp = client.get(path)
        assert resp.status_code == 200 and "Traceback" not in resp.text
        if path == "/models":
            assert "openai/gpt-4o-mini" in resp.text and "oai" in resp.text
        if path == "/connections":
            assert "ant" in resp.text and "gemini" in resp.text


def test_sign_in_returns_to_the_page_asked_for_and_only_to_this_site(gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=15) as client:
        page = client.get("/signin", params={"next": "/activity?page=2"})
        assert 'name="next" value="/activity?page=2"' in page.text
        resp = client.post("/signin", data={"key": MASTER_KEY, "next": "/activity?page=2"})
        assert resp.headers["location"] == "/activity?page=2"
    for hostile in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        resp = httpx.post(gateway.url + "/signin", data={"key": MASTER_KEY, "next": hostile})
        assert resp.headers["location"] == "/", hostile


def test_activity_detail_csv_and_credits(gateway, fake_openai) -> None:
    sent_hour = time.strftime("%H:00", time.gmtime())
    resp = httpx.post(gateway.url + "/api/v1/chat/completions", headers={**AUTH, "X-Title": "=cmd|evil"},
                      json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    generation_id = resp.json()["id"]
    with signed_in(gateway) as client:
        deadline = time.monotonic() + 10
        while (detail := client.get("/activity/view", params={"id": generation_id})).status_code == 404:
            assert time.monotonic() < deadline, "the record never arrived"
            time.sleep(0.1)
        assert detail.status_code == 200
        assert "oai" in detail.text and "gpt-4o-mini" in detail.text and "prompt " in detail.text
        listing = client.get("/activity", params={"status": "ok", "model": "openai/gpt-4o-mini"})
        assert generation_id in listing.text
        assert generation_id not in client.get("/activity", params={"status": "failed"}).text
        exported = client.get("/activity.csv", params={"model": "openai/gpt-4o-mini"})
        assert exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        lines = exported.text.splitlines()
        assert lines[0].startswith("id,created_at,key_hash,model")
        assert any(line.startswith(generation_id) for line in lines)
        assert "'=cmd|evil" in exported.text and ",=cmd" not in exported.text  # no formula for a spreadsheet
        assert client.get("/activity/view", params={"id": "gen-nope"}).status_code == 404
        credits = client.get("/credits")
        assert credits.status_code == 200 and "<svg" in credits.text and "Spend per day" in credits.text
        overview = client.get("/", params={"window": "7d"})
        assert overview.text.count("<svg") == 4 and "Top keys" in overview.text
        assert "Error rate" in overview.text and re.search(r"\d+ / \d+ ms", overview.text)
        assert "Top apps" in overview.text and "=cmd|evil</a>" in overview.text
        hourly = client.get("/", params={"window": "24h"}).text
        assert "Requests per hour" in hourly and "The last 24 hours" in hourly and "=cmd|evil</a>" in hourly
        assert re.search(rf"<title>{sent_hour}: [1-9]\d*</title>", hourly), "that hour's bar counts the request"
        today = time.strftime("%Y-%m-%d", time.gmtime())
        yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
        assert generation_id in client.get("/activity", params={"app": "=cmd|evil", "from": today, "to": today}).text
        assert generation_id not in client.get("/activity", params={"app": "other"}).text
        assert generation_id not in client.get("/activity", params={"to": yesterday}).text
        assert client.get("/activity", params={"from": "not-a-date"}).status_code == 200


def test_models_filters_and_sorts(gateway) -> None:
    with signed_in(gateway) as client:
        google = client.get("/models", params={"vendor": "google"}).text
        assert "google/gemini-2.5-flash" in google and "openai/gpt-4o-mini" not in google
        images = client.get("/models", params={"modality": "image"}).text
        assert "openai/gpt-4o-mini" in images and "test/slow" not in images
        by_price = client.get("/models", params={"sort": "price"}).text
        assert by_price.index("test/slow") < by_price.index("openai/gpt-4o-mini")  # unpriced (0) first
        assert "healthy" in by_price


def test_edit_a_key(gateway) -> None:
    with signed_in(gateway) as client:
        _, plaintext = create_key(client, name="to-edit", limit="5", allowed_models="openai/*", rpm="10")
        key = next(k for k in httpx.get(gateway.url + "/api/v1/keys", headers=AUTH).json()["data"]
                   if k["name"] == "to-edit")
        form = client.get("/keys/edit", params={"hash": key["hash"]})
        assert 'value="to-edit"' in form.text and 'value="openai/*"' in form.text
        csrf = csrf_of(form.text)
        base = {"csrf": csrf, "hash": key["hash"], "action": "edit", "name": "edited", "priority": "low"}
        resp = client.post("/keys/update", data={**base, "limit": "7", "limit_reset": "daily", "allowed_models": "",
                                                 "rpm": "", "tpm": "500", "expires_at": ""})
        assert resp.status_code == 303
        data = httpx.get(gateway.url + f"/api/v1/keys/{key['hash']}", headers=AUTH).json()["data"]
        assert (data["name"], data["limit"], data["limit_reset"], data["allowed_models"], data["rpm"], data["tpm"],
                data["priority"]) == ("edited", 7, "daily", None, None, 500, "low")
        bad = client.post("/keys/update", data={**base, "limit": "-2"})
        assert bad.status_code == 400 and "limit" in bad.text
        assert client.post("/keys/update", data={**base, "csrf": "x"}).status_code == 403


def test_money_is_never_shown_as_zero_when_it_is_not() -> None:
    from crossroads.dashboard.app import _plain_number, _usd

    assert _usd(0) == "$0.00" and _usd(9.2e-11) == "<$0.000001" and _usd(2.5e-5) == "$0.000025"
    assert _usd(1.5) == "$1.50" and _usd(1.23456) == "$1.2346" and _usd(1234.5) == "$1,234.50" and _usd(None) == "—"
    assert _usd(5) == "$5.00" and _usd(0.001) == "$0.001" and _plain_number(1e-05) == "0.00001" and _plain_number(5.0) == "5"
