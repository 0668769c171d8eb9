"""Where the request path hands its record to logs, metrics and traces (one object per gateway process).

The ASGI entry calls `begin` when a request arrives (the only step before the answer: it continues the client's
trace, so upstream requests can carry it) and `end` once the answer is complete or abandoned; everything else
(formatting the access line, counting, building spans) happens in `end`, after the client has its last byte."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crossroads.observability.logs import log_request
from crossroads.observability.record import RequestInfo

if TYPE_CHECKING:
    from crossroads.api.app import Gateway
    from crossroads.api.asgi import Request

log = logging.getLogger("crossroads.observability")


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

    async def start(self) -> None:
        if self.metrics is not None:
            await self.metrics.start()

    async def stop(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
        if self.tracer is not None:
            self.tracer.shutdown()

    def begin(self, request: Request) -> Any:
        """A trace handle for the request (None without tracing)."""
        return self.tracer.start(request) if self.tracer is not None else None

    def end(self, info: RequestInfo, trace: Any) -> None:
        try:
            log_request(info)
            if self.metrics is not None:
                self.metrics.request_done(info)
            if trace is not None:
                trace.end(info)
        except Exception:  # noqa: BLE001 - observing a request must never break serving the next
            log.exception("could not record request %s for logs, metrics or traces", info.request_id)
