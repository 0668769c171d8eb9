"""Where the request path hands its record to logs, metrics and traces (one object per gateway process).

The ASGI entry calls `begin` when a request arrives (the only step before the answer: it continues the client's
trace, so upstream requests can carry it) and `end` once the answer is complete or abandoned; everything else
(formatting the access line, counting, building spans) happens in `end`, after the client has its last byte."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from crossroads.accounting.pricing import request_cost
from crossroads.observability.logs import ACCESS_LOG, access
from crossroads.observability.record import RequestInfo

if TYPE_CHECKING:
    from crossroads.api.app import Gateway
    from crossroads.api.asgi import Request

log = logging.getLogger("crossroads.observability")
gate_log = logging.getLogger("crossroads.gate")
DENIAL_WINDOW = 60.0  # seconds over which repeated denials of one kind are summarised in one line
_DENIED = {"auth": "authentication failed", "credit": "credit limit reached", "rate_limit": "rate limit reached"}


def refused_key(label: str | None) -> str | None:
    """How a denial names a key the gate refused, from its `record.key_label`."""
    return f"key {label}" if label else None


class DenialLog:
    """WARNING lines for requests the gate refused, flood-proof: the first denial of a kind in a window is logged in
    full, the rest of that window are counted and summarised in one line when it ends. Per process."""

    def __init__(self, window: float = DENIAL_WINDOW) -> None:
        self.window = window
        self._windows: dict[str, _DenialWindow] = {}

    def record(self, reason: str, who: str | None, path: str, detail: str) -> None:
        now = time.monotonic()
        current = self._windows.get(reason)
        if current is None or now >= current.ends:
            if current is not None:
                current.flush()
            self._windows[reason] = _DenialWindow(reason, now + self.window, self.window)
            gate_log.warning("%s for %s on %s: %s", _DENIED[reason], who or "a request without a key", path, detail)
            return
        current.add(who)

    def flush(self) -> None:
        for current in self._windows.values():
            current.flush()
        self._windows.clear()


class _DenialWindow:
    __slots__ = ("reason", "ends", "length", "count", "who", "timer")

    def __init__(self, reason: str, ends: float, length: float) -> None:
        self.reason, self.ends, self.length = reason, ends, length
        self.count = 0
        self.who: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, who: str | None) -> None:
        self.count += 1
        if len(self.who) < 5:
            self.who.add(who or "no key")
        if self.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self.timer = loop.call_at(loop.time() + max(0.0, self.ends - time.monotonic()), self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.count:
            gate_log.warning("%s %d more time(s) in the last %g s (keys: %s)", _DENIED[self.reason], self.count,
                             self.length, ", ".join(sorted(self.who)))
            self.count = 0
            self.who.clear()


class Observability:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.metrics: Any = None  # crossroads.observability.metrics.Metrics when server.metrics.enabled
        if gateway.config.server.metrics.enabled:
            from crossroads.observability.metrics import Metrics

            self.metrics = Metrics(gateway)
        # crossroads.observability.tracing.Tracer when OTEL_* configures an exporter and the [otel] extra is there
        from crossroads.observability.tracing import tracer_from_environment

        self.tracer: Any = tracer_from_environment()
        self.denials = DenialLog()

    async def start(self) -> None:
        if self.metrics is not None:
            await self.metrics.start()

    async def stop(self) -> None:
        self.denials.flush()
        ACCESS_LOG.flush()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.tracer is not None:  # flushing waits on the collector (at most tracing.SHUTDOWN_WAIT): not on the loop
            await asyncio.to_thread(self.tracer.shutdown)

    def wants_every_request(self) -> bool:
        """Whether anything records requests that went well (the access log, metrics, traces); gate denials and
        errors are always handed over (their warnings)."""
        return self.metrics is not None or self.tracer is not None or access.isEnabledFor(logging.INFO)

    def begin(self, request: Request) -> Any:
        """A trace handle for the request (called only when tracing is on)."""
        return self.tracer.start(request)

    def end(self, info: RequestInfo, trace: Any) -> None:
        try:
            exchange = info.exchange
            if exchange is not None:
                info.usage = usage = exchange.billed_usage()
                info.cost = request_cost(usage, exchange.model.pricing)
            ACCESS_LOG.write(info)
            denial = info.denial
            if denial is not None and info.error is not None:
                who = refused_key(info.key_label) if denial == "auth" else \
                    f"key {info.key_name}" + (f" ({info.key_label})" if info.key_label else "")
                self.denials.record(denial, who, info.path, info.error.message[:200])
            if self.metrics is not None:
                self.metrics.request_done(info)
            if trace is not None:
                trace.end(info)
        except Exception:  # noqa: BLE001 - observing a request must never break serving the next
            log.exception("could not record request %s for logs, metrics or traces", info.request_id)
