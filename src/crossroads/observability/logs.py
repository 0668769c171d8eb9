"""Log output: one line per request (the access log) and the gateway's warnings, as JSON or key=value text.

`--log-format json` gives one JSON object per line (the default when the log stream is not a terminal: a log
pipeline reads it); `text` gives `time LEVEL logger: message key=value ...` for a person at a terminal. Every line
written while a request is being served carries that request's `request_id` (a context variable set by the ASGI
entry), so its warnings can be joined with its access line.

Nothing secret is ever passed to a log call: keys appear as their display label (`sk-cr-v1-abc...f00`), upstream
error bodies only after the connection's redaction.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

from crossroads.observability.record import RequestInfo, upstream_attempts

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("crossroads_request_id", default=None)
LOG_FORMATS = ("json", "text")
access = logging.getLogger("crossroads.access")


def default_format(stream: Any = None) -> str:
    """text on a terminal, json otherwise (the logs go to stderr)."""
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def configure(level: str = "info", fmt: str | None = None) -> None:
    """Send every log record to stderr in `fmt`; replaces what basicConfig or an earlier call set up. Used by the CLI
    and by each uvicorn worker process (create_app), which starts with no logging set up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if (fmt or default_format()) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # Libraries' chatter (aiosqlite logs every statement at DEBUG) is not the gateway's.
    for noisy in ("aiosqlite", "asyncio", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    # uvicorn's own loggers propagate to the root: one format for every line.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class OncePer:
    """A repeated warning (the same failure on every request during an outage) logged at most once per `interval`
    seconds; the next line says how many were left out."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last = -interval
        self._left_out = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._left_out += 1
            return
        if self._left_out:
            message += f" ({self._left_out} more since the last report, {now - self._last:.0f} s ago)"
        self._last, self._left_out = now, 0
        self.logger.warning(message, *args)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = getattr(record, "fields", None) or {}
    request_id = REQUEST_ID.get()
    if request_id is not None and "request_id" not in fields:
        fields = {"request_id": request_id, **fields}
    return fields


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": _iso(record.created), "level": record.levelname, "logger": record.name,
                                "message": record.getMessage()}
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{_iso(record.created)} {record.levelname} {record.name}: {record.getMessage()}"]
        for name, value in _fields(record).items():
            if value is None:
                continue
            text = str(value)
            if not text or any(c in text for c in ' ="\n'):
                text = orjson.dumps(text).decode()
            parts.append(f"{name}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def access_fields(info: RequestInfo) -> dict[str, Any]:
    """The access line's fields: what was asked, what served it, how long, how much, for whom."""
    fields: dict[str, Any] = {
        "request_id": info.request_id, "method": info.method, "path": info.path, "status": info.status,
        "latency_ms": round(info.duration * 1000, 1),
    }
    if info.key_name is not None:
        fields["key_name"] = info.key_name
        fields["key_label"] = info.key_label
    exchange = info.exchange
    if exchange is not None:
        usage = exchange.billed_usage()
        fields.update(
            generation_id=exchange.generation_id, model=exchange.requested_model, served_model=exchange.model_id,
            connection=exchange.connection.name,
            attempts=len(upstream_attempts(exchange)),
            ttft_ms=(round((exchange.first_token - exchange.started) * 1000, 1)
                     if exchange.first_token is not None else None),
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cost=round(exchange.cost(), 10), stream=exchange.stream)
        if exchange.status != info.status:  # e.g. a stream that began with 200 and ended in an error chunk
            fields["outcome_status"] = exchange.status
        title = exchange.headers.get(b"x-title") or exchange.headers.get(b"x-openrouter-title")
        if title:
            fields["app"] = title.decode("utf-8", "replace")[:200]
    if info.error is not None:
        fields["error"] = info.error.message[:300]
    elif exchange is not None and exchange.error:
        fields["error"] = exchange.error[:300]
    return fields


def log_request(info: RequestInfo) -> None:
    access.info("%s %s %d", info.method, info.path, info.status, extra={"fields": access_fields(info)})
