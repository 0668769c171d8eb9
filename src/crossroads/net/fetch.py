"""Fetch client-supplied media URLs for providers that only accept inline bytes, guarded against SSRF.

Anthropic and Gemini want image/PDF bytes, but OpenRouter clients may send an ``http(s)`` URL. Fetching
that URL from inside the gateway's network is a classic server-side request forgery hole, so:

* only ``http``/``https`` without credentials are accepted;
* every address a host resolves to must be public (or covered by the operator's allow-list) — one bad
  address refuses the whole URL, because we cannot control which one the connector would pick;
* the address check happens *inside* the connector's resolver, so the addresses that were vetted are
  exactly the ones connected to: there is no second DNS lookup a rebinding attacker could answer
  differently, while the Host header and TLS server name still carry the original host name;
* IP-literal hosts never reach a resolver in aiohttp, so they are checked before the request is made;
* redirects are followed by hand so each hop goes through the same checks;
* the body is capped both by Content-Length and while streaming, and the whole fetch has one deadline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from crossroads.errors import GatewayError

__all__ = ["FetchError", "FetchedMedia", "MediaFetcher", "parse_data_url"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALLOWED_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_OCTET_STREAM = "application/octet-stream"
# Servers (notably object stores) label everything with these; they say nothing, so sniff instead.
_GENERIC_TYPES = frozenset({"", _OCTET_STREAM, "binary/octet-stream"})

# Ranges that Python's ipaddress flags do not cover on their own.
_SHARED_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# RFC 6052 well-known NAT64 prefix: the last 32 bits are an IPv4 address the translator will reach.
_NAT64_WKP = ipaddress.IPv6Network("64:ff9b::/96")

_REQUEST_HEADERS = {
    "User-Agent": "crossroads-media-fetcher/1",
    "Accept": "image/*, application/pdf;q=0.9, */*;q=0.5",
}


class FetchError(GatewayError):
    """Raised with a client-safe message; ``status`` is the HTTP status the gateway should answer.

    400 for a refused/invalid URL or an oversized body, 408 for a timeout, 502 for a remote failure.
    It is a GatewayError so the request path can render it without translation.
    """

    status: int
    message: str

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)


@dataclass(frozen=True)
class FetchedMedia:
    data: bytes
    mime_type: str


# --------------------------------------------------------------------------------------------------
# MIME handling


def sniff_mime(data: bytes) -> str | None:
    """Recognise the few formats providers accept, for bodies that arrive without a useful type."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _pick_mime(declared: str | None, data: bytes) -> str:
    mime = (declared or "").split(";", 1)[0].strip().lower()
    if mime not in _GENERIC_TYPES:
        return mime
    return sniff_mime(data) or _OCTET_STREAM


def parse_data_url(url: str) -> FetchedMedia | None:
    """Decode ``data:<mime>[;params][;base64],<payload>``.

    Returns None when ``url`` is not a data: URL at all (so callers can fall through to fetching), and
    raises FetchError(400) when it is one but cannot be decoded.
    """
    if url[:5].lower() != "data:":
        return None
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise FetchError(400, "malformed data URL: missing ',' separator")
    parts = [p.strip() for p in header.split(";")]
    is_base64 = len(parts) > 1 and parts[-1].lower() == "base64"
    if is_base64:
        parts.pop()
    mime = parts[0].lower()
    if mime and "/" not in mime:
        raise FetchError(400, "malformed data URL: invalid media type")
    if is_base64:
        # Clients wrap long base64 and often percent-encode or drop the padding; accept all of that,
        # but nothing outside the base64 alphabet.
        text = "".join(urllib.parse.unquote(payload).split())
        text += "=" * (-len(text) % 4)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise FetchError(400, "malformed data URL: invalid base64 payload") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return FetchedMedia(data=data, mime_type=_pick_mime(mime, data))


# --------------------------------------------------------------------------------------------------
# Address policy


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a v6 address will actually deliver to, for the translation forms we know."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64_WKP:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    return None


def _is_forbidden(addr: IPAddress) -> bool:
    """True for anything that is not a plain public unicast address."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None:
            # Judge a translated address by where it lands; ipaddress calls all of ::/8 "reserved", which
            # would otherwise also refuse mapped *public* addresses.
            return _is_forbidden(inner)
    if (
        addr.is_loopback
        or addr.is_private
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    ):
        return True
    if isinstance(addr, ipaddress.IPv4Address) and (addr in _SHARED_CGNAT or addr in _THIS_NETWORK):
        return True
    # Catch-all for special-purpose blocks (documentation, benchmarking, ...) the flags above miss.
    return not addr.is_global


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _normalise_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _looks_numeric(host: str) -> bool:
    """Mirror aiohttp's own test for "this is an IP literal, skip the resolver"."""
    return ":" in host or host.replace(".", "").isdigit()


class _AddressPolicy:
    def __init__(self, allow: Sequence[str]) -> None:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in allow:
            entry = entry.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(_normalise_host(entry))
        self._names = frozenset(names)
        self._networks = tuple(networks)

    def host_allowed(self, host: str) -> bool:
        return _normalise_host(host) in self._names

    def address_allowed(self, addr: IPAddress) -> bool:
        if not _is_forbidden(addr):
            return True
        candidates: list[IPAddress] = [addr]
        if isinstance(addr, ipaddress.IPv6Address) and (inner := _embedded_ipv4(addr)) is not None:
            candidates.append(inner)
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
            # Networks never carry a zone, so compare the bare address.
            candidates.append(ipaddress.IPv6Address(addr.compressed.split("%", 1)[0]))
        return any(c.version == net.version and c in net for c in candidates for net in self._networks)

    def check(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """Raise FetchError(400) unless every address may be contacted for this host."""
        if self.host_allowed(host):
            return
        for addr in addresses:
            if not self.address_allowed(addr):
                # Name the host, not the address: which internal IP a name maps to is not the client's business.
                raise FetchError(400, f"the address of host '{host}' is not allowed")


class _VettingResolver(AbstractResolver):
    """Resolve with the loop's getaddrinfo and hand the connector only addresses that passed the policy.

    Because the connector connects to exactly what this returns, vetting and connecting use the same DNS
    answer and rebinding between the two is impossible.
    """

    def __init__(self, policy: _AddressPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise FetchError(400, f"could not resolve host '{host}'") from None

        results: list[ResolveResult] = []
        addresses: list[IPAddress] = []
        seen: set[tuple[int, str]] = set()
        for fam, _type, proto, _canon, sockaddr in infos:
            if fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = str(sockaddr[0])
            if fam == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3] and "%" not in text:
                text = f"{text}%{sockaddr[3]}"  # keep the zone so link-local stays routable if allowed
            addr = _parse_ip(text)
            if addr is None or (fam, text) in seen:
                continue
            seen.add((fam, text))
            addresses.append(addr)
            results.append(
                ResolveResult(
                    hostname=host,
                    host=text,
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise FetchError(400, f"could not resolve host '{host}'")
        self._policy.check(host, addresses)
        return results

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------------
# Fetcher


def _find_fetch_error(exc: BaseException) -> FetchError | None:
    """aiohttp may wrap what our resolver raised; dig it back out so the client sees our message."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, FetchError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class MediaFetcher:
    """Fetches media URLs with SSRF protection, a size cap and an overall deadline.

    ``allow`` lists host names (``"images.internal"``) and CIDRs (``"10.0.0.0/8"``) that may be fetched
    even though they are not public. One instance holds a pooled session; call ``close()`` on shutdown.
    """

    def __init__(
        self,
        *,
        allow: Sequence[str] = (),
        max_bytes: int = 20 * 1024 * 1024,
        timeout: float = 10.0,
        max_redirects: int = 3,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        self._policy = _AddressPolicy(allow)
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily because aiohttp binds a session to the loop that is running when it is built.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=_VettingResolver(self._policy),
                # The DNS cache would be filled by our resolver anyway, but without it every new
                # connection is vetted against a fresh answer and no stale entry outlives its TTL.
                use_dns_cache=False,
                limit=100,
                limit_per_host=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # One overall deadline is enforced by fetch(); aiohttp's own default must not cut in.
                timeout=aiohttp.ClientTimeout(total=None),
                # Never route through an environment proxy: the proxy would do its own, unvetted, lookup.
                trust_env=False,
                # Cookies set by one client's URL must not ride along on another client's fetch.
                cookie_jar=aiohttp.DummyCookieJar(),
                headers=_REQUEST_HEADERS,
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _check_url(self, raw: str | URL) -> URL:
        """Syntactic checks plus the IP-literal check (aiohttp skips the resolver for literals)."""
        try:
            url = raw if isinstance(raw, URL) else URL(raw.strip())
        except (ValueError, TypeError):
            raise FetchError(400, "invalid media URL") from None
        scheme = (url.scheme or "").lower()
        if scheme not in _ALLOWED_SCHEMES:
            shown = scheme or "(none)"
            raise FetchError(400, f"unsupported URL scheme '{shown}': only http and https are allowed")
        if url.raw_user is not None or url.raw_password is not None:
            raise FetchError(400, "media URL must not contain credentials")
        host = url.raw_host
        if not host:
            raise FetchError(400, "media URL has no host")
        try:
            url.port  # noqa: B018 - yarl validates the port lazily; a bad one must be a 400, not a crash
        except ValueError:
            raise FetchError(400, "media URL has an invalid port") from None
        if _looks_numeric(host):
            addr = _parse_ip(host)
            if addr is None:
                # Forms like 127.1 or 2130706433 that socket would still accept: refuse instead of guessing.
                raise FetchError(400, f"host '{host}' is not a valid IP address")
            self._policy.check(host, [addr])
        return url

    async def fetch(self, url: str) -> FetchedMedia:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._fetch(url)
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(408, f"timed out fetching media after {self._timeout:g}s") from None
        except aiohttp.InvalidURL:
            raise FetchError(400, "invalid media URL") from None
        except (aiohttp.ClientError, OSError) as exc:
            wrapped = _find_fetch_error(exc)
            if wrapped is not None:
                raise wrapped from None
            raise FetchError(502, "could not fetch media: connection to the remote server failed") from None

    async def _fetch(self, raw_url: str) -> FetchedMedia:
        # Check before touching the session so a refused URL costs no connection setup at all.
        url = self._check_url(raw_url)
        session = self._get_session()
        redirects = 0
        while True:
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status in _REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchError(502, f"remote server answered HTTP {resp.status} without a Location")
                    if redirects >= self._max_redirects:
                        raise FetchError(502, f"too many redirects (more than {self._max_redirects})")
                    redirects += 1
                    try:
                        target = url.join(URL(location))
                    except ValueError:
                        raise FetchError(502, "remote server sent an invalid redirect") from None
                    # Every hop gets the same scheme/credential/address checks as the original URL.
                    url = self._check_url(target)
                    continue
                if not 200 <= resp.status < 300:
                    raise FetchError(502, f"remote server answered HTTP {resp.status}")
                data = await self._read_capped(resp)
                return FetchedMedia(data=data, mime_type=_pick_mime(resp.headers.get("Content-Type"), data))

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        too_large = FetchError(400, f"media exceeds the {self._max_bytes} byte limit")
        # Refuse before reading anything when the server admits up front that the body is too big.
        if resp.content_length is not None and resp.content_length > self._max_bytes:
            raise too_large
        buf = bytearray()
        # Content-Length can be absent (chunked) or lie, and decompression can inflate it: count what
        # actually arrives and stop as soon as it crosses the cap.
        async for chunk in resp.content.iter_chunked(_CHUNK):
            buf += chunk
            if len(buf) > self._max_bytes:
                raise too_large
        return bytes(buf)
