"""Dashboard single sign-on end to end (issue 16): a real gateway configured with `server.oidc`, a small OpenID
provider on loopback (tests/fakes/oidc_provider.py), and a client that follows the redirects as a browser does,
cookies included. dashboard/oidc.py's own checks of the provider's answers are tested in tests/dashboard/test_oidc.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayServer
from tests.fakes.oidc_provider import CLIENT_ID, CLIENT_SECRET, FakeOidcProvider
from tests.team import api, ok


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOidcProvider]:
    with FakeOidcProvider() as fake:
        yield fake


@pytest.fixture(scope="module")
def sso_gateway(provider, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sso")
    config = {"server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data"),
                         "oidc": {"issuer": provider.issuer, "client_id": CLIENT_ID,
                                  "client_secret": CLIENT_SECRET}},
              "providers": []}
    proc = GatewayServer(config, workdir).start()
    provider.redirect_uris.add(proc.url + "/signin/sso/callback")
    ok(api(proc, "POST", "/workspaces", json={"name": "research"}), 201)
    ok(api(proc, "POST", "/workspaces/research/members", json={"email": "ada@example.com", "role": "admin"}), 201)
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def well_behaved(provider) -> None:
    provider.reset()


def single_sign_on(client: httpx.Client, next_page: str = "/") -> httpx.Response:
    """Click "Sign in with single sign-on" and follow the provider's redirects back to the gateway's answer."""
    start = client.get("/signin/sso", params={"next": next_page})
    assert start.status_code == 303, start.text
    assert "crossroads_sso=" in start.headers["set-cookie"] and "SameSite=Lax" in start.headers["set-cookie"]
    at_provider = httpx.get(start.headers["location"])  # the provider answers at once: no login form here
    assert at_provider.status_code == 302, at_provider.text
    back = at_provider.headers["location"]
    assert back.startswith(str(client.base_url) + "/signin/sso/callback?")
    return client.get(back[len(str(client.base_url)):])


def test_a_member_signs_in_with_single_sign_on(sso_gateway, provider) -> None:
    with httpx.Client(base_url=sso_gateway.url, timeout=15) as client:
        assert "Sign in with single sign-on" in client.get("/signin").text
        done = single_sign_on(client, "/members")
        assert done.status_code == 303 and done.headers["location"] == "/members", done.text[:500]
        assert "crossroads_session=" in done.headers.get("set-cookie", "")
        page = client.get("/members")
        assert page.status_code == 200 and "ada@example.com · admin" in unescape(page.text)
    # The account now remembers the provider's subject: a new email at the provider still signs in to it.
    provider.user["email"] = "ada.lovelace@example.com"
    with httpx.Client(base_url=sso_gateway.url, timeout=15) as client:
        assert single_sign_on(client).status_code == 303 and client.get("/").status_code == 200
    token_form = provider.token_forms[-1]
    assert token_form["grant_type"] == "authorization_code" and token_form["code_verifier"]
    log = sso_gateway.log()
    assert CLIENT_SECRET not in log and all(token not in log for token in provider.issued)


def test_single_sign_on_refusals_are_clear_and_sign_nobody_in(sso_gateway, provider) -> None:
    cases = [
        ("deny", True, 401, "The identity provider refused the sign-in: access_denied"),
        ("user", {"sub": "u-9", "email": "stranger@example.com", "email_verified": True}, 403,
         "stranger@example.com has no account here"),
        ("user", {"sub": "u-8", "email": "ada@example.com", "email_verified": False}, 403, "has not verified"),
        # Ada's account is bound to her first subject: another subject with her email is not her.
        ("user", {"sub": "impostor", "email": "ada@example.com", "email_verified": True}, 403, "no account here"),
        ("wrong_audience", True, 401, "another application"),
    ]
    with httpx.Client(base_url=sso_gateway.url, timeout=15) as client:
        single_sign_on(client)  # binds ada's subject (if the test above did not run)
    for knob, value, status, message in cases:
        provider.reset()
        setattr(provider, knob, value)
        with httpx.Client(base_url=sso_gateway.url, timeout=15) as client:
            answer = single_sign_on(client)
            assert answer.status_code == status and message in unescape(answer.text), (knob, answer.text[:800])
            assert "crossroads_session=" not in answer.headers.get("set-cookie", "")
            assert client.get("/").status_code == 303  # still signed out
            assert CLIENT_SECRET not in answer.text
    # The provider's answer without this browser's pending state (another browser's, or replayed) is refused.
    provider.reset()
    with httpx.Client(base_url=sso_gateway.url, timeout=15) as starter:
        start = starter.get("/signin/sso")
        back = httpx.get(start.headers["location"]).headers["location"]
    stolen = httpx.get(back)
    assert stolen.status_code == 401 and "pending state" in stolen.text


def test_an_invited_person_joins_with_single_sign_on(sso_gateway, provider) -> None:
    with httpx.Client(base_url=sso_gateway.url, timeout=15) as admin:
        assert admin.post("/signin", data={"key": MASTER_KEY}).status_code == 303
        research = ok(api(sso_gateway, "GET", "/workspaces/research"))["data"]["id"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', admin.get("/").text).group(1)
        assert admin.post("/workspace", data={"csrf": csrf, "workspace": research, "next": "/members"}
                          ).status_code == 303
        assert admin.post("/members/invite", data={"csrf": csrf, "email": "grace@example.com", "role": "viewer"}
                          ).status_code == 303
        link = unescape(re.search(r'aria-label="Invitation link" readonly value="([^"]+)"',
                                  admin.get("/members").text).group(1))
    invite_path = link[len(sso_gateway.url):]
    provider.user = {"sub": "grace-sub", "email": "grace@example.com", "email_verified": True, "name": "Grace"}
    with httpx.Client(base_url=sso_gateway.url, timeout=15) as grace:
        assert "join with single sign-on" in grace.get(invite_path).text
        done = single_sign_on(grace, invite_path)
        assert done.status_code == 303 and done.headers["location"] == invite_path
        page = grace.get(invite_path)
        assert "Join research" in page.text and "password" not in page.text.lower()
        joined = grace.post("/invite", data={"token": invite_path.split("token=", 1)[1]})
        assert joined.status_code == 303
        assert "grace@example.com · viewer" in unescape(grace.get("/").text)
    members = {m["email"]: m["role"] for m in ok(api(sso_gateway, "GET", "/workspaces/research/members"))["data"]}
    assert members["grace@example.com"] == "viewer"
    # Without an invitation for that email, the same provider answer makes no account.
    provider.user = {"sub": "eve-sub", "email": "eve@example.com", "email_verified": True}
    with httpx.Client(base_url=sso_gateway.url, timeout=15) as eve:
        assert single_sign_on(eve, invite_path).status_code == 403
    assert "eve@example.com" not in str(ok(api(sso_gateway, "GET", "/workspaces/research/members")))


def test_single_sign_on_is_off_unless_configured(gateway) -> None:
    assert "single sign-on" not in httpx.get(gateway.url + "/signin").text
    assert httpx.get(gateway.url + "/signin/sso").status_code == 404
