"""OpenID Connect sign-in (dashboard/oidc.py) against a fake provider over real loopback HTTP.

The tests play the browser: they GET the authorization URL without following redirects and hand the query of the
provider's redirect to `finish`, with the `pending` string a cookie would have carried.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, quote_plus, urlsplit

import httpx
import pytest
import pytest_asyncio
from joserfc import jwt
from joserfc.jwk import OctKey

from crossroads.dashboard.oidc import OidcError, OidcSettings, OidcSignIn, SignedIn
from tests.fakes.oidc_provider import CLIENT_ID, CLIENT_SECRET, FakeOidcProvider

pytestmark = pytest.mark.asyncio(loop_scope="function")

REDIRECT_URI = "http://127.0.0.1:8080/signin/oidc/callback"


@pytest.fixture(scope="module")
def provider_server() -> Iterator[FakeOidcProvider]:
    with FakeOidcProvider() as provider:
        provider.redirect_uris.add(REDIRECT_URI)
        yield provider


@pytest.fixture
def provider(provider_server: FakeOidcProvider) -> FakeOidcProvider:
    provider_server.reset()
    return provider_server


def settings_for(provider: FakeOidcProvider, **changes: str) -> OidcSettings:
    return OidcSettings(**{"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                           **changes})


@pytest_asyncio.fixture(loop_scope="function")
async def signin(provider: FakeOidcProvider) -> AsyncIterator[OidcSignIn]:
    client = OidcSignIn(settings_for(provider))
    yield client
    await client.close()


async def authorize(client: OidcSignIn, next_page: str = "/usage") -> tuple[dict[str, str], str, str]:
    """Start a sign-in and follow the browser to the provider: (the redirect's query, pending, authorization URL)."""
    url, pending = await client.start(REDIRECT_URI, next_page)
    async with httpx.AsyncClient(follow_redirects=False, timeout=10) as browser:
        answer = await browser.get(url)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    return query, pending, url


def decode_pending(pending: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(pending + "=" * (-len(pending) % 4)))


def encode_pending(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def refused(client: OidcSignIn, provider: FakeOidcProvider, query: dict[str, str], pending: str | None
                  ) -> str:
    """finish() fails; its message is returned after checking that it gives away no secret."""
    with pytest.raises(OidcError) as info:
        await client.finish(query, pending, REDIRECT_URI)
    message = str(info.value)
    for secret in (CLIENT_SECRET, quote_plus(CLIENT_SECRET), *provider.issued):
        assert secret not in message
    if query.get("code"):
        assert query["code"] not in message
    assert "Traceback" not in message and message.strip() == message and len(message) < 300
    return message


# -- the happy paths -------------------------------------------------------------------------------------------
async def test_sign_in(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    query, pending, url = await authorize(signin, "/usage?days=7")
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    started = decode_pending(pending)
    assert params["tenant"] == "test"  # the authorization endpoint's own query is kept
    assert params["response_type"] == "code" and params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == REDIRECT_URI and params["scope"] == "openid email profile"
    assert params["state"] == started["s"] == query["state"] and params["nonce"] == started["n"]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(started["v"].encode()).digest()).rstrip(b"=").decode()
    assert params["code_challenge"] == challenge and params["code_challenge_method"] == "S256"
    assert CLIENT_SECRET not in pending and CLIENT_SECRET not in url

    result = await signin.finish(query, pending, REDIRECT_URI)

    assert result == SignedIn(subject="user-1", email="ada@example.com", email_verified=True, name="Ada Lovelace",
                              next_page="/usage?days=7")
    form = provider.token_forms[-1]
    assert form == {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": REDIRECT_URI,
                    "code_verifier": started["v"]}  # no client secret in the body: it went by HTTP Basic


async def test_sign_in_es256_and_unverified_email(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    provider.algorithm = "ES256"
    provider.user = {"sub": "u-2", "email": "bob@example.com", "email_verified": False}
    query, pending, _ = await authorize(signin, "/")
    result = await signin.finish(query, pending, REDIRECT_URI)
    assert (result.subject, result.email, result.email_verified, result.name) == ("u-2", "bob@example.com",
                                                                                  False, None)


async def test_another_process_finishes(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    """Nothing is kept on the server between start and finish: a fresh instance finishes what another started."""
    query, pending, _ = await authorize(signin)
    other = OidcSignIn(settings_for(provider))
    try:
        assert (await other.finish(query, pending, REDIRECT_URI)).email == "ada@example.com"
    finally:
        await other.close()


async def test_discovery_and_keys_are_cached(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    for _ in range(3):
        query, pending, _ = await authorize(signin)
        await signin.finish(query, pending, REDIRECT_URI)
    assert provider.count("/.well-known/openid-configuration") == 1
    assert provider.count("/jwks") == 1


async def test_rotated_keys_are_fetched_again(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    query, pending, _ = await authorize(signin)
    await signin.finish(query, pending, REDIRECT_URI)
    provider.rotate_keys()
    query, pending, _ = await authorize(signin)
    assert (await signin.finish(query, pending, REDIRECT_URI)).subject == "user-1"
    assert provider.count("/jwks") == 2


@pytest.mark.parametrize("next_page", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "usage",
                                       "javascript:alert(1)"])
async def test_next_page_stays_on_this_site(signin: OidcSignIn, next_page: str) -> None:
    query, pending, _ = await authorize(signin, next_page)
    assert (await signin.finish(query, pending, REDIRECT_URI)).next_page == "/"


async def test_settings_repr_hides_the_secret(provider: FakeOidcProvider) -> None:
    assert CLIENT_SECRET not in repr(settings_for(provider)) and CLIENT_ID in repr(settings_for(provider))


# -- what the browser brings back ------------------------------------------------------------------------------
@pytest.mark.parametrize("pending", [None, ""])
async def test_missing_pending(signin: OidcSignIn, provider: FakeOidcProvider, pending: str | None) -> None:
    query, _, _ = await authorize(signin)
    assert "cookie is missing" in await refused(signin, provider, query, pending)


@pytest.mark.parametrize("pending", ["not base64 !", "bm90IGpzb24", encode_pending({"s": "x"}),
                                     encode_pending({"s": 1, "n": "n", "v": "v", "p": "/", "t": 0}), "W10"])
async def test_garbled_pending(signin: OidcSignIn, provider: FakeOidcProvider, pending: str) -> None:
    query, _, _ = await authorize(signin)
    assert "garbled" in await refused(signin, provider, query, pending)


async def test_stale_pending(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    query, pending, _ = await authorize(signin)
    old = decode_pending(pending) | {"t": int(time.time()) - 3600}
    assert "took too long" in await refused(signin, provider, query, encode_pending(old))


async def test_provider_refuses(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    provider.deny = True
    query, pending, _ = await authorize(signin)
    message = await refused(signin, provider, query, pending)
    assert message == "The identity provider refused the sign-in: access_denied"
    assert not provider.token_forms


async def test_state_mismatch(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    query, _, _ = await authorize(signin)
    _, other_pending, _ = await authorize(signin)  # another sign-in of the same browser, say in another tab
    assert "does not belong to the sign-in" in await refused(signin, provider, query, other_pending)
    assert not provider.token_forms  # the code was never sent anywhere


async def test_missing_code(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    query, pending, _ = await authorize(signin)
    del query["code"]
    assert "no authorization code" in await refused(signin, provider, query, pending)


# -- the token request -----------------------------------------------------------------------------------------
async def test_token_endpoint_fails(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    provider.token_status = 500
    query, pending, _ = await authorize(signin)
    assert await refused(signin, provider, query, pending) == (
        "The identity provider's token endpoint refused the sign-in: HTTP 500 (server_error).")


async def test_token_endpoint_answers_no_json(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    provider.token_body = b"<html>maintenance</html>"
    query, pending, _ = await authorize(signin)
    assert "did not answer with a JSON object" in await refused(signin, provider, query, pending)


async def test_wrong_client_secret(provider: FakeOidcProvider) -> None:
    wrong = "not-the-secret"
    client = OidcSignIn(settings_for(provider, client_secret=wrong))
    try:
        query, pending, _ = await authorize(client)
        message = await refused(client, provider, query, pending)
    finally:
        await client.close()
    assert message == "The identity provider's token endpoint refused the sign-in: HTTP 401 (invalid_client)."
    assert wrong not in message


async def test_code_used_twice(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    query, pending, _ = await authorize(signin)
    await signin.finish(query, pending, REDIRECT_URI)
    assert "HTTP 400 (invalid_grant)" in await refused(signin, provider, query, pending)


async def test_redirect_uri_differs_from_the_authorization(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    query, pending, _ = await authorize(signin)
    with pytest.raises(OidcError, match="invalid_grant"):
        await signin.finish(query, pending, REDIRECT_URI + "/other")


async def test_no_id_token(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    provider.no_id_token = True
    query, pending, _ = await authorize(signin)
    assert "sent no ID token" in await refused(signin, provider, query, pending)


# -- the ID token ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_bad_signature(signin: OidcSignIn, provider: FakeOidcProvider, algorithm: str) -> None:
    provider.algorithm, provider.bad_signature = algorithm, True
    query, pending, _ = await authorize(signin)
    assert await refused(signin, provider, query, pending) == "The ID token's signature is not valid."


async def test_key_never_published(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    provider.unpublished_key = True
    query, pending, _ = await authorize(signin)
    assert "key the identity provider does not publish" in await refused(signin, provider, query, pending)
    assert provider.count("/jwks") == 2  # fetched, then fetched once more for the unknown kid, no more


async def test_symmetric_signature_refused(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    """An ID token MACed with the client secret (HS256) is not one the provider's public keys vouch for."""
    query, pending, _ = await authorize(signin)
    claims = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "mallory", "email": "m@example.com",
              "exp": int(time.time()) + 300, "nonce": decode_pending(pending)["n"]}
    forged = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(CLIENT_SECRET.encode() * 4))
    provider.token_body = json.dumps({"id_token": forged, "token_type": "Bearer"}).encode()
    assert "only RS256 and ES256 are accepted" in await refused(signin, provider, query, pending)


@pytest.mark.parametrize(("knob", "expected"), [
    ("wrong_issuer", "issued by someone other than the configured identity provider"),
    ("wrong_audience", "issued for another application"),
    ("expired", "The ID token has expired"),
    ("wrong_nonce", "nonce mismatch"),
    ("no_email", "did not share an email address"),
])
async def test_id_token_claims(signin: OidcSignIn, provider: FakeOidcProvider, knob: str, expected: str) -> None:
    setattr(provider, knob, True)
    query, pending, _ = await authorize(signin)
    assert expected in await refused(signin, provider, query, pending)


async def test_expiry_leeway(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    """A clock a little ahead of the provider's still accepts a token that has just expired."""
    provider.lifetime = -30
    query, pending, _ = await authorize(signin)
    assert (await signin.finish(query, pending, REDIRECT_URI)).subject == "user-1"


# -- the provider's documents ----------------------------------------------------------------------------------
async def test_discovery_names_another_issuer(signin: OidcSignIn, provider: FakeOidcProvider) -> None:
    provider.discovery_issuer = "https://login.example"
    with pytest.raises(OidcError, match="names its issuer 'https://login.example', not the configured"):
        await signin.start(REDIRECT_URI, "/")


async def test_provider_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens here once the socket is closed
    client = OidcSignIn(OidcSettings(f"http://127.0.0.1:{port}", CLIENT_ID, CLIENT_SECRET))
    try:
        with pytest.raises(OidcError, match="Could not reach the identity provider") as info:
            await client.start(REDIRECT_URI, "/")
    finally:
        await client.close()
    assert CLIENT_SECRET not in str(info.value)
