"""OAuth PKCE as OpenRouter runs it: /auth in the dashboard, POST /api/v1/auth/keys for the app."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import yaml

from crossroads.config import ConfigError, load_config
from crossroads.gate import oauth
from tests.conftest import MASTER_KEY, GatewayServer, gateway_config

CALLBACK = "http://localhost:3999/cb?state=xyz"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def approve(gateway: GatewayServer, params: dict[str, str], *, limit: str = "", decision: str = "approve"
            ) -> httpx.Response:
    """Sign in (following /auth's redirect through the sign-in page), then answer the consent page."""
    with httpx.Client(base_url=gateway.url, timeout=15) as client:
        first = client.get("/auth", params=params)
        assert first.status_code == 303 and first.headers["location"].startswith("/signin?next=")
        signed = client.post("/signin", data={"key": MASTER_KEY,
                                              "next": parse_qs(urlsplit(first.headers["location"]).query)["next"][0]})
        consent = client.get(signed.headers["location"])
        assert consent.status_code == 200, consent.text[:300]
        assert urlsplit(params["callback_url"]).hostname in consent.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', consent.text).group(1)
        return client.post("/auth", data={"csrf": csrf, "limit": limit, "decision": decision, **params})


def code_of(resp: httpx.Response, callback: str = CALLBACK) -> str:
    assert resp.status_code == 303, resp.text[:300]
    location = resp.headers["location"]
    assert location.startswith(callback.split("?")[0])
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["xyz"]  # the app's own parameters survive
    return query["code"][0]


def exchange(gateway: GatewayServer, **body: str) -> httpx.Response:
    return httpx.post(gateway.url + "/api/v1/auth/keys", json=body, timeout=15)


@pytest.mark.parametrize("method", ["S256", "plain", None])
def test_pkce_end_to_end(gateway, fake_openai, method) -> None:
    verifier = secrets.token_urlsafe(48)
    params = {"callback_url": CALLBACK}
    if method is not None:
        params |= {"code_challenge": s256(verifier) if method == "S256" else verifier, "code_challenge_method": method}
    code = code_of(approve(gateway, params, limit="2.5"))
    body = {"code": code} | ({"code_verifier": verifier, "code_challenge_method": method} if method else {})
    resp = exchange(gateway, **body)
    assert resp.status_code == 200, resp.text
    payload = resp.json()
    assert payload["key"].startswith("sk-") and payload["user_id"] == "master"
    chat = httpx.post(gateway.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {payload['key']}"},
                      json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=15)
    assert chat.status_code == 200
    key = httpx.get(gateway.url + "/api/v1/key", headers={"Authorization": f"Bearer {payload['key']}"}).json()["data"]
    assert key["limit"] == 2.5
    assert exchange(gateway, **body).status_code == 403  # single use


def test_wrong_verifier_and_wrong_method(gateway) -> None:
    verifier = secrets.token_urlsafe(48)
    params = {"callback_url": CALLBACK, "code_challenge": s256(verifier), "code_challenge_method": "S256"}
    code = code_of(approve(gateway, params))
    resp = exchange(gateway, code=code, code_verifier="not-it", code_challenge_method="S256")
    assert resp.status_code == 403 and resp.json()["error"]["code"] == 403
    assert exchange(gateway, code=code, code_verifier=verifier, code_challenge_method="S256").status_code == 403
    code = code_of(approve(gateway, params))
    resp = exchange(gateway, code=code, code_verifier=verifier, code_challenge_method="plain")
    assert resp.status_code == 400 and "code_challenge_method" in resp.json()["error"]["message"]
    assert exchange(gateway, code="made-up").status_code == 403
    assert exchange(gateway).status_code == 400
    assert exchange(gateway, code=code, code_challenge_method="S512").status_code == 400


def test_denied_request_goes_back_with_an_error(gateway) -> None:
    resp = approve(gateway, {"callback_url": CALLBACK}, decision="deny")
    assert resp.status_code == 303
    assert parse_qs(urlsplit(resp.headers["location"]).query) == {"state": ["xyz"], "error": ["access_denied"]}


@pytest.mark.parametrize("callback", ["http://evil.example/cb", "ftp://localhost/x", "javascript:alert(1)",
                                      "https://user:pw@example.com/", "", "http://10.0.0.5:8000/cb",
                                      "https://a;b/cb", "https://a b/cb"])
def test_callback_urls_are_checked_before_sign_in(gateway, callback) -> None:
    resp = httpx.get(gateway.url + "/auth", params={"callback_url": callback})
    # A person's browser gets a page saying what is wrong, escaped, with the dashboard's security headers.
    assert resp.status_code == 400 and resp.headers["content-type"].startswith("text/html")
    assert 'role="alert">Invalid authorisation request: callback_url' in resp.text
    assert resp.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("params", [{"code_challenge_method": "S512", "code_challenge": "x"},
                                    {"code_challenge_method": "S256"}, {"code_challenge": "x" * 300}])
def test_bad_challenges_are_refused(gateway, params) -> None:
    resp = httpx.get(gateway.url + "/auth", params={"callback_url": CALLBACK, **params})
    assert resp.status_code == 400


def test_https_callbacks_anywhere_and_allowed_http_origins(fake_openai, fake_anthropic, fake_gemini, fake_local,
                                                           tmp_path) -> None:
    config = gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path / "data")
    config["server"]["oauth"] = {"allowed_callbacks": ["http://intranet-app:3000"]}
    proc = GatewayServer(config, tmp_path).start()
    try:
        for callback, allowed in (("https://app.example.com/cb", True), ("http://intranet-app:3000/cb", True),
                                  ("http://intranet-app:3001/cb", False), ("http://127.0.0.1:9/cb", True)):
            resp = httpx.get(proc.url + "/auth?" + urlencode({"callback_url": callback}))
            assert (resp.status_code == 303) is allowed, (callback, resp.status_code)
    finally:
        proc.stop()


def test_codes_expire_and_are_redeemed_once_whichever_process_asks(tmp_path) -> None:
    import asyncio

    import sqlalchemy as sa

    from crossroads.store import Store, migrate
    from crossroads.store.schema import oauth_grants
    from crossroads.store.signins import SignInStore

    url = f"sqlite:///{tmp_path}/grants.db"
    migrate(url)

    async def run() -> None:
        one, other = await Store.open(url), await Store.open(url)  # as two processes would
        try:
            issuer, redeemer = oauth.PendingGrants(), oauth.PendingGrants()
            issuer.db, redeemer.db = SignInStore(one), SignInStore(other)
            code = await issuer.issue(name="app", limit=2.5, user_id="master", challenge=None, method=None)
            grant = await redeemer.redeem(code, None, None)
            assert (grant.name, grant.limit, grant.user_id) == ("app", 2.5, "master")
            with pytest.raises(oauth.GatewayError) as used:
                await issuer.redeem(code, None, None)
            assert used.value.status == 403
            late = await issuer.issue(name="app", limit=None, user_id="master", challenge=None, method=None)
            async with one._writer.begin() as conn:  # its ten minutes have passed
                await conn.execute(sa.update(oauth_grants).values(expires=sa.literal("2000-01-01 00:00:00.000000")))
            with pytest.raises(oauth.GatewayError) as expired:
                await redeemer.redeem(late, None, None)
            assert expired.value.status == 403
        finally:
            await one.close()
            await other.close()

    asyncio.run(run())


@pytest.mark.parametrize("entry", ["intranet-app:3000", "http://intranet-app:3000/path", "ftp://host", 5])
def test_allowed_callbacks_must_be_origins(tmp_path, entry) -> None:
    path = tmp_path / "crossroads.yaml"
    path.write_text(yaml.safe_dump({"server": {"master_key": "m" * 40, "oauth": {"allowed_callbacks": [entry]}}}))
    with pytest.raises(ConfigError, match="server.oauth.allowed_callbacks"):
        load_config(str(path))
