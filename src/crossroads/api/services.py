"""What a gateway process holds for as long as it runs, how it is started and stopped, and what reads across it.

`make_services` builds what needs neither the event loop nor the database (the registry of connections and models,
routes, breakers, the rate limiter, the credit ledger of this process); `start_services` (the ASGI lifespan's
start-up) opens the store and starts what runs beside the requests (key cache, record writer, fleet health, shared
credit ledger), and `stop_services` stops them in the reverse order of need. The ASGI application (api/app.py) holds
one `Services`, and the endpoint modules reach it as `gateway.services`.

Settlement lives here too (`Services.finish`): the request's credit (gate/admission.py's part) and its generation
record (the recorder's), at the end of each request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossroads.accounting.recorder import GenerationRecorder, NotCommitted
from crossroads.accounting.spool import Spool, merge_spend
from crossroads.api.models import ModelViews
from crossroads.errors import GatewayError
from crossroads.gate.admission import LimitTables, settle_credit, workspace_name
from crossroads.gate.credits import CreditLedger, Spend, period_starts, shared_credit_store
from crossroads.gate.directory import accounts_of
from crossroads.gate.keys import KeyCache, multiprocess_policy_problem
from crossroads.gate.pg_credits import PostgresCreditLedger
from crossroads.gate.ratelimit import RateLimiter, make_limiter
from crossroads.gate.shared_credits import FleetCredits, RedisCreditLedger
from crossroads.instances import INSTANCE_ID_VARIABLE, LIVE_AFTER, InstanceHeartbeat, start_heartbeat
from crossroads.routing.fleet_health import FleetHealth
from crossroads.routing.health import BreakerPolicy, HealthBoard
from crossroads.routing.registry import Registry, build_registry, discover_models
from crossroads.routing.routes import RouteTable
from crossroads.store import Store, database_url
from crossroads.store.rows import RECORD_COST, KeyRow

if TYPE_CHECKING:
    from crossroads.accounting.exchange import Exchange
    from crossroads.config import Config
    from crossroads.net.fetch import MediaFetcher

log = logging.getLogger("crossroads")
DISCOVERY_HEAD_START = 1.0  # seconds start-up waits for upstream model discovery before answering /health
STORE_UNAVAILABLE_CODE = "accounting_store_unavailable"  # error.metadata.code of strict durability's 503
FLEET_ID = "fleet_id"  # meta: names this database's fleet in Redis
UNRECORDABLE = ("Generation records cannot be written right now (the accounting database is unavailable), and strict "
                "durability refuses requests it cannot record; retry shortly")


@dataclass(slots=True, eq=False)
class Services:
    config: Config
    registry: Registry
    route_table: RouteTable
    health: HealthBoard
    limiter: RateLimiter
    limits: LimitTables  # the configured rate limits of routes and connections
    ledger: CreditLedger  # this process's credit ledger (with a shared one, its share of every figure)
    credit_store: str | None  # where credit limits are held for every process: "redis", "postgresql" or None
    workers: int  # worker processes of this instance
    redis_url: str | None
    fleet: bool  # whether other processes spend too (this one's memory then knows only its own share)
    route_owner: dict[str, str]  # route -> the workspace it belongs to (config `workspace:`)
    scoped_resources: bool  # whether any connection or route belongs to one workspace
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # a retry's backoff (the breakers' clock: `health`)
    views: ModelViews | None = None
    # Set by start_services (they need the event loop and the database).
    store: Store = None  # type: ignore[assignment]
    keys: KeyCache = None  # type: ignore[assignment]
    recorder: GenerationRecorder = None  # type: ignore[assignment]
    fleet_credits: FleetCredits | None = None
    fleet_health: FleetHealth | None = None  # with Redis
    heartbeat: InstanceHeartbeat | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)
    _media: MediaFetcher | None = None

    # -- settlement (the request path) -----------------------------------------------------------------------------
    def finish(self, exchange: Exchange) -> Awaitable[None] | None:
        """Settle the request's credit reservation with its real cost and hand its record to the writer; returns what
        to await when the writer makes the caller wait (see GenerationRecorder.record), else None.

        Called just before the response completes (so that with strict durability the record is committed before the
        client has its answer; if it cannot be, the awaitable raises a 503 GatewayError) and again, as a no-op, when
        the request ends whatever the way."""
        if exchange.finished:
            return None
        exchange.finished = True
        record = exchange.to_record()
        settle_credit(self.ledger, self.fleet_credits, exchange.reservation, exchange.chain, record[RECORD_COST])
        waiting = self.recorder.record(record)
        if waiting is None or not self.recorder.strict:
            return waiting
        return self._committed(exchange, waiting)

    async def _committed(self, exchange: Exchange, waiting: Awaitable[None]) -> None:
        """Strict durability: wait (boundedly) for the record's commit. A record that could not be committed stays
        held (written or spooled later, never lost); a request about to be answered 200 is answered 503 instead (a
        stream ends with its format's error), and its record says so."""
        try:
            await waiting
        except NotCommitted:
            if exchange.status != 200:
                return  # the client is getting an error (or is gone) anyway
            self.recorder.amend(exchange.generation_id, status=503, error=UNRECORDABLE)
            raise GatewayError(503, UNRECORDABLE, metadata={"code": STORE_UNAVAILABLE_CODE},
                               headers={"Retry-After": "1"}) from None

    def check_recordable(self) -> None:
        """Strict durability refuses a request before it goes upstream while the recorder knows its record cannot be
        written (the store's last write failed and none succeeded since): one attribute read per request."""
        if self.recorder.refusing:
            raise GatewayError(503, UNRECORDABLE, metadata={"code": STORE_UNAVAILABLE_CODE},
                               headers={"Retry-After": "1"})

    def is_known_model(self, model_id: str) -> bool:
        """Whether `model_id` is served or a route as it is (a suffix in it is then part of the id)."""
        return model_id in self.registry.models or self.route_table.get(model_id) is not None

    def workspace_name(self, workspace_id: str | None) -> str | None:
        return workspace_name(self.keys.directory, workspace_id)

    @property
    def media(self) -> MediaFetcher:
        """Fetches media URLs for upstreams that need bytes; made on first use (most gateways never need it)."""
        if self._media is None:
            from crossroads.net.fetch import MediaFetcher

            media = self.config.server.media
            self._media = MediaFetcher(allow=media.allow, max_bytes=media.max_bytes, timeout=media.timeout)
        return self._media

    # -- spend figures (the management API and the dashboard) --------------------------------------------------------
    async def key_figures(self, keys: list[KeyRow]) -> dict[str, Spend]:
        """Each key's spend per period and open reservations, as the whole fleet knows them (`account_figures`)."""
        return await self.account_figures([key.hash for key in keys])

    async def account_figures(self, accounts: list[str]) -> dict[str, Spend]:
        """Each ledger account's spend per period and open reservations (a key, "env:", "mem:", "ws:"; see
        gate/directory.py), as the whole fleet knows them: this process's memory when it is the only one; otherwise
        the shared ledger for accounts with a limit (exact, reservations included) and the generation records for
        the others (as of their last write, at most a flush interval behind)."""
        if not self.fleet:
            return {name: self.ledger.figures(name) for name in accounts}
        figures: dict[str, Spend] = {}
        limited_now = set(self.limited_accounts()) if self.fleet_credits is not None else set()
        limited = [name for name in accounts if name in limited_now]
        if limited:
            try:
                figures.update(await self.fleet_credits.figures(limited))  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - Redis down: the records' figures are the next best
                log.warning("credit ledger (%s) unavailable, spend read from the generation records: %s",
                            self.fleet_credits.ledger.name, type(exc).__name__)  # type: ignore[union-attr]
        rest = [name for name in accounts if name not in figures]
        for name, spend in (await self.database_spend(rest) if rest else {}).items():
            if name is not None:
                figures[name] = Spend(total=spend["total"], daily=spend["daily"], weekly=spend["weekly"],
                                      monthly=spend["monthly"])
        for name in accounts:
            figures.setdefault(name, Spend())
        return figures

    async def total_figures(self) -> Spend:
        """The whole account's spend per period (every key and the master key)."""
        if not self.fleet:
            return self.ledger.sum_figures()
        total = Spend()
        for spend in (await self.store.key_spend(period_starts(datetime.now(UTC)))).values():
            total.total += spend["total"]
            total.daily += spend["daily"]
            total.weekly += spend["weekly"]
            total.monthly += spend["monthly"]
        return total

    async def database_spend(self, accounts: list[str]) -> dict[str | None, dict[str, float]]:
        """The generation records' figures of these ledger accounts."""
        starts = period_starts(datetime.now(UTC))
        if all(":" not in account for account in accounts):  # keys only: one indexed query
            return await self.store.key_spend(starts, accounts)
        wanted = set(accounts)
        return {account: figures for account, figures in
                fold_accounts(dict(await self.store.place_spend(starts))).items() if account in wanted}

    def limited_accounts(self) -> list[str]:
        return self.keys.directory.limited_accounts(list(self.keys.keys.values()))

    async def check_limit_allowed(self, changes: dict[str, Any]) -> None:
        """400 for a key limit that the processes serving this database could not hold together."""
        if not (changes.get("limit") is not None or changes.get("rpm") or changes.get("tpm")):
            return
        processes = self.workers
        if self.redis_url is None:
            # Other instances on this database count too (crossroads/instances.py registers every one).
            others = [row for row in await self.store.live_instances(LIVE_AFTER)
                      if row.id != os.environ.get(INSTANCE_ID_VARIABLE)]
            processes += sum(row.workers for row in others)
        problem = multiprocess_policy_problem(changes, workers=processes, shared_counters=self.redis_url is not None,
                                              shared_credits=self.credit_store is not None)
        if problem is not None:
            raise GatewayError(400, problem)


def make_services(config: Config, *, now: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Services:
    """What a process holds from its configuration alone (no event loop, no database yet). `now` (monotonic seconds)
    is the breakers' clock and `sleep` waits out retry backoffs: tests give fake ones (routing/retry.py Clock)."""
    registry = build_registry(config)
    workers = int(os.environ.get("CROSSROADS_WORKERS") or 1)
    redis_url = os.environ.get("CROSSROADS_REDIS_URL") or None
    # Credit limits: in Redis when it is configured, else in PostgreSQL when that is the database (either way exact
    # across every process of every instance; the ledger is made at start-up), else in this process's memory,
    # which holds them only while it is the only process: with several workers, a key with a limit is refused
    # rather than served beyond it.
    credit_store = shared_credit_store(redis_url, database_url(config.server))
    ledger = CreditLedger(refuse_limits=None if workers == 1 or credit_store else (
        f"the gateway runs {workers} worker processes and each would count alone; its operator must set "
        "CROSSROADS_REDIS_URL (a Redis shared by every process), run one worker, or remove the limit"))
    # Connections and routes that belong to one workspace (config `workspace:`): only its keys see them.
    route_owner = {r.name: r.workspace for r in config.routes if r.workspace}
    breaker = config.routing.breaker
    return Services(
        config=config, registry=registry, route_table=RouteTable.from_config(config),
        health=HealthBoard(BreakerPolicy(failure_threshold=breaker.failure_threshold, cooldown=breaker.cooldown,
                                         probe_timeout=breaker.probe_timeout), clock=now),
        limiter=make_limiter(redis_url, priority_shares=config.routing.priority_shares), limits=LimitTables(config),
        ledger=ledger, credit_store=credit_store, workers=workers, redis_url=redis_url,
        fleet=credit_store is not None or workers > 1, route_owner=route_owner,
        scoped_resources=bool(route_owner) or any(c.workspace for c in config.providers), sleep=sleep)


async def start_services(services: Services) -> None:
    """Open the store and start what runs beside the requests, in order of need: the store, this instance's heartbeat,
    the keys, the credit ledger's spend so far, the record writer, then (with Redis or PostgreSQL) fleet health and
    the shared credit ledger."""
    config = services.config
    services.views = ModelViews(services.registry, services.route_table, services.health)
    store = services.store = await Store.open(database_url(config.server))
    # This instance's registration (cli.prepare_store) stays live while any of its workers beats.
    services.heartbeat = start_heartbeat(store)
    keys = services.keys = KeyCache(store)
    await keys.load()
    keys.start()
    warn_unknown_owners(config, keys, services.route_owner)
    starts = period_starts(datetime.now(UTC))
    # Records spooled by an earlier run (written to the database by the recorder from now on) are spend too. The
    # spool is read before the database, so a file another process replays in between is counted twice (a
    # stricter limit), never missed.
    spool = Spool(Path(config.server.data_dir) / "spool")
    spooled = await asyncio.to_thread(spool.spend, starts)
    services.ledger.load(fold_accounts(merge_spend(dict(await store.place_spend(starts)), spooled)), starts)
    accounting = config.accounting
    services.recorder = GenerationRecorder(store, flush_interval=accounting.flush_interval,
                                           max_pending=accounting.max_pending,
                                           strict=accounting.durability == "strict", spool=spool)
    services.recorder.start()
    redis_url = services.redis_url
    if redis_url:
        # Everything this fleet keeps in Redis is named after the database it shares (two fleets may share one
        # Redis); the id is drawn by the first instance that starts on the database.
        fleet_id = await store.claim_meta(FLEET_ID, secrets.randbits(48))
        services.fleet_health = FleetHealth(redis_url, services.health, prefix=f"crossroads:health:{fleet_id:x}")
        services.fleet_health.start()
    if services.credit_store is not None:
        if services.credit_store == "redis":
            assert redis_url is not None  # the store is "redis" only when Redis is configured
            ledger: Any = RedisCreditLedger(redis_url, lease=accounting.reservation_lease)
            ledger.marker = f"{ledger.prefix}:reconciled:{fleet_id:x}"
        else:
            ledger = PostgresCreditLedger(store, lease=accounting.reservation_lease)
        fleet_credits = services.fleet_credits = FleetCredits(
            ledger, database_spend=services.database_spend, limited=services.limited_accounts,
            reconcile_interval=accounting.reconcile_interval)
        try:
            await fleet_credits.reconcile()
        except Exception as exc:  # noqa: BLE001 - retried before the first reservation and on every tick
            log.warning("could not reconcile the credit ledger (%s) with the generation records at start-up: "
                        "%s: %s; keys with a credit limit are refused until it can be", ledger.name,
                        type(exc).__name__, exc)
        fleet_credits.start()


async def start_discovery(services: Services) -> None:
    """Ask the upstreams which models they serve. Readiness must not wait on a slow upstream: discovery gets a short
    head start, then finishes in the background (ad-hoc "<connection>/<model>" addressing works either way)."""
    discovery = asyncio.get_running_loop().create_task(_discover(services))
    await asyncio.wait((discovery,), timeout=DISCOVERY_HEAD_START)
    services.background.add(discovery)
    discovery.add_done_callback(services.background.discard)


async def _discover(services: Services) -> None:
    await discover_models(services.registry, services.config)
    services.views = ModelViews(services.registry, services.route_table, services.health)
    warn_unpriced(services.registry)


async def stop_services(services: Services) -> None:
    """Stop what start_services started, the record writer within server.shutdown_grace; then close the store and
    every pooled connection (upstreams, rate-limit store, media fetcher)."""
    for task in list(services.background):
        task.cancel()
    if services.fleet_credits is not None:
        await services.fleet_credits.stop()
    if services.fleet_health is not None:
        await services.fleet_health.stop()
    if services.recorder is not None:
        await services.recorder.stop(services.config.server.shutdown_grace)
    if services.keys is not None:
        await services.keys.stop()
    if services.heartbeat is not None:
        await services.heartbeat.stop()
    if services.store is not None:
        await services.store.close()
    await services.registry.close()
    await services.limiter.close()
    if services._media is not None:
        await services._media.close()


def warn_unknown_owners(config: Config, keys: KeyCache, route_owner: dict[str, str]) -> None:
    """A connection or route owned by a workspace that does not exist (yet) serves no key: say so once."""
    names = {w.name for w in keys.directory.workspaces.values()}
    owned = [("connection", c.name, c.workspace) for c in config.providers if c.workspace] + \
        [("route", name, owner) for name, owner in route_owner.items()]
    for kind, name, owner in owned:
        if owner not in names:
            log.warning("%s %s belongs to workspace %r, which does not exist: only the master key can use it "
                        "until a workspace of that name is created", kind, name, owner)


def warn_unpriced(registry: Registry) -> None:
    """One warning per connection that serves models without a price: keys with a credit limit are refused on them,
    and everyone else's use of them is recorded at $0."""
    by_connection: dict[str, list[str]] = {}
    for deployments in registry.models.values():
        for dep in deployments:
            if not dep.model.priced:
                by_connection.setdefault(dep.connection.name, []).append(dep.model.id)
    for name, ids in by_connection.items():
        shown = ", ".join(sorted(ids)[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        log.warning("connection %s serves %d model(s) without a price (%s): their use is recorded at $0 and keys "
                    "with a credit limit are refused on them; set providers[].models[].pricing, or pricing: free "
                    "to declare a model free on purpose", name, len(ids), shown)


def fold_accounts(by_place: dict[Any, dict[str, float]]) -> dict[str | None, dict[str, float]]:
    """Figures per place (key_hash, workspace_id, environment_id, user_id) added up per ledger account."""
    out: dict[str | None, dict[str, float]] = {}
    for place, figures in by_place.items():
        for name in accounts_of(*place):
            into = out.get(name)
            if into is None:
                out[name] = dict(figures)
            else:
                for period, value in figures.items():
                    into[period] = into.get(period, 0.0) + value
    return out
