"""OpenID Connect single sign-on for the dashboard: the authorization code flow with PKCE, for one identity provider.

`OidcSignIn.start` reads the provider's discovery document and builds the URL that sends the browser to the provider,
with a fresh state, nonce and PKCE verifier. `OidcSignIn.finish` takes the provider's answer back at the redirect URI,
redeems the code at the token endpoint (client_secret_basic) and checks the ID token: its signature against the
provider's published keys (RS256 or ES256, through joserfc), its issuer, audience, expiry and nonce. What it hands
back (`SignedIn`) is who signed in; whether that person may use the dashboard is the caller's decision.

The state of a sign-in in progress (state, nonce, PKCE verifier and the page to return to) does not live on the server:
`start` returns it as an opaque string, `pending`, that the caller keeps in a short-lived HttpOnly cookie, and the
browser brings it back with the provider's redirect. So whichever process of a fleet the redirect lands on can finish
the sign-in, with nothing to share between processes. The cookie holds no server secret: everything in it was made
for that browser's sign-in only, and it is checked against what the provider sends back (state) and signs (nonce).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import aiohttp
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet

from crossroads.dashboard.access import local_path

HTTP_TIMEOUT = 10.0  # seconds, for each request to the provider
DISCOVERY_TTL = 3600.0  # seconds the discovery document and the provider's keys are cached
LEEWAY = 60  # seconds of clock skew allowed on the ID token's exp and iat
PENDING_MAX_AGE = 15 * 60  # seconds a sign-in may take between start and finish
ALGORITHMS = ("RS256", "ES256")  # the ID token signatures accepted
MAX_BODY = 1024 * 1024  # bytes read at most from any answer of the provider


class OidcError(Exception):
    """A sign-in that cannot go on; the message is meant for the person signing in and holds no secret."""


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str  # exactly as the provider states it in its discovery document
    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = ("openid", "email", "profile")

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"OidcSettings(issuer={self.issuer!r}, client_id={self.client_id!r}, scopes={self.scopes!r})"


@dataclass(frozen=True, slots=True)
class SignedIn:
    subject: str  # the provider's stable identifier of the person ("sub")
    email: str
    email_verified: bool
    name: str | None
    next_page: str  # the dashboard page to go to now (a local path)


@dataclass(frozen=True, slots=True)
class _Discovery:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True, slots=True)
class _Pending:
    state: str
    nonce: str
    verifier: str
    next_page: str
    created: int


class OidcSignIn:
    """Sign-in with one OpenID provider. One instance per process; `close()` it on shutdown."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._discovery: _Discovery | None = None
        self._discovery_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._keys_uri = ""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the two halves of a sign-in ---------------------------------------------------------------------------
    async def start(self, redirect_uri: str, next_page: str) -> tuple[str, str]:
        """The URL to send the browser to, and the `pending` string to keep in its cookie until `finish`."""
        discovery = await self._discover()
        pending = _Pending(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                           verifier=secrets.token_urlsafe(48), next_page=local_path(next_page),
                           created=int(time.time()))
        challenge = _b64url(hashlib.sha256(pending.verifier.encode("ascii")).digest())
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return _with_query(discovery.authorization_endpoint, params), _encode_pending(pending)

    async def finish(self, query: dict[str, str], pending: str | None, redirect_uri: str) -> SignedIn:
        """Check the provider's answer (the redirect's query) against `pending`, redeem the code, check the ID token."""
        if "error" in query:
            raise OidcError(f"The identity provider refused the sign-in: {_token_text(query['error'])}")
        started = _decode_pending(pending)
        if not hmac.compare_digest(query.get("state", "").encode(), started.state.encode()):
            raise OidcError("This sign-in answer does not belong to the sign-in this browser started; "
                            "please sign in again.")
        code = query.get("code", "")
        if not code:
            raise OidcError("The identity provider's answer has no authorization code; please sign in again.")
        discovery = await self._discover()
        tokens = await self._redeem(discovery, code, redirect_uri, started.verifier)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise OidcError("The identity provider sent no ID token; is the 'openid' scope allowed for this client?")
        claims = await self._verify(discovery, id_token)
        return self._signed_in(claims, started)

    # -- the provider's documents ------------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT))
        return self._session

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with self._http().get(url, headers={"Accept": "application/json"}) as resp:
                status, body = resp.status, await _read_capped(resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError(f"Could not reach the identity provider for its {what} ({url}): "
                            f"{type(exc).__name__}") from None
        if status != 200:
            raise OidcError(f"The identity provider's {what} ({url}) answered HTTP {status}.")
        document = _json_object(body)
        if document is None:
            raise OidcError(f"The identity provider's {what} ({url}) is not a JSON object.")
        return document

    async def _discover(self) -> _Discovery:
        if self._discovery is not None and time.monotonic() - self._discovery_at < DISCOVERY_TTL:
            return self._discovery
        issuer = self.settings.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url, "discovery document")
        if document.get("issuer") != issuer:
            raise OidcError(f"The identity provider at {url} names its issuer {document.get('issuer')!r}, "
                            f"not the configured {issuer!r}; the two must be identical.")
        fields: dict[str, str] = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str) or urlsplit(value).scheme not in ("https", "http"):
                raise OidcError(f"The identity provider's discovery document ({url}) has no usable {name}.")
            fields[name] = value
        self._discovery = _Discovery(**fields)
        self._discovery_at = time.monotonic()
        return self._discovery

    async def _key_set(self, discovery: _Discovery, *, refresh: bool = False) -> KeySet:
        fresh = (self._keys is not None and self._keys_uri == discovery.jwks_uri
                 and time.monotonic() - self._keys_at < DISCOVERY_TTL)
        if fresh and not refresh:
            assert self._keys is not None
            return self._keys
        document = await self._get_json(discovery.jwks_uri, "signing keys")
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, AttributeError, KeyError, TypeError, ValueError):
            raise OidcError(f"The identity provider's signing keys ({discovery.jwks_uri}) "
                            "could not be read.") from None
        self._keys, self._keys_at, self._keys_uri = keys, time.monotonic(), discovery.jwks_uri
        return keys

    # -- the token request and the ID token --------------------------------------------------------------------
    async def _redeem(self, discovery: _Discovery, code: str, redirect_uri: str, verifier: str) -> dict[str, Any]:
        # client_secret_basic: RFC 6749 section 2.3.1 form-encodes the id and the secret before Basic encoding.
        credentials = f"{quote_plus(self.settings.client_id)}:{quote_plus(self.settings.client_secret)}"
        headers = {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode("ascii"),
                   "Accept": "application/json"}
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier}
        url = discovery.token_endpoint
        try:
            async with self._http().post(url, data=form, headers=headers) as resp:
                status, body = resp.status, await _read_capped(resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError(f"Could not reach the identity provider's token endpoint ({url}): "
                            f"{type(exc).__name__}") from None
        answer = _json_object(body)
        if status != 200:
            reason = answer.get("error") if answer else None
            detail = f" ({_token_text(reason)})" if isinstance(reason, str) else ""
            raise OidcError(f"The identity provider's token endpoint refused the sign-in: HTTP {status}{detail}.")
        if answer is None:
            raise OidcError(f"The identity provider's token endpoint ({url}) did not answer with a JSON object.")
        return answer

    async def _verify(self, discovery: _Discovery, id_token: str) -> dict[str, Any]:
        try:
            header = jws.extract_compact(id_token.encode("ascii")).headers()
        except (JoseError, UnicodeError, ValueError, TypeError):
            raise OidcError("The identity provider's ID token is not a signed JWT.") from None
        if header.get("alg") not in ALGORITHMS:
            raise OidcError(f"The ID token is signed with {_token_text(str(header.get('alg')))}; "
                            f"only {' and '.join(ALGORITHMS)} are accepted.")
        kid = header.get("kid")
        keys = await self._key_set(discovery)
        if kid is not None and all(key.kid != kid for key in keys):
            keys = await self._key_set(discovery, refresh=True)  # the provider may have rotated its keys
            if all(key.kid != kid for key in keys):
                raise OidcError("The ID token is signed with a key the identity provider does not publish.")
        try:
            claims = jwt.decode(id_token, keys, algorithms=list(ALGORITHMS)).claims
        except BadSignatureError:
            raise OidcError("The ID token's signature is not valid.") from None
        except (JoseError, ValueError, TypeError):
            raise OidcError("The ID token could not be verified with the identity provider's keys.") from None
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> None:
        if claims.get("iss") != self.settings.issuer:
            raise OidcError("The ID token was issued by someone other than the configured identity provider.")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or self.settings.client_id not in audiences:
            raise OidcError("The ID token was issued for another application (its audience is not this client).")
        azp = claims.get("azp")
        if len(audiences) > 1 and azp is not None and azp != self.settings.client_id:
            raise OidcError("The ID token was issued for another application (authorized party).")
        now = time.time()
        exp = claims.get("exp")
        if not _is_number(exp):
            raise OidcError("The ID token has no valid expiry time.")
        if exp + LEEWAY <= now:
            raise OidcError("The ID token has expired; check that this server's clock is right, then sign in again.")
        iat = claims.get("iat")
        if iat is not None and (not _is_number(iat) or iat - LEEWAY > now):
            raise OidcError("The ID token was issued in the future; check that this server's clock is right.")

    def _signed_in(self, claims: dict[str, Any], started: _Pending) -> SignedIn:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), started.nonce.encode()):
            raise OidcError("The ID token does not belong to this sign-in (nonce mismatch); please sign in again.")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise OidcError("The ID token does not say who signed in (no subject).")
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise OidcError("The identity provider did not share an email address; "
                            "is the 'email' scope allowed for this client?")
        verified = claims.get("email_verified")
        name = claims.get("name")
        return SignedIn(subject=subject, email=email, email_verified=verified is True or verified == "true",
                        name=name if isinstance(name, str) and name else None, next_page=started.next_page)


# -- the pending sign-in, kept by the browser ------------------------------------------------------------------
def _encode_pending(pending: _Pending) -> str:
    data = {"s": pending.state, "n": pending.nonce, "v": pending.verifier, "p": pending.next_page,
            "t": pending.created}
    return _b64url(json.dumps(data, separators=(",", ":")).encode())


def _decode_pending(pending: str | None) -> _Pending:
    if not pending:
        raise OidcError("This sign-in has no pending state (its cookie is missing or expired); please sign in again.")
    try:
        data = json.loads(base64.urlsafe_b64decode(pending + "=" * (-len(pending) % 4)))
        started = _Pending(state=data["s"], nonce=data["n"], verifier=data["v"], next_page=data["p"],
                           created=data["t"])
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise OidcError("This sign-in's pending state is garbled; please sign in again.") from None
    texts = (started.state, started.nonce, started.verifier, started.next_page)
    if not all(isinstance(text, str) and text for text in texts) or not _is_number(started.created):
        raise OidcError("This sign-in's pending state is garbled; please sign in again.")
    if time.time() - started.created > PENDING_MAX_AGE:
        raise OidcError("This sign-in took too long; please sign in again.")
    return started


# -- small helpers ---------------------------------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _with_query(url: str, params: dict[str, str]) -> str:
    """`url` with `params` added to whatever query it already has."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _token_text(value: object) -> str:
    """A provider's error code, kept to the characters such codes use (it came from outside)."""
    text = re.sub(r"[^A-Za-z0-9_.:-]", "?", str(value))[:64]
    return text or "?"


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The body of a provider's answer, or an error past MAX_BODY bytes (no document of a provider is that big)."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_BODY:
            raise OidcError(f"The identity provider's answer from {resp.url} is too large.")
    return bytes(body)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
