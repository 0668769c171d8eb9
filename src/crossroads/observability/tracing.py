"""OpenTelemetry traces: a span per request and a child span per upstream attempt, exported over OTLP/HTTP.

Optional: traces need the `[otel]` extra (`pip install 'crossroads[otel]'`) and the standard environment variables
that configure an OTLP exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; headers,
timeout, compression, sampler, batch delays and `OTEL_SERVICE_NAME` are read by the OpenTelemetry SDK itself).
Without them nothing from `opentelemetry` is imported and `tracer_from_environment()` returns None.

The client's W3C `traceparent` (and `tracestate`) is continued; each upstream request carries a `traceparent` whose
parent is the span of that attempt, so an upstream that traces joins the same trace.

What a span records: the GenAI semantic conventions (operation, provider, requested and served model, token usage,
finish reasons, response id), Crossroads' own attributes (request id, key name, connection, attempt number, cost) and
HTTP attributes (method, route, status). Prompt and completion text are never recorded, and there is no option to
record them; nor are error messages, which may quote an upstream's answer or the prompt (the request's access log
line, joined by `crossroads.request_id`, has them).

Cost on the request path: when a request arrives, `start` only reads the client's `traceparent`; an upstream attempt
adds one random id and a formatted header (and the first, the sampler's decision). Spans are built by `end`, after the
answer's last byte, from the request's `RequestInfo`, with the times the request recorded: the SDK's spans are made
then, with the ids already sent upstream. Health probes are not traced (a load balancer's polling would bury the requests that matter).
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from crossroads.observability.record import upstream_attempts

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import Span

    from crossroads.accounting.exchange import Exchange
    from crossroads.api.asgi import Request
    from crossroads.observability.record import RequestInfo
    from crossroads.routing.registry import Connection

log = logging.getLogger("crossroads.observability")

DEFAULT_SERVICE_NAME = "crossroads"
# Seconds the gateway's shutdown waits for the spans still queued to reach the collector: the SDK alone would wait
# up to 30 s for one that does not answer.
SHUTDOWN_WAIT = 5.0
UNTRACED_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})

# gen_ai.operation.name by the front the client spoke (Exchange.api_type).
OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat", "completions": "text_completion"}

# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; a later version may append fields after a "-".
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
# A tracestate list member: key=value, the key simple or tenant@system, the value printable ASCII but "," and "=".
_TRACESTATE_MEMBER = re.compile(
    r"([a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])")
_TRACESTATE_MAX_MEMBERS = 32
_SAMPLED = 0x01
_RANDOM_TRACE_ID = 0x02  # W3C Trace Context level 2: the trace id's low 56 bits are random


def tracer_from_environment() -> Tracer | None:
    """A Tracer when the OTEL_* environment configures trace export and the [otel] extra is installed, else None."""
    environ = os.environ
    endpoint_variable = next((name for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
                              if environ.get(name, "").strip()), None)
    if endpoint_variable is None:
        return None
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")} - {""}
    if "none" in exporters:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("%s is set but the OpenTelemetry packages are not installed: traces are off. Install them with "
                    "pip install 'crossroads[otel]'", endpoint_variable)
        return None
    if exporters - {"otlp"}:
        log.warning("OTEL_TRACES_EXPORTER=%s: Crossroads exports traces with OTLP only", ",".join(sorted(exporters)))
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol != "http/protobuf":
        log.warning("OTLP protocol %r asked for: Crossroads exports traces with OTLP over HTTP (http/protobuf) to %s",
                    protocol, endpoint_variable)
    try:
        # The exporter reads the endpoint, headers, timeout, compression and certificates from OTEL_*; the batch
        # processor its delays and sizes (OTEL_BSP_*).
        tracer = Tracer(BatchSpanProcessor(OTLPSpanExporter()))
    except Exception as exc:  # noqa: BLE001 - a tracing setup problem must not stop the gateway from serving
        log.warning("could not set up OpenTelemetry trace export from the OTEL_* environment: %s; traces are off", exc)
        return None
    log.info("OpenTelemetry traces on: exported over OTLP/HTTP as %s sets", endpoint_variable)
    return tracer


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid W3C `traceparent` header value, else None."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_hex, parent_hex, flags_hex, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None):  # ff is forbidden; 00 has exactly four fields
        return None
    trace_id, parent_id = int(trace_hex, 16), int(parent_hex, 16)
    if not trace_id or not parent_id:
        return None
    return trace_id, parent_id, int(flags_hex, 16)


def parse_tracestate(value: bytes) -> list[tuple[str, str]]:
    """The members of a W3C `tracestate` header value; none at all when any of it is invalid (as the standard says:
    a vendor's state that cannot be trusted is dropped rather than propagated)."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return []
    members: dict[str, str] = {}
    for member in text.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        match = _TRACESTATE_MEMBER.fullmatch(member)
        if match is None or match[1] in members or len(members) == _TRACESTATE_MAX_MEMBERS:
            return []
        members[match[1]] = match[2]
    return list(members.items())


def _random_span_id() -> int:
    return random.getrandbits(64) or 1  # zero is the invalid span id


class RequestTrace:
    """One request's trace while it is served: what the client's `traceparent` said and the ids already handed to
    upstreams. Made by `Tracer.start`; `end` builds the spans."""

    __slots__ = ("tracer", "method", "remote_parent", "tracestate", "trace_id", "attempt_ids", "_sampled",
                 "_parent_context", "_members")

    def __init__(self, tracer: Tracer, method: str, remote_parent: tuple[int, int, int] | None,
                 tracestate: bytes | None) -> None:
        self.tracer = tracer
        self.method = method
        self.remote_parent = remote_parent  # the client's (trace id, span id, flags), when it sent a valid one
        self.tracestate = tracestate  # the client's raw tracestate (only with a valid traceparent)
        self.trace_id = remote_parent[0] if remote_parent is not None else 0  # 0 until a new trace needs one
        self.attempt_ids: list[int] = []  # span ids sent upstream, one per attempt, in order
        self._sampled: bool | None = None
        self._parent_context: Context | None = None
        self._members: list[tuple[str, str]] | None = None

    def upstream_headers(self) -> dict[str, str]:
        """`traceparent` (and the client's `tracestate`) for the next upstream attempt, whose span is their parent."""
        span_id = _random_span_id()
        self.attempt_ids.append(span_id)
        headers = {"traceparent": f"00-{self.trace_id_for_children():032x}-{span_id:016x}-{self.flags():02x}"}
        members = self.tracestate_members()
        if members:
            headers["tracestate"] = ",".join(f"{key}={value}" for key, value in members)
        return headers

    def end(self, info: RequestInfo) -> None:
        self.tracer.record(self, info)

    # -- what the spans are made from ----------------------------------------------------------------------------
    def trace_id_for_children(self) -> int:
        if not self.trace_id:
            self.trace_id = random.getrandbits(128) or 1
        return self.trace_id

    def tracestate_members(self) -> list[tuple[str, str]]:
        if self._members is None:
            self._members = parse_tracestate(self.tracestate) if self.tracestate else []
        return self._members

    def parent_context(self) -> Context:
        """The context the request span starts in: the client's span, or nothing (a new trace)."""
        if self._parent_context is None:
            self._parent_context = self.tracer.parent_context(self)
        return self._parent_context

    def sampled(self) -> bool:
        """The sampler's decision (OTEL_TRACES_SAMPLER; by default: the client's, or yes for a new trace), made once:
        the flags sent upstream and whether spans are made follow it."""
        if self._sampled is None:
            self._sampled = self.tracer.sampled(self)
        return self._sampled

    def flags(self) -> int:
        if self.remote_parent is not None:
            random_id = self.remote_parent[2] & _RANDOM_TRACE_ID
        else:
            random_id = _RANDOM_TRACE_ID  # our own trace ids are wholly random
        return random_id | (_SAMPLED if self.sampled() else 0)


class _ChosenIds:
    """The SDK's id generator, except that the span made next may get ids chosen earlier: the ids of a new trace and
    of each upstream attempt are sent while the request runs, and the spans are made once it has ended."""

    def __init__(self, random_ids: Any) -> None:
        self.random_ids = random_ids
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        chosen, self.trace_id = self.trace_id, 0
        return chosen or self.random_ids.generate_trace_id()

    def generate_span_id(self) -> int:
        chosen, self.span_id = self.span_id, 0
        return chosen or self.random_ids.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return True


class Tracer:
    """A TracerProvider of our own (the global one stays untouched) with `processor` (batching to OTLP/HTTP in the
    gateway), its resource from OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (default "crossroads")."""

    def __init__(self, processor: SpanProcessor) -> None:
        from opentelemetry import context, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        from crossroads import __version__

        self._api = trace
        self._empty_context = context.Context
        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):  # the SDK's default
            resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
        self._ids = _ChosenIds(RandomIdGenerator())
        # shutdown() is the gateway's to call, bounded; the SDK's own at-exit shutdown could hold the process for
        # as long as a collector that does not answer is waited for.
        self.provider = TracerProvider(resource=resource, id_generator=self._ids,  # type: ignore[arg-type]
                                       shutdown_on_exit=False)
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("crossroads", __version__)
        self._servers: dict[str, tuple[str | None, int | None]] = {}  # connection base URL -> (host, port)
        self._stopped = False

    # -- on the request path -------------------------------------------------------------------------------------
    def start(self, request: Request) -> RequestTrace | None:
        """The request's trace, continuing the client's `traceparent` when valid; None for health probes."""
        if request.path in UNTRACED_PATHS:
            return None
        headers = request.headers
        given = headers.get(b"traceparent")
        remote_parent = parse_traceparent(given) if given is not None else None
        tracestate = headers.get(b"tracestate") if remote_parent is not None else None
        return RequestTrace(self, request.method, remote_parent, tracestate)

    def parent_context(self, trace: RequestTrace) -> Context:
        api = self._api
        if trace.remote_parent is None:
            return self._empty_context()
        trace_id, span_id, flags = trace.remote_parent
        parent = api.SpanContext(trace_id, span_id, is_remote=True, trace_flags=api.TraceFlags(flags),
                                 trace_state=api.TraceState(trace.tracestate_members()))
        return api.set_span_in_context(api.NonRecordingSpan(parent), self._empty_context())

    def sampled(self, trace: RequestTrace) -> bool:
        # The same question the SDK asks when the request span is made (same parent, trace id, name and kind), so
        # with any of the standard samplers its answer then is this one.
        result = self.provider.sampler.should_sample(trace.parent_context(), trace.trace_id_for_children(),
                                                     trace.method, self._api.SpanKind.SERVER)
        return result.decision.is_sampled()

    # -- after the answer ----------------------------------------------------------------------------------------
    def record(self, trace: RequestTrace, info: RequestInfo) -> None:
        """The request span and its attempts' spans, with the times the request recorded."""
        if self._stopped or not trace.sampled():  # after shutdown the SDK would log each span it drops
            return
        api = self._api
        clock = _Clock(info.started, info.started_mono)
        end_ns = clock.after(info.duration)
        exchange = info.exchange
        self._ids.trace_id = trace.trace_id_for_children() if trace.remote_parent is None else 0
        try:
            span = self._tracer.start_span(trace.method, trace.parent_context(), api.SpanKind.SERVER,
                                           start_time=clock.started_ns)
        finally:
            self._ids.trace_id = 0
        attributes: dict[str, Any] = {
            "http.request.method": info.method, "url.path": info.path, "crossroads.request_id": info.request_id,
            "http.route": info.endpoint if info.endpoint != "unmatched" else None,
            "http.response.status_code": info.status or None, "crossroads.key_name": info.key_name,
        }
        outcome = info.status
        if exchange is None:
            span.update_name(f"{info.method} {info.endpoint}" if info.endpoint != "unmatched" else info.method)
        else:
            operation = OPERATIONS.get(exchange.api_type, exchange.api_type)
            requested = exchange.requested_model or exchange.model_id
            span.update_name(f"{operation} {requested}")
            attributes.update(_gen_ai_attributes(exchange, operation))
            attributes.update({
                "gen_ai.request.model": requested,
                "gen_ai.response.model": exchange.upstream_model or exchange.model_id,
                "gen_ai.response.id": exchange.generation_id,
                "crossroads.connection": exchange.connection.name, "crossroads.model": exchange.model_id,
                "crossroads.cost_usd": exchange.cost(), "crossroads.stream": exchange.stream,
                "crossroads.attempts": len(exchange.sent_attempts),
            })
            if exchange.first_token is not None:
                attributes["crossroads.ttft_ms"] = round((exchange.first_token - exchange.started) * 1000, 1)
            if exchange.status != 200:  # e.g. a stream that began with 200 and ended in an error chunk
                outcome = exchange.status
        if info.error is not None:
            outcome = info.error.status
        # An HTTP server span fails on the gateway's own failures (5xx), not on the client's (4xx, 499: went away).
        failed = outcome >= 500
        if failed:
            attributes["error.type"] = str(outcome)
        span.set_attributes({name: value for name, value in attributes.items() if value is not None})
        if failed:
            span.set_status(api.Status(api.StatusCode.ERROR))
        if exchange is not None:
            self._attempt_spans(trace, span, exchange, clock, end_ns)
        span.end(end_time=end_ns)

    def _attempt_spans(self, trace: RequestTrace, request_span: Span, exchange: Exchange, clock: _Clock,
                       request_end_ns: int) -> None:
        context = self._api.set_span_in_context(request_span, self._empty_context())
        operation = OPERATIONS.get(exchange.api_type, exchange.api_type)
        sent = exchange.sent_attempts
        outcomes = upstream_attempts(exchange)  # the same attempts' statuses and errors, in the same order
        ids = trace.attempt_ids
        for number, ((started, ended, connection, model), outcome) in enumerate(zip(sent, outcomes, strict=False),
                                                                                 start=1):
            last = number == len(sent)
            if last and exchange.upstream_ended is not None:
                # A stream's status is known at its first bytes; the attempt lasts until its last.
                ended = max(ended, exchange.upstream_ended)
            status, error = outcome.get("status"), outcome.get("error")
            attributes: dict[str, Any] = {"http.response.status_code": status}
            failed = status is None or status >= 400 or bool(error)
            if failed:
                attributes["error.type"] = (
                    str(status) if status is not None and status >= 400 else
                    "invalid_response" if status is not None else  # a 200 whose body or stream was unusable
                    "timeout" if error and "timed out" in error else "connection_error")
            elif last:  # the attempt that served the answer
                attributes.update(_gen_ai_attributes(exchange, operation))
                attributes["gen_ai.response.model"] = exchange.upstream_model or model.upstream
                attributes["gen_ai.response.id"] = exchange.upstream_id
            self._attempt_span(connection, model, operation, number, context,
                               ids[number - 1] if number <= len(ids) else 0,
                               clock.at(started if started is not None else ended),
                               min(clock.at(ended), request_end_ns), attributes, failed=failed)
        # An attempt still waiting for its answer when the request ended (the client went away): it went upstream
        # (its traceparent was sent) but never reached Exchange.attempt().
        in_flight = exchange.upstream_started
        if len(ids) > len(sent) and in_flight is not None and (not sent or sent[-1][0] != in_flight):
            cancelled = exchange.cancelled or exchange.status == 499
            self._attempt_span(exchange.connection, exchange.model, operation, len(sent) + 1, context,
                               ids[len(sent)], clock.at(in_flight), request_end_ns,
                               {"crossroads.cancelled": True} if cancelled else {"error.type": "_OTHER"},
                               failed=not cancelled)

    def _attempt_span(self, connection: Connection, model: Any, operation: str, number: int, context: Context,
                      span_id: int, start_ns: int, end_ns: int, attributes: dict[str, Any], *, failed: bool) -> None:
        self._ids.span_id = span_id
        try:
            span = self._tracer.start_span(f"{operation} {model.upstream}", context, self._api.SpanKind.CLIENT,
                                           start_time=start_ns)
        finally:
            self._ids.span_id = 0
        host, port = self._server_of(connection)
        span.set_attributes({name: value for name, value in {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": connection.spec.provider_name,
            "gen_ai.request.model": model.upstream, "crossroads.model": model.id,
            "crossroads.connection": connection.name, "crossroads.attempt": number,
            "http.request.method": "POST", "server.address": host, "server.port": port, **attributes,
        }.items() if value is not None})
        if failed:
            span.set_status(self._api.Status(self._api.StatusCode.ERROR))
        span.end(end_time=end_ns)

    def _server_of(self, connection: Connection) -> tuple[str | None, int | None]:
        """The upstream's host and port (never its URL: a base URL may hold a password)."""
        base_url = connection.config.base_url
        server = self._servers.get(base_url)
        if server is None:
            try:
                parts = urlsplit(base_url)
                server = (parts.hostname, parts.port or {"https": 443, "http": 80}.get(parts.scheme))
            except ValueError:
                server = (None, None)
            self._servers[base_url] = server
        return server

    def shutdown(self) -> None:
        """Export what is still queued and stop, waiting at most SHUTDOWN_WAIT seconds."""
        # The SDK's shutdown can block for the exporter's retries against a collector that does not answer; a
        # daemon thread bounds the wait (what it has not sent by then is lost with the process).
        self._stopped = True
        worker = threading.Thread(target=self.provider.shutdown, name="crossroads-trace-shutdown", daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(SHUTDOWN_WAIT)
        if worker.is_alive():
            log.warning("traces not exported within %.0f s of shutdown were dropped", time.monotonic() - started)


def _gen_ai_attributes(exchange: Exchange, operation: str) -> dict[str, Any]:
    """What the request and its serving attempt share: operation, provider, usage, finish reason."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": exchange.connection.spec.provider_name,
    }
    if exchange.usage.seen or exchange.streamed_chars:
        usage = exchange.billed_usage()
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if exchange.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [exchange.finish_reason]
    return attributes


class _Clock:
    """Epoch nanoseconds of the request's monotonic times. Offsets are added in nanoseconds: an epoch time as a
    float is only exact to a quarter of a microsecond."""

    __slots__ = ("started_ns", "started_mono")

    def __init__(self, started: float, started_mono: float) -> None:
        self.started_ns = int(started * 1e9)
        self.started_mono = started_mono

    def at(self, monotonic: float) -> int:
        return self.started_ns + round((monotonic - self.started_mono) * 1e9)

    def after(self, seconds: float) -> int:
        return self.started_ns + round(seconds * 1e9)
