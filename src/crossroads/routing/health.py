"""Circuit breakers per endpoint and per connection, and the live figures the router and the endpoints API read.

The unit is the **endpoint**: one upstream model on one connection, keyed by (connection name, upstream model id,
i.e. ``Deployment.model.upstream``; two catalog ids, or an ad-hoc ``<connection>/<upstream>`` id, that send the same
model to the same connection are one endpoint). Everything here lives in one process: each ``--workers`` process keeps
its own breakers and figures, so a failing endpoint is ejected by each process on its own evidence (why that is the
right unit: routing/fleet_health.py, which adds every process's figures up for the endpoints API when Redis is
configured).

Where a failed attempt counts (``fault_scope``):

- ``CONNECTION``: the attempt reached no upstream, or the upstream refused the account: connect refused, reset or
  closed before any response, DNS or TLS failure, a *connect* timeout, and HTTP 401, 402, 403. A failure without a
  status counts here unless the caller passes ``connection_fault=False`` (providers/transport.py and the stream
  pump say so for a timeout waiting for the response and for a stream that broke off). These count on the
  connection's breaker; while it is open, every endpoint of the connection is held back (one bad key or a dead host
  ejects all its models at once).
- ``ENDPOINT``: the upstream answered (or accepted the connection) but this model failed: any 5xx, 408, a timeout
  waiting for the response once connected (a slow or stuck model says nothing about the account's other models), a
  stream that broke after it began. These count on that endpoint's breaker only; the account's other models go on.
- ``CAPACITY``: 429. It means "busy", not "broken": it never counts toward a breaker nor against uptime. Its
  ``Retry-After`` makes the endpoint *cool* until then: ``available`` is False, so routing orders it after the other
  candidates, but ``acquire`` still lets attempts through (it is not ejected). A success ends the cool spell.
- ``NONE``: any other 4xx is the caller's doing (a bad request); the upstream answered sanely, so for the breakers
  it counts like a success, and it is left out of uptime.

A client disconnect never counts (``record_cancelled``).

Breaker (the same state machine at both levels, one per endpoint and one per connection):

- closed: attempts go. ``failure_threshold`` consecutive failures of its level open it. A success starts the count
  over, and so does, for the connection's breaker, any HTTP answer but 401/402/403 (the connection works).
- open: ``acquire`` refuses for ``cooldown`` seconds.
- half-open: after the cool-down exactly one attempt (the probe) may go: one per endpoint, and for the connection's
  breaker one for the whole connection. Its success closes the breaker, a failure of the breaker's level opens it
  again for a fresh cool-down. An answer that gives no verdict for that level (a 429; a connection fault, for an
  endpoint's probe) or a probe whose client went away (``record_cancelled``) frees the slot for the next attempt; a
  probe that never reports back frees it after ``probe_timeout``.
- panic: ``acquire(..., force=True)`` lets an attempt through whatever the state. A breaker still cooling stays open
  (the forced attempt's verdict, like a straggler's, neither extends nor cuts the cool-down; the probe after it
  decides), so panic traffic does not change when an endpoint comes back. routing/attempts.py forces attempts only
  when no candidate of a request could be attempted, trying them in ``ejected_since`` order (ejected longest ago
  first).

Figures, per endpoint, in OpenRouter's endpoint shapes and units:

- ``uptime_last_5m|30m|1d``: percentage of successful attempts among successes and failures (connection-level ones
  included), rate-limited (429) and caller-caused failures excluded, None without traffic. Kept as per-minute (and,
  for the day, 15-minute) counters.
- ``latency_last_30m``: time to first token in **milliseconds**, ``{p50, p75, p90, p99}``, None without samples.
- ``throughput_last_30m``: output tokens per second of generation, ``{p50, p75, p90, p99}``. As on OpenRouter, a
  higher percentile is a worse tail: pXX is the rate that XX% of requests reached or beat (p99 is the slowest).
- ``status``: 0 when both the endpoint's and its connection's breakers are closed (a cool endpoint is up: 0 too),
  ``STATUS_PROBING`` (-5) while either is half-open or cooled and awaiting its probe, ``STATUS_EJECTED`` (-10) while
  either is open and cooling (OpenRouter's status values are 0 and negative integers).

Samples live in capped deques with their timestamps (expired on write and read, so memory stays bounded and each
record is O(1) amortised); percentiles are computed on read and cached until a sample arrives or expires. Under very
heavy traffic the cap makes the figures cover the most recent ``max_samples`` requests rather than the whole window.

Hot path: ``acquire`` and ``available`` are two or three dict lookups (connection -> its breaker, connection -> model
-> endpoint), allocate nothing, and read the clock only when a breaker is not closed or the endpoint is cool.
Everything runs on the event loop thread: no locks.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from crossroads.routing.retry import parse_retry_after

log = logging.getLogger("crossroads.routing")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATUS_OK, STATUS_PROBING, STATUS_EJECTED = 0, -5, -10
NONE, CAPACITY, ENDPOINT, CONNECTION = "none", "capacity", "endpoint", "connection"  # fault scopes

# Statuses that say the connection itself (its account) is unusable, whichever model was asked for.
_CONNECTION_STATUSES = frozenset({401, 402, 403})
# Endpoints one connection keeps figures for. Ad-hoc `<connection>/<model>` ids come from clients, so without a bound
# every new name would add one for good (a few KB each); past it, the oldest endpoint with nothing to remember (its
# breaker closed, not cooling) is forgotten: its figures start over should it come back.
MAX_ENDPOINTS_PER_CONNECTION = 2048
_PERCENTILES = (50, 75, 90, 99)


@dataclass
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open a breaker (an endpoint's or a connection's)
    cooldown: float = 30.0  # seconds an open breaker refuses attempts before one probe may go
    probe_timeout: float = 600.0  # seconds after which an unanswered probe no longer blocks the next one


def fault_scope(status: int | None, connection_fault: bool | None = None) -> str:
    """Where an attempt that ended with ``status`` (None: no HTTP response) counts: CONNECTION, ENDPOINT, CAPACITY
    (429) or NONE (the caller's fault). ``connection_fault`` overrides the guess for a failure without a status
    (True: nothing was reached; False: the upstream was reached, e.g. a response timeout or a broken stream)."""
    if status == 429:
        return CAPACITY
    if connection_fault is None:
        connection_fault = status is None or status in _CONNECTION_STATUSES
    if connection_fault:
        return CONNECTION
    if status is None or status >= 500 or status == 408 or status in _CONNECTION_STATUSES:
        return ENDPOINT
    return NONE


def counts_as_failure(status: int | None) -> bool:
    """Whether an attempt that ended with ``status`` counts toward a breaker and against uptime (429 does not)."""
    return fault_scope(status) in (ENDPOINT, CONNECTION)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Linear-interpolated quantile of an ascending, non-empty list (``fraction`` in [0, 1])."""
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class _Samples:
    """Timestamped values over a sliding window, capped in count, with the sorted values cached."""

    __slots__ = ("_items", "_window", "_sorted")

    def __init__(self, window: float, max_samples: int) -> None:
        self._items: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._window = window
        self._sorted: list[float] | None = None

    def add(self, now: float, value: float) -> None:
        items = self._items
        if items and items[0][0] <= now - self._window:
            self._expire(now)
        items.append((now, value))
        self._sorted = None

    def sorted_values(self, now: float) -> list[float]:
        self._expire(now)
        if self._sorted is None:
            self._sorted = sorted(value for _, value in self._items)
        return self._sorted

    def recent_values(self, now: float, limit: int | None) -> list[float]:
        """The values still in the window, the most recent `limit` of them (all without a limit)."""
        self._expire(now)
        items = self._items
        start = 0 if limit is None else max(0, len(items) - limit)
        return [value for _, value in itertools.islice(items, start, None)]

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        items = self._items
        while items and items[0][0] <= horizon:
            items.popleft()
            self._sorted = None


class _Tally:
    """Success/failure counts in fixed-width time buckets, kept for ``span`` seconds."""

    __slots__ = ("_buckets", "_width", "_keep")

    def __init__(self, width: float, span: float) -> None:
        self._buckets: deque[list[int]] = deque()  # [bucket index, successes, failures], oldest first
        self._width = width
        self._keep = max(1, math.ceil(span / width))

    def add(self, now: float, ok: bool) -> None:
        index = int(now // self._width)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != index:  # a new bucket (rare): drop the ones that fell out first
            self._expire(index)
            buckets.append([index, 0, 0])
        buckets[-1][1 if ok else 2] += 1

    def counts(self, now: float, span: float) -> tuple[int, int]:
        """Successes and failures over the buckets covering the last ``span`` seconds (current bucket included)."""
        index = int(now // self._width)
        self._expire(index)
        first = index - max(1, math.ceil(span / self._width)) + 1
        ok = failed = 0
        for bucket, successes, failures in self._buckets:
            if bucket >= first:
                ok += successes
                failed += failures
        return ok, failed

    def _expire(self, index: int) -> None:
        while self._buckets and self._buckets[0][0] <= index - self._keep:
            self._buckets.popleft()


class _Breaker:
    __slots__ = ("state", "failures", "opened_at", "probe_started", "name")

    def __init__(self, name: str = "") -> None:
        self.name = name  # what the log calls it: "connection X" or "endpoint X model Y"
        self.state = CLOSED
        self.failures = 0  # consecutive, while closed
        self.opened_at = 0.0
        self.probe_started: float | None = None  # set while a half-open probe is out


class _Endpoint(_Breaker):
    """One endpoint's breaker, cool spell and figures."""

    __slots__ = ("cool_until", "ttft", "tps", "minutes", "quarters")

    def __init__(self, window: float, max_samples: int, name: str = "") -> None:
        super().__init__(name)
        self.cool_until = 0.0  # set by a 429's Retry-After: ordered last until then (0: not cool)
        self.ttft = _Samples(window, max_samples)  # seconds
        self.tps = _Samples(window, max_samples)  # tokens/s
        self.minutes = _Tally(60.0, max(window, 300.0))  # uptime over 5 min and the window
        self.quarters = _Tally(900.0, 86400.0)  # uptime over a day at 15-minute resolution


class HealthBoard:
    """A breaker per endpoint (connection x upstream model) and per connection, and windowed figures per endpoint, in
    this process; see the module docstring. ``model`` is always the upstream model id (``Deployment.model.upstream``).
    """

    def __init__(self, policy: BreakerPolicy | None = None, *, window: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic, max_samples: int = 2048) -> None:
        self.policy = policy or BreakerPolicy()
        self.window = window
        self._clock = clock
        self._max_samples = max_samples
        self._connections: dict[str, _Breaker] = {}  # connection-level breakers, made by a first connection fault
        self._endpoints: dict[str, dict[str, _Endpoint]] = {}  # connection -> upstream model -> endpoint

    # -- breaker ---------------------------------------------------------------------------------------------------

    def state(self, connection: str, model: str) -> str:
        """The endpoint's own breaker state as last recorded: closed, open or half_open (an open breaker stays "open"
        until an attempt takes the probe). The connection's breaker is ``connection_state``."""
        endpoint = self._find(connection, model)
        return CLOSED if endpoint is None else endpoint.state

    def connection_state(self, connection: str) -> str:
        """The connection-level breaker's state (opened by connection faults only)."""
        breaker = self._connections.get(connection)
        return CLOSED if breaker is None else breaker.state

    def available(self, connection: str, model: str) -> bool:
        """For ordering candidates: False while the endpoint or its connection is open and still cooling (ejected), or
        while the endpoint is cool after a 429's Retry-After. No effect on the breakers."""
        link = self._connections.get(connection)
        models = self._endpoints.get(connection)
        endpoint = models.get(model) if models is not None else None
        if (link is None or link.state == CLOSED) and (
                endpoint is None or (endpoint.state == CLOSED and not endpoint.cool_until)):
            return True
        now = self._clock()
        cooldown = self.policy.cooldown
        if link is not None and link.state == OPEN and now - link.opened_at < cooldown:
            return False
        if endpoint is None:
            return True
        if endpoint.state == OPEN and now - endpoint.opened_at < cooldown:
            return False
        if endpoint.cool_until:
            if now < endpoint.cool_until:
                return False
            endpoint.cool_until = 0.0  # the spell is over
        return True

    def ejected(self, connection: str, model: str) -> bool:
        """True while the endpoint's or its connection's breaker is open and still cooling (a cool endpoint is not
        ejected)."""
        now = self._clock()
        cooldown = self.policy.cooldown
        link = self._connections.get(connection)
        if link is not None and link.state == OPEN and now - link.opened_at < cooldown:
            return True
        endpoint = self._find(connection, model)
        return endpoint is not None and endpoint.state == OPEN and now - endpoint.opened_at < cooldown

    def acquire(self, connection: str, model: str, *, force: bool = False) -> bool:
        """Call right before an attempt: True when it may go. A breaker (the endpoint's or the connection's) that is open
        past its cool-down turns half-open and lets exactly this one attempt through as its probe; both must let it
        through. ``force`` (panic routing: every candidate was refused) lets it through regardless: it still takes
        the probe of a breaker that would have let it through, but a breaker still cooling stays open, so the forced
        attempt's verdict, like a straggler's, neither extends nor cuts its cool-down."""
        link = self._connections.get(connection)
        if link is not None and link.state == CLOSED:
            link = None
        models = self._endpoints.get(connection)
        endpoint = models.get(model) if models is not None else None
        if endpoint is not None and endpoint.state == CLOSED:
            endpoint = None
        if link is None and endpoint is None:
            return True
        now = self._clock()
        link_probes = link is not None and not self._refuses(link, now)
        endpoint_probes = endpoint is not None and not self._refuses(endpoint, now)
        if not force and ((link is not None and not link_probes) or (endpoint is not None and not endpoint_probes)):
            return False
        if link is not None and link_probes:
            link.state = HALF_OPEN
            link.probe_started = now
        if endpoint is not None and endpoint_probes:
            endpoint.state = HALF_OPEN
            endpoint.probe_started = now
        return True

    def ejected_since(self, connection: str, model: str) -> float:
        """Since when ``acquire`` has been refusing this endpoint (the later of its and its connection's breaker
        opening or probe going out), for panic routing's order: the smallest was ejected longest ago. -inf when
        neither breaker is refusing."""
        since = -math.inf
        for breaker in (self._connections.get(connection), self._find(connection, model)):
            if breaker is not None and breaker.state != CLOSED:
                moment = breaker.opened_at if breaker.state == OPEN else (breaker.probe_started or breaker.opened_at)
                since = max(since, moment)
        return since

    def record_success(self, connection: str, model: str, *, ttft: float | None, output_tokens: int,
                       duration: float) -> None:
        """An attempt succeeded. ``ttft``: seconds from sending to the first token (None when unknown, e.g. not
        streamed); ``duration``: seconds from sending to the last byte; ``output_tokens``: completion tokens."""
        now = self._clock()
        self._connection_answered(connection)
        endpoint = self._endpoint(connection, model)
        self._close(endpoint)
        endpoint.cool_until = 0.0
        endpoint.minutes.add(now, True)
        endpoint.quarters.add(now, True)
        if ttft is not None and ttft >= 0:
            endpoint.ttft.add(now, ttft)
        # Throughput is the generation rate: time to first token is latency, not generation.
        generating = duration - ttft if ttft is not None and duration > ttft else duration
        if output_tokens > 0 and generating > 0:
            endpoint.tps.add(now, output_tokens / generating)

    def record_failure(self, connection: str, model: str, *, status: int | None,
                       connection_fault: bool | None = None, retry_after: str | None = None) -> None:
        """An attempt failed with this upstream status (None: no response at all). ``connection_fault``: see
        ``fault_scope``; ``retry_after``: the 429's Retry-After header, which makes the endpoint cool that long."""
        scope = fault_scope(status, connection_fault)
        if scope == NONE:
            # The upstream answered, so it is up; the request was at fault.
            self._connection_answered(connection)
            endpoint = self._find(connection, model)
            if endpoint is not None:
                self._close(endpoint)
            return
        now = self._clock()
        endpoint = self._endpoint(connection, model)
        if scope == CAPACITY:
            self._connection_answered(connection)
            self._no_verdict(endpoint)
            wait = parse_retry_after(retry_after)
            if wait:
                endpoint.cool_until = max(endpoint.cool_until, now + wait)
            return
        endpoint.minutes.add(now, False)
        endpoint.quarters.add(now, False)
        if scope == CONNECTION:
            link = self._connections.get(connection)
            if link is None:
                link = self._connections[connection] = _Breaker(f"connection {connection}")
            self._count(link, now)
            self._no_verdict(endpoint)  # says nothing about this model
        else:
            self._connection_answered(connection)
            self._count(endpoint, now)

    def record_cancelled(self, connection: str, model: str) -> None:
        """The client went away mid-attempt (or the attempt never went): counts nothing, but frees half-open probe
        slots."""
        link = self._connections.get(connection)
        if link is not None:
            self._no_verdict(link)
        endpoint = self._find(connection, model)
        if endpoint is not None:
            self._no_verdict(endpoint)

    def _refuses(self, breaker: _Breaker, now: float) -> bool:
        """Whether a breaker that is not closed refuses an ordinary attempt now."""
        if breaker.state == OPEN:
            return now - breaker.opened_at < self.policy.cooldown
        # Half-open: one probe at a time, unless the last one was lost.
        return breaker.probe_started is not None and now - breaker.probe_started < self.policy.probe_timeout

    def _count(self, breaker: _Breaker, now: float) -> None:
        if breaker.state == HALF_OPEN:
            self._open(breaker, now)
        elif breaker.state == CLOSED:
            breaker.failures += 1
            if breaker.failures >= self.policy.failure_threshold:
                self._open(breaker, now)
        # Open: a straggler that started before the breaker opened; it must not extend the cool-down.

    def _open(self, breaker: _Breaker, now: float) -> None:
        if breaker.state == HALF_OPEN:
            log.warning("circuit breaker of %s opened again: its probe failed; next probe in %g s", breaker.name,
                        self.policy.cooldown)
        else:
            log.warning("circuit breaker of %s opened after %d consecutive failures: ejected for %g s", breaker.name,
                        breaker.failures, self.policy.cooldown)
        breaker.state = OPEN
        breaker.opened_at = now
        breaker.failures = 0
        breaker.probe_started = None

    def _close(self, breaker: _Breaker) -> None:
        if breaker.state == HALF_OPEN:
            log.warning("circuit breaker of %s closed: its probe succeeded", breaker.name)
            breaker.state = CLOSED
            breaker.probe_started = None
        if breaker.state == CLOSED:
            breaker.failures = 0
        # Open: a straggler's success does not cut the cool-down short; the probe decides.

    def _no_verdict(self, breaker: _Breaker) -> None:
        if breaker.state == HALF_OPEN:
            breaker.probe_started = None

    def _connection_answered(self, connection: str) -> None:
        """An HTTP answer other than 401/402/403 came back: the connection itself works."""
        link = self._connections.get(connection)
        if link is not None:
            self._close(link)

    # -- figures ---------------------------------------------------------------------------------------------------

    def _find(self, connection: str, model: str) -> _Endpoint | None:
        models = self._endpoints.get(connection)
        return models.get(model) if models is not None else None

    def _endpoint(self, connection: str, model: str) -> _Endpoint:
        models = self._endpoints.get(connection)
        if models is None:
            models = self._endpoints[connection] = {}
        endpoint = models.get(model)
        if endpoint is None:
            if len(models) >= MAX_ENDPOINTS_PER_CONNECTION:
                idle = next((name for name, known in models.items()
                             if known.state == CLOSED and not known.cool_until), None)
                if idle is not None:
                    del models[idle]
            endpoint = models[model] = _Endpoint(self.window, self._max_samples,
                                                 f"endpoint {connection} model {model}")
        return endpoint

    def latency(self, connection: str, model: str) -> float | None:
        """Median time to first token in seconds over the window, or None without samples (for routing)."""
        endpoint = self._find(connection, model)
        values = endpoint.ttft.sorted_values(self._clock()) if endpoint else []
        return percentile(values, 0.5) if values else None

    def throughput(self, connection: str, model: str) -> float | None:
        """Median generation rate in tokens/s over the window, or None without samples (for routing)."""
        endpoint = self._find(connection, model)
        values = endpoint.tps.sorted_values(self._clock()) if endpoint else []
        return percentile(values, 0.5) if values else None

    def status(self, connection: str, model: str) -> int:
        """OpenRouter-style endpoint status, from the endpoint's breaker and its connection's: 0 healthy, -5 probing,
        -10 ejected (the worse of the two)."""
        status = STATUS_OK
        for breaker in (self._connections.get(connection), self._find(connection, model)):
            if breaker is None or breaker.state == CLOSED:
                continue
            if breaker.state == OPEN and self._clock() - breaker.opened_at < self.policy.cooldown:
                return STATUS_EJECTED
            status = STATUS_PROBING
        return status

    def endpoint_figures(self, connection: str, model: str, *, max_samples: int | None = None) -> dict:
        """The raw figures of one endpoint, to be added up with other processes' (``stats_from``): its status,
        success/failure counts over 5 minutes, the window and a day, and its latency and throughput samples (the
        most recent ``max_samples`` of them)."""
        now = self._clock()
        stats = self._find(connection, model)
        figures: dict = {"status": self.status(connection, model)}
        if stats is None:
            return figures
        figures["counts"] = [stats.minutes.counts(now, 300.0), stats.minutes.counts(now, self.window),
                             stats.quarters.counts(now, 86400.0)]
        for name, samples in (("ttft", stats.ttft), ("tps", stats.tps)):
            stats_values = samples.recent_values(now, max_samples)
            if stats_values:
                figures[name] = stats_values
        return figures

    def export(self, *, max_samples: int = 256) -> list[dict]:
        """Every endpoint's figures (``endpoint_figures``), for other processes to add to theirs."""
        return [{"connection": connection, "model": model,
                 **self.endpoint_figures(connection, model, max_samples=max_samples)}
                for connection, models in self._endpoints.items() for model in models]

    def endpoint_stats(self, connection: str, model: str, others: Sequence[dict] = ()) -> dict:
        """The live fields of one entry of ``GET /api/v1/models/{author}/{slug}/endpoints``: this process's figures,
        added up with `others` (other processes' ``endpoint_figures`` of the same endpoint) when given."""
        return stats_from([self.endpoint_figures(connection, model), *others])


def stats_from(figures: list[dict]) -> dict:
    """Endpoint stats from the figures of one or more processes: uptime from the summed counts, percentiles over all
    the samples, and the worst status (an endpoint ejected anywhere shows as ejected)."""
    result: dict = {"status": min(f["status"] for f in figures), "uptime_last_5m": None, "uptime_last_30m": None,
                    "uptime_last_1d": None, "latency_last_30m": None, "throughput_last_30m": None}
    for index, name in enumerate(("uptime_last_5m", "uptime_last_30m", "uptime_last_1d")):
        ok = sum(f["counts"][index][0] for f in figures if "counts" in f)
        total = ok + sum(f["counts"][index][1] for f in figures if "counts" in f)
        if total:
            result[name] = round(100.0 * ok / total, 2)
    ttft = sorted(value for f in figures for value in f.get("ttft", ()))
    if ttft:
        result["latency_last_30m"] = {f"p{p}": round(percentile(ttft, p / 100) * 1000.0, 2) for p in _PERCENTILES}
    tps = sorted(value for f in figures for value in f.get("tps", ()))
    if tps:
        # Lower tail: pXX is the rate XX% of requests reached, so p99 is the slowest.
        result["throughput_last_30m"] = {f"p{p}": round(percentile(tps, 1 - p / 100), 2) for p in _PERCENTILES}
    return result
