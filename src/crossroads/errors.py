"""The one error type the request path raises, rendered in OpenRouter's error shape.

Every failure a client can see becomes ``{"error": {"code": <status>, "message": ..., "metadata": {...}}}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson


class GatewayError(Exception):
    """A failure with a client-safe message and the HTTP status to answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.metadata = metadata
        self.headers = headers or {}
        # OpenRouter puts the HTTP status in error.code, always a number (its SDKs pick their typed error class by
        # it); an identifier of the cause goes in error.metadata.code.
        self.code = status

    def payload(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.metadata:
            error["metadata"] = self.metadata
        return {"error": error}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())


_SECRET_PATTERNS = None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Remove known secrets and anything shaped like an API key from text that may reach a client or a log."""
    import re

    global _SECRET_PATTERNS
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "[REDACTED]")
    if _SECRET_PATTERNS is None:
        _SECRET_PATTERNS = re.compile(
            r"(sk-[A-Za-z0-9_\-]{12,}|AIza[0-9A-Za-z_\-]{20,}|(?i:bearer)\s+[A-Za-z0-9._\-]{12,})")
    return _SECRET_PATTERNS.sub("[REDACTED]", text)
