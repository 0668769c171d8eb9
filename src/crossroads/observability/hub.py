"""Where the request path hands its record to logs, metrics and traces (one object per gateway process).

The ASGI entry calls `begin` when a request arrives (the only step before the answer: it continues the client's
trace, so upstream requests can carry it) and `end` once the answer is complete or abandoned, after the client has
its last byte: the trace's spans are built then, and the access lines and metrics of the requests ended in the same
`BATCH_EVERY` seconds are made together (`drain`; a scrape drains first, and so does `stop`)."""

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
BATCH_EVERY = 0.05  # seconds a request's record may wait before its access line and metrics are made
# Records a batch takes at most: a full batch is drained once the current turn of the event loop ends, so a drain
# holds the loop for about 16 x 9 µs, not for the hundreds a busy 0.05 s brings (a tail at low concurrency).
BATCH_SIZE = 16
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
        self._pending: list[RequestInfo] = []  # records waiting for the next drain
        self._drain_timer: asyncio.Handle | None = None

    async def start(self) -> None:
        if self.metrics is not None:
            await self.metrics.start()

    async def stop(self) -> None:
        self.drain()
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
        """Take a request's record once its answer is complete: its trace ends now (span times are the request's);
        its access line, denial warning and metrics follow within `BATCH_EVERY` seconds, with the other requests'
        of that moment (`drain`)."""
        try:
            if trace is not None:
                self._price(info)
                trace.end(info)
        except Exception:  # noqa: BLE001 - observing a request must never break serving the next
            log.exception("could not record request %s for traces", info.request_id)
        error = info.error
        if error is not None:
            # The answer is out: the error's traceback (and those it chained) would keep the failed request's frames,
            # its body included (up to max_body_bytes), alive until the batch is drained.
            error.__traceback__ = error.__context__ = error.__cause__ = None
        pending = self._pending
        pending.append(info)
        if self._drain_timer is None or len(pending) == BATCH_SIZE:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on an event loop (a caller outside the server): at once
                self.drain()
                return
            if self._drain_timer is not None:  # a full batch: after this turn, not a pause of many at once later
                self._drain_timer.cancel()
                self._drain_timer = loop.call_soon(self.drain)
            else:
                self._drain_timer = loop.call_later(BATCH_EVERY, self.drain)

    def drain(self) -> None:
        """Hand every request record taken since the last drain to the access log, the denial log and the metrics.
        Batched because one pass over many records runs with the code and the counters warm in the CPU's caches:
        measured on the bench's plain completions, the same work took 18 µs a request one at a time between two
        requests' own work, and 7 µs in a tight loop."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        pending, self._pending = self._pending, []
        metrics = self.metrics
        for info in pending:
            try:
                self._price(info)
                ACCESS_LOG.write(info)
                denial = info.denial
                if denial is not None and info.error is not None:
                    who = refused_key(info.key_label) if denial == "auth" else \
                        f"key {info.key_name}" + (f" ({info.key_label})" if info.key_label else "")
                    self.denials.record(denial, who, info.path, info.error.message[:200])
                if metrics is not None:
                    metrics.request_done(info)
            except Exception:  # noqa: BLE001 - one record that cannot be observed must not lose the others
                log.exception("could not record request %s for logs or metrics", info.request_id)

    @staticmethod
    def _price(info: RequestInfo) -> None:
        """Set the record's billed usage and cost, once."""
        exchange = info.exchange
        if exchange is not None and info.usage is None:
            info.usage = usage = exchange.billed_usage()
            info.cost = request_cost(usage, exchange.model.pricing)
