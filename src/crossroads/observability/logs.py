"""Log output: one line per request (the access log) and the gateway's warnings, as JSON or key=value text.

`--log-format json` gives one JSON object per line (the default when the log stream is not a terminal: a log
pipeline reads it); `text` gives `time LEVEL logger: message key=value ...` for a person at a terminal. Every line
written while a request is being served carries that request's `request_id` (a context variable set by the ASGI
entry), so its warnings can be joined with its access line.

Nothing secret is ever passed to a log call: keys appear as their display label (`sk-cr-v1-abc...f00`), upstream
error bodies only after the connection's redaction.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import stat
import sys
import time
from typing import Any

import orjson

from crossroads.observability.record import RequestInfo, upstream_attempts
from crossroads.timetext import SecondCachedTime

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("crossroads_request_id", default=None)
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
    fmt = fmt or default_format()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    ACCESS_LOG.direct(sys.stderr, fmt)
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


_iso = SecondCachedTime("%Y-%m-%dT%H:%M:%S", 3, "Z")  # RFC 3339 UTC, milliseconds


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
        line = _text_line(record.created, record.levelname, record.name, record.getMessage(), _fields(record))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_line(created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
    parts = [f"{_iso(created)} {level} {logger}: {message}"]
    for name, value in fields.items():
        if value is None:
            continue
        text = str(value)
        if not text or any(c in text for c in ' ="\n'):
            text = orjson.dumps(text).decode()
        parts.append(f"{name}={text}")
    return " ".join(parts)


class AccessLog:
    """The access lines, one per request: the busiest log of all, so once `configure` has pointed it at the log
    stream it bypasses the logging machinery (a record, a handler lock and a write per line cost more than the line):
    lines are formatted as the handler would, collected, and written every `FLUSH_EVERY` seconds (and at shutdown) in
    writes of whole lines: into a pipe at most `PIPE_BUF` bytes each, so the lines of several worker processes
    sharing one pipe never interleave mid-line; into a file up to `FILE_CHUNK`. The `crossroads.access` logger's level still decides whether lines are written. Before
    `configure` (the gateway embedded elsewhere), lines go through that logger like any other."""

    FLUSH_EVERY = 0.25  # seconds an access line may wait before it is written
    PIPE_BUF = 4096  # bytes a pipe writes atomically
    FILE_CHUNK = 256 * 1024  # bytes per write into a regular file

    def __init__(self) -> None:
        self._stream: Any = None
        self._json = True
        self._pending: list[bytes] = []  # whole lines, newline included
        self._flush_timer: asyncio.TimerHandle | None = None
        self._chunk = self.PIPE_BUF

    def direct(self, stream: Any, fmt: str) -> None:
        self.flush()
        self._stream, self._json = stream, fmt == "json"
        # Whole lines per write: at most PIPE_BUF bytes into a pipe (workers sharing it never interleave mid-line);
        # a regular file takes larger writes whole (one process appends at a time), and each write costs a syscall.
        try:
            regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
        except (OSError, ValueError, AttributeError):
            regular = False
        self._chunk = self.FILE_CHUNK if regular else self.PIPE_BUF

    def write(self, info: RequestInfo) -> None:
        if not access.isEnabledFor(logging.INFO):
            return
        message = f"{info.method} {info.path} {info.status}"
        if self._stream is None:
            access.info("%s", message, extra={"fields": access_fields(info)})
            return
        now = time.time()
        if self._json:
            head = {"time": _iso(now), "level": "INFO", "logger": "crossroads.access", "message": message}
            line = orjson.dumps(access_fields(info, head), default=str, option=orjson.OPT_APPEND_NEWLINE)
        else:
            line = (_text_line(now, "INFO", "crossroads.access", message, access_fields(info)) + "\n").encode(
                "utf-8", "replace")
        self._pending.append(line)
        if self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_timer = loop.call_later(self.FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        pending, self._pending = self._pending, []
        if not pending or self._stream is None:
            return
        try:
            self._stream.flush()  # what the logging handler wrote first stays first
            descriptor = self._stream.fileno()
        except (OSError, ValueError, AttributeError):  # no file descriptor (a test's stream), or a closed one
            try:
                self._stream.write(b"".join(pending).decode("utf-8", "replace"))
                self._stream.flush()
            except (OSError, ValueError):
                pass
            return
        chunk: list[bytes] = []
        size = 0
        try:
            for line in pending:
                if chunk and size + len(line) > self._chunk:
                    _write_all(descriptor, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                _write_all(descriptor, b"".join(chunk))
        except OSError:
            pass  # the log's reader is gone (a closed pipe): nothing to tell it


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]

ACCESS_LOG = AccessLog()
atexit.register(ACCESS_LOG.flush)


def access_fields(info: RequestInfo, line: dict[str, Any] | None = None) -> dict[str, Any]:
    """The access line's fields (added to `line` when given): what was asked, what served it, how long, how much, for
    whom."""
    fields = line if line is not None else {}
    fields["request_id"] = info.request_id
    fields["method"] = info.method
    fields["path"] = info.path
    fields["status"] = info.status
    fields["latency_ms"] = round(info.duration * 1000, 1)
    if info.key_name is not None:
        fields["key_name"] = info.key_name
        fields["key_label"] = info.key_label
    exchange = info.exchange
    if exchange is not None:
        usage = info.usage if info.usage is not None else exchange.billed_usage()
        fields["generation_id"] = exchange.generation_id
        fields["model"] = exchange.requested_model
        fields["served_model"] = exchange.model_id
        fields["connection"] = exchange.connection.name
        fields["attempts"] = len(upstream_attempts(exchange))
        fields["ttft_ms"] = round((exchange.first_token - exchange.started) * 1000, 1) \
            if exchange.first_token is not None else None
        fields["prompt_tokens"] = usage.prompt_tokens
        fields["completion_tokens"] = usage.completion_tokens
        fields["cost"] = info.cost
        fields["stream"] = exchange.stream
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
