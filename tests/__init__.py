"""The test suite. Importing it (every test module, every process the tests spawn with multiprocessing) shares one
verified TLS context among the test code's HTTP clients, below."""

from __future__ import annotations

import functools
import os
import ssl
from typing import Any

import httpx._transports.default as _httpx_transport

_create_ssl_context = _httpx_transport.create_ssl_context


@functools.cache
def _default_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    return _create_ssl_context(verify=True, cert=None, trust_env=True)


def _shared_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
    """Every httpx client (one per `httpx.get(...)`, per SDK client) loads certifi's CA bundle into a new SSL context:
    about 20 ms of CPU, for the plain-HTTP loopback URLs the tests use. Thousands of one-shot calls made that a third
    of the suite's CPU time (py-spy). The default context is built once per process and shared (an SSLContext is
    safe to share between connections and threads); any other `verify`/`cert` still gets its own. The gateway does
    not use httpx: this changes only how the tests' clients are built."""
    if verify is True and cert is None and trust_env:
        return _default_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    return _create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)


_httpx_transport.create_ssl_context = _shared_ssl_context  # type: ignore[assignment]
