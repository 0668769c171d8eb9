"""A fake OpenID provider on loopback: discovery, /authorize, /token and /jwks, enough for the code flow with PKCE.

/authorize does not ask anyone anything: it checks the client and redirect URI, remembers the PKCE challenge and the
nonce, and redirects straight back with a code for `provider.user` (or with error=access_denied when `provider.deny`).
/token checks client_secret_basic, the code (one use), the redirect URI and the PKCE verifier, and answers with an ID
token signed RS256 (or ES256 with `provider.algorithm = "ES256"`) by a key generated at start.

The knobs below make it misbehave in the ways a relying party must notice. Like the fake upstreams (base.py), it runs
its own event loop in a background thread, so a test's event loop talks to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

CLIENT_ID = "crossroads-dashboard"
CLIENT_SECRET = "s3cret/with:odd+chars%"  # characters that client_secret_basic must form-encode


@dataclass
class Grant:
    """What /authorize remembered for one code."""

    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    user: dict[str, Any]


class FakeOidcProvider:
    def __init__(self, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris: set[str] = set()  # registered redirect URIs; /authorize refuses any other
        self.rsa_key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig", "alg": "RS256"})
        self.ec_key = ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig", "alg": "ES256"})
        self.grants: dict[str, Grant] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.token_forms: list[dict[str, str]] = []  # the forms posted to /token
        self.issued: list[str] = []  # every access token and ID token handed out
        self.reset()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def reset(self) -> None:
        """Back to a well-behaved provider and its default user."""
        self.user: dict[str, Any] = {"sub": "user-1", "email": "ada@example.com", "email_verified": True,
                                     "name": "Ada Lovelace"}
        self.algorithm = "RS256"  # or "ES256"
        self.deny = False  # /authorize answers error=access_denied
        self.wrong_audience = False  # the ID token is for another client
        self.wrong_issuer = False  # the ID token names another issuer
        self.discovery_issuer: str | None = None  # the discovery document names this issuer instead
        self.expired = False  # the ID token expired 5 minutes ago (beyond any leeway)
        self.lifetime = 300  # seconds from now to the ID token's exp (negative: expired that long ago)
        self.bad_signature = False  # signed by another key under the published key's kid
        self.unpublished_key = False  # signed by a key (and kid) that /jwks never shows
        self.wrong_nonce = False
        self.no_email = False
        self.no_id_token = False
        self.token_status = 200  # non-200: /token answers this with {"error": "server_error"}
        self.token_body: bytes | None = None  # raw /token body instead of the JSON answer (with token_status)
        self.grants.clear()
        self.requests.clear()
        self.token_forms.clear()
        self.issued.clear()

    # -- test-facing API ---------------------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rotate_keys(self) -> None:
        """New signing keys under new kids (what a provider does now and then): relying parties re-fetch /jwks."""
        n = secrets.token_hex(4)
        self.rsa_key = RSAKey.generate_key(2048, parameters={"kid": f"rsa-{n}", "use": "sig", "alg": "RS256"})
        self.ec_key = ECKey.generate_key("P-256", parameters={"kid": f"ec-{n}", "use": "sig", "alg": "ES256"})

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.requests if p == path)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> FakeOidcProvider:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(middlewares=[self._record])
            app.router.add_get("/.well-known/openid-configuration", self.discovery)
            app.router.add_get("/authorize", self.authorize)
            app.router.add_post("/token", self.token)
            app.router.add_get("/jwks", self.jwks)
            runner = web.AppRunner(app, handle_signals=False)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-oidc", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeOidcProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- endpoints ---------------------------------------------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        return await handler(request)

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.discovery_issuer or self.issuer,
            "authorization_endpoint": self.issuer + "/authorize?tenant=test",  # a query of its own, kept
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
        })

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response(KeySet([self.rsa_key, self.ec_key]).as_dict(private=False))

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != self.client_id:
            return web.Response(status=400, text="unknown client_id")
        redirect_uri = q.get("redirect_uri", "")
        if redirect_uri not in self.redirect_uris:
            return web.Response(status=400, text="redirect_uri not registered")  # never redirect there
        state = q.get("state", "")
        if self.deny:
            return _redirect(redirect_uri, error="access_denied", state=state)
        if (q.get("tenant") != "test" or q.get("response_type") != "code"
                or "openid" not in q.get("scope", "").split() or q.get("code_challenge_method") != "S256"
                or not q.get("code_challenge") or not q.get("nonce")):
            return _redirect(redirect_uri, error="invalid_request", state=state)
        code = secrets.token_urlsafe(24)
        self.grants[code] = Grant(self.client_id, redirect_uri, q["code_challenge"], q["nonce"], dict(self.user))
        return _redirect(redirect_uri, code=code, state=state)

    async def token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.token_forms.append(form)
        if not self._client_authenticated(request.headers.get("Authorization", "")):
            return web.json_response({"error": "invalid_client"}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="token"'})
        if self.token_status != 200 or self.token_body is not None:
            if self.token_body is not None:
                return web.Response(status=self.token_status, body=self.token_body, content_type="text/html")
            return web.json_response({"error": "server_error"}, status=self.token_status)
        if form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        grant = self.grants.pop(form.get("code", ""), None)  # one use
        if grant is None or grant.redirect_uri != form.get("redirect_uri"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or challenge != grant.challenge:
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
        answer: dict[str, Any] = {"access_token": secrets.token_urlsafe(24), "token_type": "Bearer",
                                  "expires_in": 3600}
        if not self.no_id_token:
            answer["id_token"] = self.id_token(grant)
        self.issued.extend(str(v) for k, v in answer.items() if k in ("access_token", "id_token"))
        return web.json_response(answer)

    # -- helpers -----------------------------------------------------------------------------------------------
    def _client_authenticated(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except ValueError:
            return False
        return unquote_plus(user) == self.client_id and unquote_plus(password) == self.client_secret

    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://elsewhere.example" if self.wrong_issuer else self.issuer,
            "aud": "someone-else" if self.wrong_audience else grant.client_id,
            "iat": now - (600 if self.expired else max(0, -self.lifetime)),
            "exp": now + (-300 if self.expired else self.lifetime),
            "nonce": "not-the-nonce" if self.wrong_nonce else grant.nonce,
            **grant.user,
        }
        if self.no_email:
            claims.pop("email", None)
        key: RSAKey | ECKey = self.ec_key if self.algorithm == "ES256" else self.rsa_key
        if self.bad_signature:  # same kid as the published key, another private key
            key = type(key).generate_key(*((2048,) if isinstance(key, RSAKey) else ("P-256",)),
                                         parameters={"kid": key.kid or "", "alg": self.algorithm})
        elif self.unpublished_key:
            key = RSAKey.generate_key(2048, parameters={"kid": "never-published", "alg": "RS256"})
        return jwt.encode({"alg": self.algorithm if not self.unpublished_key else "RS256", "kid": key.kid},
                          claims, key)


def _redirect(redirect_uri: str, **params: str) -> web.Response:
    separator = "&" if "?" in redirect_uri else "?"
    return web.Response(status=302, headers={"Location": redirect_uri + separator + urlencode(params)})
