"""The gateway's ASGI application: routing, authentication, error rendering, lifespan."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast
from urllib.parse import unquote

from crossroads.accounting.exchange import Exchange
from crossroads.accounting.recorder import GenerationRecorder, NotCommitted
from crossroads.accounting.spool import Spool, merge_spend
from crossroads.api import account, openapi, stored, workspaces
from crossroads.api.asgi import (
    ClientGone,
    OpenStreams,
    Receive,
    Request,
    Scope,
    Send,
    respond,
    respond_error,
    respond_json,
)
from crossroads.api.inference import serve
from crossroads.api.models import ModelViews, model_query
from crossroads.api.protocol import CUT_OFF
from crossroads.config import Config, ensure_master_key, load_config
from crossroads.dashboard.app import Dashboard
from crossroads.errors import GatewayError
from crossroads.formats.chat import ChatFront
from crossroads.formats.embeddings import EmbeddingsFront
from crossroads.formats.fronts import CompletionsFront, MessagesFront, ResponsesFront
from crossroads.gate.auth import Authenticator, Principal
from crossroads.gate.credits import (
    Budget,
    CreditLedger,
    Reservation,
    Spend,
    period_starts,
    shared_credit_store,
)
from crossroads.gate.directory import accounts_of
from crossroads.gate.keys import KeyCache, multiprocess_policy_problem
from crossroads.gate.pg_credits import PostgresCreditLedger
from crossroads.gate.ratelimit import Limit, make_limiter
from crossroads.gate.shared_credits import FleetCredits, RedisCreditLedger, SharedReservation
from crossroads.instances import INSTANCE_ID_VARIABLE, LIVE_AFTER, InstanceHeartbeat, start_heartbeat
from crossroads.observability.hub import Observability
from crossroads.observability.logs import REQUEST_ID
from crossroads.observability.record import RequestInfo, presented_key_label, request_id_from
from crossroads.routing.fleet_health import FleetHealth
from crossroads.routing.health import BreakerPolicy, HealthBoard
from crossroads.routing.registry import Registry, build_registry, discover_models
from crossroads.routing.retry import REAL_CLOCK, Clock
from crossroads.routing.routes import RouteTable
from crossroads.routing.select import RoutePlan, plan
from crossroads.store import Store, database_url
from crossroads.store.rows import RECORD_COST, KeyRow
from crossroads.store.signins import SignInStore

log = logging.getLogger("crossroads")
# Bytes a second a request body must average once it has had server.body_timeout (Apache's mod_reqtimeout default).
BODY_MIN_RATE = 500

Handler = Callable[[Request], Awaitable[None]]


class Endpoint(NamedTuple):
    handler: Handler
    auth: bool  # needs an API key
    error_body: Callable[[GatewayError], bytes]  # the endpoint's error shape
    template: str = ""  # the path as routed, parameters named ("/api/v1/keys/{hash}"): a bounded metrics label


API_PREFIXES = ("/api/v1", "/v1")
GC_GEN0_THRESHOLD = 20_000
WATCH_AFTER = 0.25  # seconds a handler runs before its client's disconnect is watched for (see __call__)
DISCOVERY_HEAD_START = 1.0  # seconds start-up waits for upstream model discovery before answering /health
READY_CHECK_TIMEOUT = 2.0  # seconds each readiness check may take
STORE_UNAVAILABLE_CODE = "accounting_store_unavailable"  # error.metadata.code of strict durability's 503
FLEET_ID = "fleet_id"  # meta: names this database's fleet in Redis
UNRECORDABLE = ("Generation records cannot be written right now (the accounting database is unavailable), and strict "
                "durability refuses requests it cannot record; retry shortly")


class Gateway:
    def __init__(self, config: Config, *, clock: Clock = REAL_CLOCK) -> None:
        self.config = config
        self.clock = clock  # what the breakers read and the retry backoff waits on (tests give a fake one)
        master_key, _ = ensure_master_key(config)
        self.auth = Authenticator(master_key)
        self.registry: Registry = build_registry(config)
        self.views: ModelViews | None = None
        self._media: Any = None
        self.ready = False
        self._background: set[asyncio.Task[None]] = set()
        self.workers = int(os.environ.get("CROSSROADS_WORKERS") or 1)
        self.redis_url = os.environ.get("CROSSROADS_REDIS_URL") or None
        # Credit limits: in Redis when it is configured, else in PostgreSQL when that is the database (either way exact
        # across every process of every instance; the ledger is made at start-up), else in this process's memory,
        # which holds them only while it is the only process: with several workers, a key with a limit is refused
        # rather than served beyond it.
        self.credit_store = shared_credit_store(self.redis_url, database_url(config.server))
        self.fleet_credits: FleetCredits | None = None
        self.ledger = CreditLedger(refuse_limits=None if self.workers == 1 or self.credit_store else (
            f"the gateway runs {self.workers} worker processes and each would count alone; its operator must set "
            "CROSSROADS_REDIS_URL (a Redis shared by every process), run one worker, or remove the limit"))
        # Whether other processes spend too (this one's memory then knows only its own share of each key's spend).
        self.fleet = self.credit_store is not None or self.workers > 1
        self.route_table = RouteTable.from_config(config)
        # Connections and routes that belong to one workspace (config `workspace:`): only its keys see them.
        self._route_owner = {r.name: r.workspace for r in config.routes if r.workspace}
        self.scoped_resources = bool(self._route_owner) or any(c.workspace for c in config.providers)
        breaker = config.routing.breaker
        self.health = HealthBoard(BreakerPolicy(failure_threshold=breaker.failure_threshold,
                                                cooldown=breaker.cooldown, probe_timeout=breaker.probe_timeout),
                                  clock=clock.now)
        self.fleet_health: FleetHealth | None = None  # with Redis, set at start-up
        self._instance_heartbeat: InstanceHeartbeat | None = None
        self.limiter = make_limiter(self.redis_url, priority_shares=config.routing.priority_shares)
        self._connection_limits = {
            c.name: [Limit(f"conn:{c.name}", rpm=c.rpm, tpm=c.tpm, priority_shares=True)]
            for c in config.providers if c.rpm or c.tpm}
        self._route_limits = {r.name: Limit(f"route:{r.name}", rpm=r.rpm, tpm=r.tpm)
                              for r in config.routes if r.rpm or r.tpm}
        # Set at start-up (they need the event loop and the database).
        self.store: Store = None  # type: ignore[assignment]
        self.keys: KeyCache = None  # type: ignore[assignment]
        self.recorder: GenerationRecorder = None  # type: ignore[assignment]
        self.chat_front = ChatFront()
        self.messages_front = MessagesFront()
        self.responses_front = ResponsesFront()
        openai_error = GatewayError.body
        anthropic_error = self.messages_front.error_body  # the Anthropic SDK reads its own error shape
        self.routes: dict[tuple[str, str], Endpoint] = {}
        # Parameterised routes: (path base, parameter name, method -> endpoint), e.g. /api/v1/keys/{hash}.
        self.param_routes: list[tuple[str, str, dict[str, Endpoint]]] = []
        for prefix in API_PREFIXES:
            for method, path, handler, error_body in (
                ("POST", "/chat/completions", serve(self, self.chat_front), openai_error),
                ("POST", "/messages", serve(self, self.messages_front), anthropic_error),
                ("POST", "/messages/count_tokens", self._bind(stored.count_tokens), anthropic_error),
                ("POST", "/responses", serve(self, self.responses_front), self.responses_front.error_body),
                ("POST", "/completions", serve(self, CompletionsFront()), openai_error),
                ("POST", "/embeddings", serve(self, EmbeddingsFront()), openai_error),
                ("GET", "/models", self._models, openai_error),
                ("GET", "/models/count", self._models_count, openai_error),
                ("GET", "/providers", self._providers, openai_error),
                ("GET", "/key", self._bind(account.current_key), openai_error),
                ("GET", "/auth/key", self._bind(account.current_key), openai_error),
                ("GET", "/keys", self._bind(account.list_keys), openai_error),
                ("POST", "/keys", self._bind(account.create_key), openai_error),
                ("GET", "/credits", self._bind(account.credits), openai_error),
                ("GET", "/generation", self._bind(account.generation), openai_error),
                ("GET", "/activity", self._bind(account.activity), openai_error),
            ):
                self.routes[(method, prefix + path)] = Endpoint(handler, True, error_body)
            self.param_routes.append((prefix + "/responses/", "id", {
                method: Endpoint(self._bind(handler), True, self.responses_front.error_body)
                for method, handler in (("GET", stored.get_response), ("DELETE", stored.delete_response))}))
            self.param_routes.append((prefix + "/keys/", "hash", {
                method: Endpoint(self._bind(handler), True, openai_error)
                for method, handler in (("GET", account.get_key), ("PATCH", account.update_key),
                                        ("DELETE", account.delete_key))}))
        # Segment templates ("{name}" matches one path segment): workspaces' management API, and VM-X's workspace
        # paths for inference (the key must belong to the path's workspace and environment).
        self.template_routes: list[tuple[tuple[str, ...], dict[str, Endpoint]]] = []
        for template, handlers in (
            ("/api/v1/workspaces", {"GET": workspaces.list_workspaces, "POST": workspaces.create_workspace}),
            ("/api/v1/workspaces/{workspace}", {"GET": workspaces.get_workspace, "PATCH": workspaces.update_workspace,
                                                "DELETE": workspaces.delete_workspace}),
            ("/api/v1/workspaces/{workspace}/environments", {"GET": workspaces.list_environments,
                                                             "POST": workspaces.create_environment}),
            ("/api/v1/workspaces/{workspace}/environments/{environment}", {
                "PATCH": workspaces.update_environment, "DELETE": workspaces.delete_environment}),
            ("/api/v1/workspaces/{workspace}/members", {"GET": workspaces.list_members,
                                                        "POST": workspaces.create_member}),
            ("/api/v1/workspaces/{workspace}/members/{member}", {"PATCH": workspaces.update_member,
                                                                 "DELETE": workspaces.delete_member}),
            # OpenRouter's bulk member calls and per-interval budgets (its SDK's workspaces.* methods).
            ("/api/v1/workspaces/{workspace}/members/add", {"POST": workspaces.add_members}),
            ("/api/v1/workspaces/{workspace}/members/remove", {"POST": workspaces.remove_members}),
            ("/api/v1/workspaces/{workspace}/budgets", {"GET": workspaces.list_budgets}),
            ("/api/v1/workspaces/{workspace}/budgets/{interval}", {
                "GET": workspaces.get_budget, "PUT": workspaces.set_budget, "DELETE": workspaces.delete_budget}),
        ):
            self.template_routes.append((tuple(template.split("/")), {
                method: Endpoint(self._bind(workspaces.with_fresh_directory(handler)), True, openai_error, template)
                for method, handler in handlers.items()}))
        for suffix, handler, error_body in (
            ("chat/completions", serve(self, self.chat_front), openai_error),
            ("anthropic/messages", serve(self, self.messages_front), anthropic_error),
            # The Anthropic SDK appends /v1/messages to its base URL (.../{environment}/anthropic).
            ("anthropic/v1/messages", serve(self, self.messages_front), anthropic_error),
            ("responses", serve(self, self.responses_front), self.responses_front.error_body),
        ):
            template = f"/v1/completion/{{workspace}}/{{environment}}/{suffix}"
            self.template_routes.append((tuple(template.split("/")), {
                "POST": Endpoint(self._on_workspace_path(handler), True, error_body, template)}))
        self.routes[("GET", "/health")] = Endpoint(self._health, False, openai_error)
        metrics = config.server.metrics
        if metrics.enabled and metrics.metrics_port is None:  # else it is off, or served on its own port only
            self.routes[("GET", "/metrics")] = Endpoint(self._metrics, False, openai_error)
        self.routes[("GET", "/health/live")] = Endpoint(self._health_live, False, openai_error)
        self.routes[("GET", "/health/ready")] = Endpoint(self._health_ready, False, openai_error)
        for prefix in API_PREFIXES:  # OAuth PKCE's code exchange: the code is the credential, not an API key
            self.routes[("POST", prefix + "/auth/keys")] = Endpoint(self._bind(account.exchange_auth_code), False,
                                                                    openai_error)
        for prefix in API_PREFIXES:  # the OpenAPI document (api/openapi.py): public, as /health is
            self.routes[("GET", prefix + "/openapi.json")] = Endpoint(openapi.serve, False, openai_error)
        # The dashboard signs its users in itself (a session cookie, not an API key).
        self.dashboard = Dashboard(self)
        for method, path, handler in self.dashboard.routes():
            self.routes[(method, path)] = Endpoint(handler, False, openai_error)
        self._endpoints_route = Endpoint(self._endpoints, True, openai_error, "/models/{author}/{slug}/endpoints")
        self.routes = {(method, path): endpoint._replace(template=path)
                       for (method, path), endpoint in self.routes.items()}
        self.param_routes = [(base, name, {method: endpoint._replace(template=f"{base}{{{name}}}")
                                           for method, endpoint in endpoints.items()})
                             for base, name, endpoints in self.param_routes]
        # A wrong method on a known path still answers in that path's error shape.
        self.path_error_bodies = {path: endpoint.error_body for (_, path), endpoint in self.routes.items()}
        self.in_flight = 0  # requests being served by this process (a metrics gauge)
        self._known_revisions: list[str] | None = None  # schema revisions, newest first (readiness; looked up once)
        self.observability = Observability(self)

    @property
    def open_streams(self) -> int:
        """Streamed answers under way in this process."""
        return OpenStreams.count

    def _bind(self, endpoint: Callable[[Gateway, Request], Awaitable[None]]) -> Handler:
        # A plain function returning the endpoint's coroutine: no extra frame on the request's task.
        return functools.partial(endpoint, self)

    def _on_workspace_path(self, handler: Handler) -> Handler:
        """An inference handler on VM-X's path /v1/completion/{workspace}/{environment}/...: the key must belong to
        that workspace and environment (403 otherwise); the master key's requests are recorded there."""

        def scoped(request: Request) -> Awaitable[None]:
            directory = self.keys.directory
            ref, env_ref = request.path_params["workspace"], request.path_params["environment"]
            workspace = directory.workspace(ref)
            environment = directory.environment(workspace.id, env_ref) if workspace is not None else None
            key = request.principal.key
            if key is None:
                if workspace is None or environment is None:
                    raise GatewayError(404, f"Workspace {ref!r} or its environment {env_ref!r} not found")
                request.principal = Principal("master", None, workspace.id, environment.id)
            elif workspace is None or environment is None or key.workspace_id != workspace.id \
                    or key.environment_id != environment.id:
                # Not found and not yours look the same: a key learns nothing of other workspaces.
                raise GatewayError(403, f"This API key does not belong to workspace {ref!r}, environment "
                                        f"{env_ref!r}", metadata={"code": "workspace_mismatch"})
            return handler(request)

        return scoped

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

    # -- routing and capacity (used by api/inference.py) ---------------------------------------------------------
    def plan(self, body: dict[str, Any], headers: dict[bytes, bytes], key: Any, prompt_tokens: int) -> RoutePlan:
        return plan(self.registry, self.route_table, body, headers=headers, key=key, stats=self.health,
                    prompt_tokens=prompt_tokens)

    def is_known_model(self, model_id: str) -> bool:
        """Whether `model_id` is served or a route as it is (a suffix in it is then part of the id)."""
        return model_id in self.registry.models or self.route_table.get(model_id) is not None

    def request_limits(self, key: Any, route: str | None) -> list[Limit]:
        limits = []
        if key is not None and (key.rpm or key.tpm):
            limits.append(Limit(f"key:{key.hash}", rpm=key.rpm, tpm=key.tpm))
        if route is not None and route in self._route_limits:
            limits.append(self._route_limits[route])
        return limits

    def connection_limits(self, name: str) -> list[Limit]:
        return self._connection_limits.get(name, [])

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
        reservation = exchange.reservation
        if reservation is not None:
            if isinstance(reservation, SharedReservation):
                assert self.fleet_credits is not None  # a shared reservation comes from the fleet's ledger
                self.fleet_credits.settle_later(reservation, record[RECORD_COST])
                # This process's share of every level's figures (the shared ledger holds the limited ones).
                self.ledger.settle(Reservation(tuple(b.account for b in exchange.chain), 0.0), record[RECORD_COST])
            else:
                self.ledger.settle(reservation, record[RECORD_COST])
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

    async def reserve_credit(self, chain: tuple[Budget, ...], amount: float, *, prompt_cost: float,
                             completion_price: float) -> Reservation | SharedReservation:
        """Hold a request's worst-case cost against every budget of its chain (key, environment, member, workspace),
        all or none: 402 naming the level that does not fit. For a chain with a limit (`directory.chain_limited`):
        the shared ledger, when there is one, holds the levels that have one."""
        if self.fleet_credits is not None:
            return await self.fleet_credits.reserve(chain, amount, prompt_cost=prompt_cost,
                                                    completion_price=completion_price)
        return self.ledger.reserve(chain, amount, prompt_cost=prompt_cost, completion_price=completion_price)

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
        limited_now = set(self._limited_accounts()) if self.fleet_credits is not None else set()
        limited = [name for name in accounts if name in limited_now]
        if limited:
            try:
                figures.update(await self.fleet_credits.figures(limited))  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - Redis down: the records' figures are the next best
                log.warning("credit ledger (%s) unavailable, spend read from the generation records: %s",
                            self.fleet_credits.ledger.name, type(exc).__name__)  # type: ignore[union-attr]
        rest = [name for name in accounts if name not in figures]
        for name, spend in (await self._database_spend(rest) if rest else {}).items():
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

    async def _database_spend(self, accounts: list[str]) -> dict[str | None, dict[str, float]]:
        """The generation records' figures of these ledger accounts."""
        starts = period_starts(datetime.now(UTC))
        if all(":" not in account for account in accounts):  # keys only: one indexed query
            return await self.store.key_spend(starts, accounts)
        wanted = set(accounts)
        return {account: figures for account, figures in
                fold_accounts(dict(await self.store.place_spend(starts))).items() if account in wanted}

    def _limited_accounts(self) -> list[str]:
        return self.keys.directory.limited_accounts(list(self.keys.keys.values()))

    def check_recordable(self) -> None:
        """Strict durability refuses a request before it goes upstream while the recorder knows its record cannot be
        written (the store's last write failed and none succeeded since): one attribute read per request."""
        if self.recorder.refusing:
            raise GatewayError(503, UNRECORDABLE, metadata={"code": STORE_UNAVAILABLE_CODE},
                               headers={"Retry-After": "1"})

    @property
    def media(self) -> Any:
        if self._media is None:
            from crossroads.net.fetch import MediaFetcher

            media = self.config.server.media
            self._media = MediaFetcher(allow=media.allow, max_bytes=media.max_bytes, timeout=media.timeout)
        return self._media

    # -- ASGI ------------------------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        # HTTP, inline rather than in a helper: each coroutine frame here is passed through on every resumption of
        # the request's task.
        method, path = scope["method"], scope["path"]
        found = self._route(method, path)
        request = Request(scope, receive, send, found[1] if found else None)
        request_id = request.request_id = request_id_from(request.headers)
        REQUEST_ID.set(request_id)  # every log line of this request carries it (the task has its own context)
        started_mono = time.monotonic()
        trace = self.observability.begin(request) if self.observability.tracer is not None else None
        request.trace = trace
        self.in_flight += 1
        arming: asyncio.TimerHandle | None = None
        failure: GatewayError | None = None
        try:
            if found is None:
                if (path.rstrip("/") or "/") in self.path_error_bodies:
                    raise GatewayError(405, f"Method {method} not allowed on {path}")
                raise GatewayError(404, f"Not found: {method} {path}")
            endpoint = found[0]
            if endpoint.auth:
                request.principal = self.auth.authenticate(request.headers)
            if method in ("POST", "PATCH", "PUT"):
                await read_paced_body(request, self.config.server.max_body_bytes, self.config.server.body_timeout)
                # A client that disconnects cancels its handler, which closes the upstream request. (Handlers do
                # all their bookkeeping before the answer's last byte, so a cancel after it loses nothing.) The
                # watch starts only once the handler has run for WATCH_AFTER: most answers are complete sooner, and
                # a timer costs far less than a watching task per request.
                # current_task() is never None here: this runs in the request's task
                arming = asyncio.get_running_loop().call_later(WATCH_AFTER, _watch_disconnect, request,
                                                               cast("asyncio.Task[Any]", asyncio.current_task()))
            await endpoint.handler(request)
        except GatewayError as error:
            failure = error
            if request.started:
                log.warning("%s %s failed after its stream began: %s", method, path, error.message)
                await _end_stream(request.send)
                return
            error_body = found[0].error_body if found else self.path_error_bodies.get(path.rstrip("/"))
            await respond_error(request, error, error_body(error) if error_body is not None else None)
        except ClientGone:
            return
        except asyncio.CancelledError:
            if not request.gone:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - last line: a client never sees a traceback
            log.exception("unhandled error on %s %s", method, path)
            if request.started:  # a second response start would break the connection without an answer
                await _end_stream(request.send)
            else:
                failure = GatewayError(500, "Internal gateway error")
                await respond_error(request, failure)
        finally:
            request.done = True
            self.in_flight -= 1
            if request.started:
                OpenStreams.count -= 1
            if arming is not None:
                arming.cancel()
            if request.watcher is not None:
                asyncio.get_running_loop().call_soon(_stop_watching, request)
            try:
                if failure is not None or self.observability.wants_every_request():
                    self._observe(request, found, started_mono, failure, trace)
            except Exception:  # noqa: BLE001 - the answer is out; observing it must not raise into the server
                log.exception("could not record request %s for logs, metrics or traces", request_id)

    def _observe(self, request: Request, found: Any, started_mono: float, failure: GatewayError | None,
                 trace: Any) -> None:
        """The request's record for logs, metrics and traces, once its answer is complete or abandoned."""
        duration = time.monotonic() - started_mono
        principal = request.principal
        key = principal.key if principal is not None else None
        status = request.status if not request.gone or request.status else 499
        if request.gone and request.exchange is not None and not request.exchange.finished:
            status = 499
        info = RequestInfo(
            request_id=request.request_id, method=request.method, path=request.path,
            endpoint=found[0].template if found else "unmatched", status=status, started=time.time() - duration,
            started_mono=started_mono, duration=duration,
            key_name=None if principal is None else ("master" if key is None else key.name),
            key_label=presented_key_label(request.headers) if principal is None else None if key is None else key.label,
            exchange=request.exchange, error=failure)
        self.observability.end(info, trace)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which stops
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        self.views = ModelViews(self.registry, self.route_table, self.health)
        self.store = await Store.open(database_url(self.config.server))
        # This instance's registration (cli.prepare_store) stays live while any of its workers beats.
        self._instance_heartbeat = start_heartbeat(self.store)
        self.keys = KeyCache(self.store)
        self.dashboard.sessions.db = self.dashboard.grants.db = SignInStore(self.store)
        await self.keys.load()
        self.keys.start()
        self._warn_unknown_owners()
        self.auth.keys = self.keys
        starts = period_starts(datetime.now(UTC))
        # Records spooled by an earlier run (written to the database by the recorder from now on) are spend too. The
        # spool is read before the database, so a file another process replays in between is counted twice (a
        # stricter limit), never missed.
        spool = Spool(Path(self.config.server.data_dir) / "spool")
        spooled = await asyncio.to_thread(spool.spend, starts)
        self.ledger.load(fold_accounts(merge_spend(dict(await self.store.place_spend(starts)), spooled)), starts)
        accounting = self.config.accounting
        self.recorder = GenerationRecorder(self.store, flush_interval=accounting.flush_interval,
                                           max_pending=accounting.max_pending,
                                           strict=accounting.durability == "strict", spool=spool)
        self.recorder.start()
        if self.redis_url:
            # Everything this fleet keeps in Redis is named after the database it shares (two fleets may share one
            # Redis); the id is drawn by the first instance that starts on the database.
            fleet_id = await self.store.claim_meta(FLEET_ID, secrets.randbits(48))
            self.fleet_health = FleetHealth(self.redis_url, self.health, prefix=f"crossroads:health:{fleet_id:x}")
            self.fleet_health.start()
        if self.credit_store is not None:
            accounting = self.config.accounting
            if self.credit_store == "redis":
                ledger: Any = RedisCreditLedger(self.redis_url, lease=accounting.reservation_lease)  # type: ignore[arg-type]
                ledger.marker = f"{ledger.prefix}:reconciled:{fleet_id:x}"
            else:
                ledger = PostgresCreditLedger(self.store, lease=accounting.reservation_lease)
            self.fleet_credits = FleetCredits(ledger, database_spend=self._database_spend, limited=self._limited_accounts,
                                              reconcile_interval=accounting.reconcile_interval)
            try:
                await self.fleet_credits.reconcile()
            except Exception as exc:  # noqa: BLE001 - retried before the first reservation and on every tick
                log.warning("could not reconcile the credit ledger (%s) with the generation records at start-up: "
                            "%s: %s; keys with a credit limit are refused until it can be", ledger.name,
                            type(exc).__name__, exc)
            self.fleet_credits.start()
        # Everything loaded so far lives as long as the process: keep it out of every future GC pass.
        gc.freeze()
        # The objects of the requests in flight (coroutines, frames, headers: a few thousand at 32 concurrent) keep
        # CPython's default first-generation threshold (700) crossed every few dozen requests, and each pass walks
        # all of them only to find them alive. Requests free their objects by reference counting; the cycle
        # collector runs only once this many container objects have accumulated (a few MB at most).
        gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
        discovery = asyncio.get_running_loop().create_task(self._discover())
        # Readiness must not wait on a slow upstream: discovery gets a short head start, then finishes in the
        # background (ad-hoc "<connection>/<model>" addressing works either way).
        await asyncio.wait((discovery,), timeout=DISCOVERY_HEAD_START)
        self._background.add(discovery)
        discovery.add_done_callback(self._background.discard)
        await self.observability.start()
        self.ready = True

    async def _discover(self) -> None:
        await discover_models(self.registry, self.config)
        self.views = ModelViews(self.registry, self.route_table, self.health)
        warn_unpriced(self.registry)

    async def shutdown(self) -> None:
        self.ready = False
        CUT_OFF.flush()  # the slow-client cut-offs counted since the last warning line
        await self.observability.stop()
        for task in list(self._background):
            task.cancel()
        if self.fleet_credits is not None:
            await self.fleet_credits.stop()
        if self.fleet_health is not None:
            await self.fleet_health.stop()
        if self.recorder is not None:
            await self.recorder.stop(self.config.server.shutdown_grace)
        if self.keys is not None:
            await self.keys.stop()
        if self._instance_heartbeat is not None:
            await self._instance_heartbeat.stop()
        if self.store is not None:
            await self.store.close()
        await self.registry.close()
        await self.limiter.close()
        if self._media is not None:
            await self._media.close()
        if self.dashboard.oidc is not None:
            await self.dashboard.oidc.close()

    def _route(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        found = self.routes.get((method, path.rstrip("/") or "/"))
        if found is not None:
            return found, {}
        for base, name, endpoints in self.param_routes:
            if path.startswith(base) and "/" not in path[len(base):] and method in endpoints:
                return endpoints[method], {name: path[len(base):]}
        if path.startswith(("/api/v1/workspaces", "/v1/completion/")):
            segments = path.rstrip("/").split("/")
            for template, endpoints in self.template_routes:
                if len(template) != len(segments) or method not in endpoints:
                    continue
                params = {}
                for want, have in zip(template, segments, strict=True):
                    if want.startswith("{"):
                        if not have:
                            break
                        params[want[1:-1]] = unquote(have)
                    elif want != have:
                        break
                else:
                    return endpoints[method], params
        for prefix in API_PREFIXES:
            base = prefix + "/models/"
            if method == "GET" and path.startswith(base) and path.endswith("/endpoints"):
                model_id = path[len(base):-len("/endpoints")]
                if model_id.count("/") >= 1:
                    return self._endpoints_route, {"model": model_id}
        return None

    # -- handlers ----------------------------------------------------------------------------------------------------
    async def _models(self, request: Request) -> None:
        assert self.views is not None
        key = request.principal.key
        workspace = self.workspace_name(key.workspace_id) if key is not None and self.scoped_resources else None
        allowed = key.allowed_models if key is not None else None
        if not request.scope.get("query_string"):  # the common case: the prebuilt body (text-output models)
            await respond(request, 200, self.views.models_body_for(allowed, workspace))
            return
        # OpenRouter's query: output_modalities (default text), filters, sort, offset/limit (api/models.py).
        params = request.query()
        await respond(request, 200, self.views.models_page(allowed, workspace, model_query(params), params,
                                                           request.path))

    async def _models_count(self, request: Request) -> None:
        assert self.views is not None
        key = request.principal.key
        workspace = self.workspace_name(key.workspace_id) if key is not None and self.scoped_resources else None
        await respond(request, 200, self.views.count_body(key.allowed_models if key is not None else None, workspace,
                                                          model_query(request.query())))

    def _warn_unknown_owners(self) -> None:
        """A connection or route owned by a workspace that does not exist (yet) serves no key: say so once."""
        names = {w.name for w in self.keys.directory.workspaces.values()}
        owned = [("connection", c.name, c.workspace) for c in self.config.providers if c.workspace] + \
            [("route", name, owner) for name, owner in self._route_owner.items()]
        for kind, name, owner in owned:
            if owner not in names:
                log.warning("%s %s belongs to workspace %r, which does not exist: only the master key can use it "
                            "until a workspace of that name is created", kind, name, owner)

    def workspace_name(self, workspace_id: str | None) -> str | None:
        workspace = self.keys.directory.workspaces.get(workspace_id) if workspace_id is not None else None
        return workspace.name if workspace is not None else workspace_id

    def visible_candidates(self, candidates: list[Any], workspace_id: str | None, asked: str) -> list[Any]:
        """The candidates a request of `workspace_id` may use: connections and routes that are everyone's or that
        workspace's (config `workspace:`). None left: 404, as for a model that does not exist."""
        name = self.workspace_name(workspace_id)
        route_owner = self._route_owner
        kept = [c for c in candidates if c.deployment.connection.config.workspace in (None, name)
                and (c.route is None or route_owner.get(c.route) in (None, name))]
        if not kept:
            raise GatewayError(404, f"Model {asked!r} not found", metadata={"code": "model_not_found"})
        return kept

    async def _providers(self, request: Request) -> None:
        assert self.views is not None
        await respond(request, 200, self.views.providers_body)

    async def _endpoints(self, request: Request) -> None:
        assert self.views is not None
        others = await self.fleet_health.others() if self.fleet_health is not None else None
        key = request.principal.key
        scope = key is not None and self.scoped_resources
        await respond(request, 200, self.views.endpoints_body(
            request.path_params["model"], others, workspace=self.workspace_name(key.workspace_id) if scope else None,
            scoped=scope))

    def _metrics(self, request: Request) -> Awaitable[None]:
        return self.observability.metrics.serve(request)  # observability/metrics.py: access rules, exposition

    async def _health(self, request: Request) -> None:
        if not self.ready:
            await respond_json(request, 503, {"status": "starting"})
            return
        await respond_json(request, 200, {"status": "ok"})

    async def _health_live(self, request: Request) -> None:
        """The process answers (a liveness probe: restart it when this fails)."""
        await respond_json(request, 200, {"status": "ok"})

    async def _health_ready(self, request: Request) -> None:
        """Whether this process can serve (a readiness probe: send it traffic only while this is 200). Each check
        named with its verdict; 503 when any fails."""
        if not self.ready:
            await respond_json(request, 503, {"status": "starting", "checks": {}})
            return
        checks = {"database": await _bounded_check(self._database_ready())}
        if self.redis_url is not None:
            checks["redis"] = await _bounded_check(self.limiter.ping())
        pending, bound = self.recorder.pending_count(), self.recorder.max_pending
        checks["accounting"] = {"ok": pending < bound, "pending_records": pending, "bound": bound}
        serving = [c.name for c in self.config.providers if self._connection_serving(c.name)]
        checks["connections"] = {"ok": bool(serving), "serving": len(serving), "configured": len(self.config.providers)}
        if not self.config.providers:
            checks["connections"]["error"] = "no connection is configured"
        elif not serving:
            checks["connections"]["error"] = "every connection's models are ejected by their circuit breakers"
        ok = all(check["ok"] for check in checks.values())
        await respond_json(request, 200 if ok else 503, {"status": "ready" if ok else "not_ready",
                                                              "checks": checks})

    async def _database_ready(self) -> None:
        """The database answers and its schema is this version's (or newer: an instance of a later version
        migrated it during a rolling upgrade, and migrations only add)."""
        revision = await self.store.schema_revision()
        if self._known_revisions is None:
            from crossroads.store.migrate import known_revisions

            self._known_revisions = await asyncio.to_thread(known_revisions)
        head = self._known_revisions[0]
        if revision is None or (revision != head and revision in self._known_revisions):
            raise NotMigrated(f"the database schema is at {revision or 'nothing'}, this version needs {head}: "
                              "restart the gateway, which migrates at start")

    def _connection_serving(self, name: str) -> bool:
        """Whether some model of the connection is not ejected by a breaker (its own or the connection's)."""
        deployments = [d for ds in self.registry.models.values() for d in ds if d.connection.name == name]
        return not deployments or any(not self.health.ejected(name, d.model.upstream) for d in deployments)


class NotMigrated(Exception):
    pass


async def _bounded_check(check: Awaitable[None]) -> dict[str, Any]:
    """{"ok": True} when `check` finishes within READY_CHECK_TIMEOUT, else {"ok": False, "error": what failed} (the
    exception's class and, for a schema mismatch, its message: never a URL or a password)."""
    try:
        await asyncio.wait_for(check, READY_CHECK_TIMEOUT)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {READY_CHECK_TIMEOUT:g} s"}
    except NotMigrated as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return {"ok": False, "error": f"unavailable ({type(exc).__name__})"}
    return {"ok": True}


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


async def _end_stream(send: Send) -> None:
    """Close a streamed answer that failed part-way (the client sees a truncated stream, as on a dropped upstream)."""
    try:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except Exception:  # noqa: BLE001 - the answer was already complete, or the connection is gone
        log.debug("could not end a failed stream", exc_info=True)


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


async def read_paced_body(request: Request, limit: int, idle_timeout: float) -> None:
    """Request.read_body, paced against slow clients (slowloris): each part of the body must come at most
    `idle_timeout` seconds after the one before, and, once the body has had `idle_timeout` seconds, it must keep up
    BODY_MIN_RATE on average (a byte every half second never pauses for long, yet would hold the connection for
    days). Otherwise 408, in the endpoint's error shape like any GatewayError, and the connection is closed.

    Cheap for the body that comes with its head (nearly all): one timer, armed and cancelled. It is not moved as parts
    arrive: `read_body` notes each part's time and the size so far in `progress`, and the timer, when it fires,
    re-arms itself for the later deadline while the body keeps pace."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    started = loop.time()
    progress = [started, 0]  # when the last part came, bytes so far
    late: list[str] = []
    timer: asyncio.TimerHandle  # set below, before check can run

    def check() -> None:
        nonlocal timer
        last_part, received = progress
        pause_ends = last_part + idle_timeout
        rate_ends = started + idle_timeout + received / BODY_MIN_RATE
        if loop.time() < min(pause_ends, rate_ends):
            timer = loop.call_at(min(pause_ends, rate_ends), check)
            return
        late.append(f"no part of the request body arrived for {idle_timeout:g} s" if pause_ends <= rate_ends
                    else f"the request body arrived slower than {BODY_MIN_RATE} bytes a second")
        task.cancel()

    timer = loop.call_at(started + idle_timeout, check)
    try:
        await request.read_body(limit, progress)
    except asyncio.CancelledError:
        if not late or task.uncancel() > 0:  # not this timer's cancel, or cancelled by someone else as well
            raise
        client = request.scope.get("client")
        CUT_OFF.record("body", client[0] if client else "unknown", late[0])
        raise GatewayError(408, f"Request timeout: {late[0]}", headers={"Connection": "close"}) from None
    finally:
        timer.cancel()


def _watch_disconnect(request: Request, task: asyncio.Task[Any]) -> None:
    """Cancel `task` (the request's) when the client disconnects before its answer is complete.

    Once the body is read, the next message is the disconnect. The server (uvicorn) also resolves that pending
    receive when the response completes, so the watcher ends by itself in the common case: cancelling it instead
    would cost an exception on every request."""
    receiving = asyncio.ensure_future(request.receive())

    def on_message(received: asyncio.Future[Any]) -> None:
        if request.done or received.cancelled() or received.exception() is not None:
            return
        if received.result()["type"] == "http.disconnect":
            request.gone = True
            task.cancel()
        else:  # an empty body part: keep waiting
            _watch_disconnect(request, task)

    receiving.add_done_callback(on_message)
    request.watcher = receiving


def _stop_watching(request: Request) -> None:
    # Normally done already (see _watch_disconnect); a server that resolves the receive only when the connection
    # closes must not keep one waiting task per request of a keep-alive connection.
    if request.watcher is not None and not request.watcher.done():
        request.watcher.cancel()


def create_app() -> Gateway:
    """Factory for uvicorn workers: each process loads the same configuration the CLI validated."""
    from crossroads.observability import logs

    logs.configure(os.environ.get("CROSSROADS_LOG_LEVEL", "info"), os.environ.get("CROSSROADS_LOG_FORMAT"))
    return Gateway(load_config(os.environ.get("CROSSROADS_CONFIG") or None))
