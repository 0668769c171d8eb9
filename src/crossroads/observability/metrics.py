"""Prometheus metrics: what every request did, counted once it is complete, and the gateway's state read when scraped.

`Observability` (hub.py) makes one `Metrics` per process when `server.metrics.enabled`, and calls `request_done` once
per request after its answer is complete. That call only adds to tallies of label children found by their label
values (a dict lookup, no `.labels()` validation, no lock): two microseconds or so; it reads no clock and does no I/O.
The tallies reach prometheus_client when a scrape renders (`refresh`). Gauges of state (requests in flight, open
streams, breaker states, the accounting queue) are not touched per request: `refresh` sets them from the gateway's
own figures just before a scrape is rendered (and, with several workers, every `REFRESH_INTERVAL` seconds in each
worker, so that the sum over workers is current; with several workers, counts also go to prometheus_client at once).

Labels are bounded: `endpoint` is the route's template ("unmatched" for 404s), `model` the model that served the
request (or was last tried), or `OTHER_MODEL` when that id is not one the gateway knows (an ad-hoc
`<connection>/<anything>` id would otherwise let clients create series), `connection` a configured connection's name.
Requests that never reached the router (or were refused before any upstream attempt) have `model` and/or
`connection` empty. No key, user or request id is ever a label.

Who may read `/metrics` (`scrape_refusal`; see `MetricsConfig`): with `token`, only a client presenting it as a bearer
token (on whichever port); else with `metrics_port`, anyone reaching that port, which listens on 127.0.0.1 only, and
the main port has no `/metrics`; else clients connecting from a loopback address. The gateway does not read
X-Forwarded-For, so behind a reverse proxy on the same host every client is "loopback": set a token there.

Several workers (`crossroads serve --workers N`): the CLI gives them one empty directory in
`PROMETHEUS_MULTIPROC_DIR` before they start. prometheus_client then keeps every value in per-process files there,
and a scrape, whichever worker answers it, renders the merge of all of them (`MultiProcessCollector`): counters and
histograms summed, gauges as their `multiprocess_mode` says (state gauges only count live processes, and the files of
a worker that is gone are dropped when the next scrape notices).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import re
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from crossroads.api.asgi import Request, respond
from crossroads.errors import GatewayError
from crossroads.observability.record import RequestInfo, upstream_attempts
from crossroads.routing.health import STATUS_EJECTED, STATUS_PROBING

if TYPE_CHECKING:
    from crossroads.accounting.exchange import Exchange
    from crossroads.api.app import Gateway
    from crossroads.config import MetricsConfig

log = logging.getLogger("crossroads.observability")

PREFIX = "crossroads_"
OTHER_MODEL = "other"  # the `model` label of every id the gateway does not know
# The `workspace` label is a workspace's name: bounded, since workspaces are made at run time (beyond this many
# names a process has seen, further ones count as OTHER_WORKSPACE).
MAX_WORKSPACE_LABELS = 100
OTHER_WORKSPACE = "other"
REFRESH_INTERVAL = 1.0  # seconds between gauge refreshes in each worker when several share the scrape
HEAD_TIMEOUT = 5.0  # seconds a metrics-port client gets to send its request head
HEAD_LIMIT = 16 * 1024  # bytes of request head the metrics port reads at most
TOKEN_KINDS = ("prompt", "completion", "reasoning", "cached")
DENIAL_REASONS = ("auth", "credit", "rate_limit")

# Seconds. LLM requests run from milliseconds (cached, refused) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# breaker_state values, from HealthBoard.status (0 healthy, -5 probing, -10 ejected)
BREAKER_CLOSED, BREAKER_PROBING, BREAKER_OPEN = 0, 1, 2

_CLASS_OF_HUNDREDS = ("499", "1xx", "2xx", "3xx", "4xx", "5xx")
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")

# `_created` series double the number of series Prometheus stores and say nothing a counter reset does not.
disable_created_metrics()


def status_class(status: int) -> str:
    """The `status_class` label: "2xx" .. "5xx", and "499" for a client that went away before its answer was complete
    (status 499, or 0 when not even a status was sent): neither the client's error nor the gateway's."""
    if status == 499 or not 100 <= status < 600:
        return "499"
    return _CLASS_OF_HUNDREDS[status // 100]


def attempt_outcome(attempt: dict[str, Any]) -> str:
    """The `outcome` label of one upstream attempt (an `Exchange.attempts` entry that went upstream): ok, http_429,
    http_4xx, http_5xx, transport_error (no HTTP answer: refused, reset, timed out), or bad_response (a 200 whose
    body or stream the gateway could not read, or that broke off before any data reached the client)."""
    status = attempt.get("status")
    if status is None:
        return "transport_error"
    if status == 429:
        return "http_429"
    if status >= 500:
        return "http_5xx"
    if status >= 400:
        return "http_4xx"
    return "bad_response" if attempt.get("error") else "ok"


def is_loopback(client: Any) -> bool:
    """Whether an ASGI `scope["client"]` ((host, port), or None when unknown) is a loopback address, IPv4-mapped IPv6
    included. Unknown clients are not."""
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except (TypeError, ValueError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def scrape_refusal(config: MetricsConfig, authorization: bytes | None, client: Any, *,
                   on_metrics_port: bool) -> GatewayError | None:
    """Why a scrape is refused (401 without the configured token, 403 from a non-loopback client on the main port when
    there is no token), or None when it may be served. The token is compared in constant time and never echoed."""
    if config.token is not None:
        scheme, _, presented = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(presented.strip(), config.token.encode()):
            return GatewayError(401, "Metrics need the bearer token set in server.metrics.token",
                                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return None
    if on_metrics_port or is_loopback(client):
        return None
    return GatewayError(403, "Metrics are served to loopback clients only; set server.metrics.token or "
                             "server.metrics.metrics_port to scrape from another host")


def multiprocess_directory() -> str | None:
    """The directory prometheus_client keeps values in when several processes share the scrape (it chose its value
    class from the same variables when it was imported)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class _CounterTally:
    """A counter child's increments, kept as a float until `apply` hands them to the child (prometheus_client takes
    a lock and checks its arguments on every `inc`; a request makes several)."""

    __slots__ = ("child", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount

    def apply(self) -> None:
        if self.pending:
            amount, self.pending = self.pending, 0.0
            self.child.inc(amount)


class _HistogramTally:
    """A histogram child's observations, bucketed here (one C bisect) until `apply` adds them to the child's bucket
    and sum values (prometheus_client's own per-bucket values: a histogram has no public way to add counts)."""

    __slots__ = ("child", "bounds", "counts", "sum")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds = tuple(child._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value, as observe()
        self.sum += value

    def apply(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        self.child._sum.inc(self.sum)
        for index, count in enumerate(counts):
            if count:
                self.child._buckets[index].inc(count)
                counts[index] = 0
        self.sum = 0.0


_active: Metrics | None = None  # this process's metrics, for the module-level counters below


def count_redis_error() -> None:
    """One failed operation on the rate-limit store (Redis); a no-op when metrics are off."""
    if _active is not None:
        _active.redis_errors.inc()


def count_store_error() -> None:
    """One failed operation on the database (a write, a probe, a key refresh); a no-op when metrics are off."""
    if _active is not None:
        _active.store_errors.inc()


class Metrics:
    def __init__(self, gateway: Gateway) -> None:
        global _active
        self.gateway = gateway
        self.config: MetricsConfig = gateway.config.server.metrics
        self.multiprocess_dir = multiprocess_directory()
        # One process: a registry of its own (not prometheus_client's global one, so that several gateways in one
        # process, as in tests, do not collide). Several: values live in files and each scrape merges them.
        registry = None if self.multiprocess_dir else CollectorRegistry()
        self.registry = registry
        self._refresher: asyncio.Task[None] | None = None
        self._listener: asyncio.Server | None = None

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, registry=registry, buckets=buckets)

        def gauge(name: str, doc: str, labels: tuple[str, ...], mode: Literal["livemax", "livesum"]) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=registry, multiprocess_mode=mode)

        self.requests = counter("requests_total", "Requests answered, by route, model and connection that served, "
                                "and status class of the outcome (499: the client went away)",
                                ("endpoint", "model", "connection", "status_class"))
        self.duration = histogram("request_duration_seconds", "Seconds from a request's arrival to its end",
                                  ("endpoint", "status_class"), DURATION_BUCKETS)
        self.ttft = histogram("time_to_first_token_seconds", "Seconds from a streamed request's arrival to its "
                              "first generated token", ("endpoint", "model"), TTFT_BUCKETS)
        self.tokens = counter("tokens_total", "Tokens billed, by kind (prompt, completion, and of those reasoning "
                              "and cached)", ("model", "connection", "kind"))
        self.cost = counter("cost_usd_total", "Cost of the requests in US dollars", ("model", "connection"))
        self.attempts = counter("upstream_attempts_total", "Requests sent upstream, by outcome",
                                ("connection", "outcome"))
        self.retries = counter("retries_total", "Upstream attempts that repeated the previous one on the same "
                               "connection and model", ("connection",))
        self.workspace_requests = counter("workspace_requests_total", "Inference requests by workspace (of the key; "
                                          "\"\": the master key) and status class", ("workspace", "status_class"))
        self.workspace_cost = counter("workspace_cost_usd_total", "Cost of the requests in US dollars by workspace",
                                      ("workspace",))
        self.fallbacks = counter("fallbacks_total", "Upstream attempts that moved on to another connection or model")
        self.denials = counter("denials_total", "Requests the gateway itself refused: auth (401/403), credit (402), "
                               "rate_limit (429 of its own limits)", ("reason",))
        self.store_errors = counter("store_errors_total", "Failed database operations (writes, probes, refreshes)")
        self.redis_errors = counter("redis_errors_total", "Failed operations on the rate-limit store (Redis)")
        self.write_seconds = histogram("accounting_write_seconds", "Seconds to write one batch of generation "
                                       "records", (), WRITE_BUCKETS)
        # State: the worst breaker over live workers; in-flight figures summed over live workers.
        self.breakers = gauge("breaker_state", "Circuit breaker of each endpoint (model on connection): 0 closed, "
                              "1 probing, 2 open", ("connection", "model"), "livemax")
        self.in_flight = gauge("in_flight_requests", "Requests being served", (), "livesum")
        self.open_streams = gauge("open_streams", "Streamed answers under way", (), "livesum")
        self.queue_depth = gauge("accounting_queue_depth", "Generation records waiting to be written", (),
                                 "livesum")

        # Label children (or their tallies) by their label values: one dict lookup per count. In one process a
        # tally adds up the counts until a scrape renders; with several workers the children count at once into the
        # shared files, since another worker may answer the next scrape.
        self._tallies: list[_CounterTally | _HistogramTally] = []
        self._by_request: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._ttft_by: dict[tuple[str, str], Any] = {}
        self._spend_by: dict[tuple[str, str], tuple[Any, ...]] = {}  # the TOKEN_KINDS, then cost
        self._attempts_by: dict[tuple[str, str], Any] = {}
        self._retries_by: dict[str, Any] = {}
        self._workspace_by: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._fallbacks = self._counter(self.fallbacks)
        self._breaker_by: dict[tuple[str, str], Gauge] = {}
        # Created up front so that their series exist (at 0) before the first denial: rate() needs a start.
        self._denials_by = {reason: self._counter(self.denials.labels(reason)) for reason in DENIAL_REASONS}
        _active = self

    def _counter(self, child: Counter) -> _CounterTally | Counter:
        if self.multiprocess_dir:
            return child  # another worker may answer the next scrape: counted at once, into the shared files
        tally = _CounterTally(child)
        self._tallies.append(tally)
        return tally

    def _histogram(self, child: Histogram) -> _HistogramTally | Histogram:
        if self.multiprocess_dir:
            return child
        tally = _HistogramTally(child)
        self._tallies.append(tally)
        return tally

    def apply(self) -> None:
        """Hand every tally's counts to prometheus_client (on the event loop, where the tallies are written)."""
        for tally in self._tallies:
            tally.apply()

    # -- lifecycle -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        recorder = self.gateway.services.recorder
        if recorder is not None:  # hooks the writer calls (accounting/recorder.py)
            recorder.on_write = self.write_seconds.observe
            recorder.on_store_error = self.store_errors.inc
        if self.config.metrics_port is not None:
            self._listener = await self._listen(self.config.metrics_port)
        if self.multiprocess_dir:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_periodically())

    async def stop(self) -> None:
        global _active
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        recorder = self.gateway.services.recorder
        if recorder is not None and getattr(recorder, "on_write", None) == self.write_seconds.observe:
            recorder.on_write = recorder.on_store_error = None
        if self.multiprocess_dir:
            # This worker's in-flight figures and breaker states leave the sum; its counts stay in their files.
            _mark_dead(os.getpid(), self.multiprocess_dir)
        if _active is self:
            _active = None

    # -- per request -----------------------------------------------------------------------------------------------
    def request_done(self, info: RequestInfo) -> None:
        """Count a complete (or abandoned) request. On the event loop after the answer: keep it cheap."""
        exchange = info.exchange
        status = info.status
        model = connection = ""
        if exchange is not None:
            if status == 200 and exchange.status != 200:
                status = exchange.status  # a stream that began 200 and ended with an error (or was cut off)
            model = exchange.model_id if self.gateway.services.is_known_model(exchange.model_id) else OTHER_MODEL
            if exchange.attempts:
                connection = self._count_upstream(info, exchange, model)
            if exchange.stream and exchange.first_token is not None:
                key = (info.endpoint, model)
                ttft = self._ttft_by.get(key)
                if ttft is None:
                    ttft = self._ttft_by[key] = self._histogram(self.ttft.labels(*key))
                ttft.observe(exchange.first_token - info.started_mono)
        klass = status_class(status)
        request_key = (info.endpoint, model, connection, klass)
        children = self._by_request.get(request_key)
        if children is None:
            children = self._by_request[request_key] = (
                self._counter(self.requests.labels(*request_key)),
                self._histogram(self.duration.labels(info.endpoint, klass)))
        children[0].inc()
        children[1].observe(info.duration)
        if exchange is not None:
            self._count_workspace(info, exchange, klass)
        denial = info.denial
        if denial is not None:
            denied = self._denials_by.get(denial)
            if denied is None:  # a reason record.py added since (its values are a fixed few)
                denied = self._denials_by[denial] = self._counter(self.denials.labels(denial))
            denied.inc()

    def _count_workspace(self, info: RequestInfo, exchange: Exchange, klass: str) -> None:
        principal = exchange.principal
        workspace_id = principal.key.workspace_id if principal.key is not None else principal.workspace_id
        name = self.gateway.services.workspace_name(workspace_id) or ""
        key = (name, klass)
        children = self._workspace_by.get(key)
        if children is None:
            if len({n for n, _ in self._workspace_by}) >= MAX_WORKSPACE_LABELS and \
                    all(n != name for n, _ in self._workspace_by):
                name = OTHER_WORKSPACE
                key = (name, klass)
            children = self._workspace_by.get(key)
            if children is None:
                children = self._workspace_by[key] = (
                    self._counter(self.workspace_requests.labels(name, klass)),
                    self._counter(self.workspace_cost.labels(name)))
        children[0].inc()
        cost = info.cost if info.usage is not None else exchange.cost()
        if cost > 0:
            children[1].inc(cost)

    def _count_upstream(self, info: RequestInfo, exchange: Exchange, model: str) -> str:
        """Count the exchange's upstream attempts (outcome, retries, fallbacks) and, when any went upstream, its
        tokens and cost; returns the connection that served (or was tried last), "" when none was tried."""
        previous: tuple[str, str] | None = None
        for attempt in upstream_attempts(exchange):
            name = attempt["provider_name"]
            outcome_key = (name, attempt_outcome(attempt))
            child = self._attempts_by.get(outcome_key)
            if child is None:
                child = self._attempts_by[outcome_key] = self._counter(self.attempts.labels(*outcome_key))
            child.inc()
            target = (name, attempt["model_permaslug"])
            if previous is not None:
                if target == previous:
                    retried = self._retries_by.get(name)
                    if retried is None:
                        retried = self._retries_by[name] = self._counter(self.retries.labels(name))
                    retried.inc()
                else:
                    self._fallbacks.inc()
            previous = target
        if previous is None:
            return ""  # refused before any upstream attempt (capacity, breakers)
        connection = exchange.connection.name
        spend_key = (model, connection)
        spend = self._spend_by.get(spend_key)
        if spend is None:
            spend = self._spend_by[spend_key] = (
                *(self._counter(self.tokens.labels(model, connection, kind)) for kind in TOKEN_KINDS),
                self._counter(self.cost.labels(model, connection)))
        usage = info.usage if info.usage is not None else exchange.billed_usage()
        if usage.prompt_tokens > 0:
            spend[0].inc(usage.prompt_tokens)
        if usage.completion_tokens > 0:
            spend[1].inc(usage.completion_tokens)
        if usage.reasoning_tokens > 0:
            spend[2].inc(usage.reasoning_tokens)
        if usage.cached_tokens > 0:
            spend[3].inc(usage.cached_tokens)
        cost = info.cost if info.usage is not None else exchange.cost()
        if cost > 0:
            spend[4].inc(cost)
        return connection

    # -- state, read when scraped ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Hand the tallies to prometheus_client and set the state gauges from the gateway's figures (on the event
        loop, where both are written)."""
        self.gateway.observability.drain()  # the requests answered so far, counted
        self.apply()
        gateway = self.gateway
        self.in_flight.set(gateway.in_flight)
        self.open_streams.set(gateway.open_streams)
        recorder = gateway.services.recorder
        self.queue_depth.set(recorder.pending_count() if recorder is not None else 0)
        health = gateway.services.health
        breakers = self._breaker_by
        for model_id, deployments in gateway.services.registry.models.items():
            for deployment in deployments:
                name = deployment.connection.name
                status = health.status(name, deployment.model.upstream)
                value = BREAKER_OPEN if status == STATUS_EJECTED else \
                    BREAKER_PROBING if status == STATUS_PROBING else BREAKER_CLOSED
                key = (name, model_id)
                child = breakers.get(key)
                if child is None:
                    child = breakers[key] = self.breakers.labels(name, model_id)
                child.set(value)

    async def _refresh_periodically(self) -> None:
        # With several workers a scrape reads every worker's gauges from its file: each keeps its own current.
        while True:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a failed refresh must not end the loop
                log.exception("could not refresh the metrics gauges")
            await asyncio.sleep(REFRESH_INTERVAL)

    async def render(self, accept: bytes | None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when the scraper asks for it) and its content type."""
        self.refresh()
        encode, content_type = choose_encoder((accept or b"").decode("latin-1"))
        # Rendering (and with several workers, reading their files) runs in a thread: it takes milliseconds with
        # many series, which the event loop's requests need not wait for.
        return await asyncio.to_thread(self._encode, encode), content_type

    def _encode(self, encode: Callable[[Any], bytes]) -> bytes:
        if self.registry is not None:
            return encode(self.registry)
        path = self.multiprocess_dir
        assert path is not None
        forget_dead_workers(path)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path)
        return encode(registry)

    # -- serving ---------------------------------------------------------------------------------------------------
    async def serve(self, request: Request) -> None:
        """GET /metrics on the gateway's port (api/app.py routes it only when there is no metrics_port)."""
        refusal = scrape_refusal(self.config, request.headers.get(b"authorization"), request.scope.get("client"),
                                 on_metrics_port=False)
        if refusal is not None:
            raise refusal
        body, content_type = await self.render(request.headers.get(b"accept"))
        await respond(request, 200, body, content_type=[(b"content-type", content_type.encode())])

    async def _listen(self, port: int) -> asyncio.Server:
        # Several workers each listen on the same port (SO_REUSEPORT; the kernel spreads connections), and each
        # answers with every worker's figures.
        try:
            return await asyncio.start_server(self._serve_connection, "127.0.0.1", port, limit=HEAD_LIMIT,
                                              reuse_port=bool(self.multiprocess_dir))
        except OSError as exc:
            raise RuntimeError(f"cannot listen for metrics on 127.0.0.1:{port}: {exc.strerror or exc}") from None

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection (HTTP/1.1, Connection: close): GET /metrics, else 404/405."""
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower().encode("latin-1")] = value.strip().encode("latin-1")
            if path != "/metrics":
                await _write_response(writer, GatewayError(404, f"Not found: {method[:16]} {path[:200]}"))
            elif method not in ("GET", "HEAD"):
                await _write_response(writer, GatewayError(405, f"Method {method[:16]} not allowed on /metrics"))
            elif (refusal := scrape_refusal(self.config, headers.get(b"authorization"), None,
                                            on_metrics_port=True)) is not None:
                await _write_response(writer, refusal)
            else:
                body, content_type = await self.render(headers.get(b"accept"))
                await _write_response(writer, body, content_type, head_only=method == "HEAD")
        except ConnectionError:
            pass  # the scraper went away
        except Exception:  # noqa: BLE001 - one failed scrape must not take the listener down
            log.exception("metrics port: could not answer a scrape")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _write_response(writer: asyncio.StreamWriter, answer: bytes | GatewayError, content_type: str = "",
                          *, head_only: bool = False) -> None:
    if isinstance(answer, GatewayError):
        status, body, content_type = answer.status, answer.body(), "application/json"
        extra = "".join(f"{name}: {value}\r\n" for name, value in answer.headers.items())
    else:
        status, body, extra = 200, answer, ""
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                 f"{extra}Connection: close\r\n\r\n".encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()


def forget_dead_workers(path: str) -> None:
    """Drop the live-gauge files of workers that are gone (crashed: one that stops marks itself), so that their last
    in-flight figures and breaker states stop counting. Counters and histograms keep their files: their counts
    happened."""
    for file in os.listdir(path):
        match = _LIVE_GAUGE_FILE.fullmatch(file)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _mark_dead(pid, path)
        except PermissionError:
            pass  # alive, another user's (not ours, but not dead either)


def _mark_dead(pid: int, path: str) -> None:
    # Another worker's scrape may be removing the same files at the same moment.
    with contextlib.suppress(FileNotFoundError):
        mark_process_dead(pid, path)

