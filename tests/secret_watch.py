"""A whole-suite watch for leaked secrets: every body a test reads over HTTP and every gateway log.

Installed by tests/conftest.py's `pytest_configure`, so it covers every test of the run, not a sample:
- Every response body a test reads through httpx (the official SDKs read through httpx too): error bodies, dashboard
  pages, management answers. A configured secret (the master key, the fake upstreams' keys, the SSO client secret,
  the members' password) never appears in one. A gateway API key (`sk-or-v1-` + 64 hex) appears in at most one
  answer, the one that created it (a POST, or the dashboard page that shows a new key once); a second sighting is a
  leak. Streams read chunk by chunk are not bodies read here: their content is model output.
- Every page the browser tests load (tests/browser/conftest.py hands each document over).
- Every gateway log (`GatewayProcess.stop` hands it over): no configured secret and no full API key, ever.
A leak fails the test that read it (the assertion is raised in its `read()`) and, in case that test swallowed it
(a reader thread), the session too (`report`, from conftest's `pytest_sessionfinish`).
"""

from __future__ import annotations

import re

import httpx
import pytest

API_KEY = re.compile(rb"sk-or-v1-[0-9a-f]{64}")

leaks: list[str] = []
_configured: set[bytes] = set()
_first_seen: dict[bytes, str] = {}


def watch(*secrets: str) -> None:
    """Secrets that may never come back from the gateway nor reach a log, whatever the test."""
    _configured.update(s.encode() for s in secrets if s)


def _leak(message: str) -> None:
    leaks.append(message)
    raise AssertionError(f"secret leaked: {message}")


def _masked(secret: bytes) -> str:
    return secret[:12].decode(errors="replace") + "…"


def check_body(response: httpx.Response, body: bytes) -> None:
    request = response.request
    check_answer(request.method, request.url.path, response.status_code, response.headers.get("content-type", ""),
                 body)


def check_answer(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """One answer a client read: `body` of `method path`, which came back with `status` and `content_type`."""
    where = f"{method} {path} -> {status}"
    for secret in _configured:
        if secret in body:
            _leak(f"{_masked(secret)} in the body of {where}")
    for match in set(API_KEY.findall(body)):
        if match in _configured:
            continue  # reported above
        first = _first_seen.get(match)
        if first is not None:
            _leak(f"API key {_masked(match)} shown again by {where} (first shown by {first})")
        if method != "POST" and not content_type.startswith("text/html"):
            _leak(f"API key {_masked(match)} in the body of {where}, which creates no key")
        _first_seen[match] = where


# The one place a full key may be printed: the master key the first start generates, shown once on the console.
_GENERATED_MASTER_KEY = re.compile(rb"generated a master key \(stored in [^)]*\):\s+sk-or-v1-[0-9a-f]{64}")


def check_log(text: str, where: str) -> None:
    data = _GENERATED_MASTER_KEY.sub(b"generated a master key", text.encode(errors="replace"), count=1)
    for secret in _configured:
        if secret in data:
            _leak(f"{_masked(secret)} in the log of {where}")
    for match in set(API_KEY.findall(data)):
        _leak(f"API key {_masked(match)} in the log of {where}")


_original_read = httpx.Response.read
_original_aread = httpx.Response.aread


def _read(self: httpx.Response) -> bytes:
    already = hasattr(self, "_content")
    content = _original_read(self)
    if not already:
        check_body(self, content)
    return content


async def _aread(self: httpx.Response) -> bytes:
    already = hasattr(self, "_content")
    content = await _original_aread(self)
    if not already:
        check_body(self, content)
    return content


def install() -> None:
    httpx.Response.read = _read  # type: ignore[method-assign]
    httpx.Response.aread = _aread  # type: ignore[method-assign]


def report(session: pytest.Session) -> None:
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", f"{len(leaks)} secret leak(s)", red=True)
            for message in leaks:
                reporter.write_line(message)
