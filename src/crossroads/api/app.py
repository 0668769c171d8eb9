"""The gateway's ASGI application: routing, authentication, error rendering, lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from crossroads.accounting.exchange import Exchange
from crossroads.accounting.recorder import GenerationRecorder
from crossroads.api import account, stored
from crossroads.api.asgi import (
    ClientGone,
    Receive,
    Request,
    Scope,
    Send,
    respond,
    respond_error,
    respond_json,
)
from crossroads.api.inference import serve
from crossroads.api.models import ModelViews
from crossroads.config import Config, ensure_master_key, load_config
from crossroads.errors import GatewayError
from crossroads.formats.chat import ChatFront
from crossroads.formats.fronts import CompletionsFront, MessagesFront, ResponsesFront
from crossroads.gate.auth import Authenticator
from crossroads.gate.credits import CreditLedger, period_starts
from crossroads.gate.keys import KeyCache
from crossroads.gate.ratelimit import Limit, make_limiter
from crossroads.routing.health import BreakerPolicy, HealthBoard
from crossroads.routing.registry import Registry, build_registry, discover_models
from crossroads.routing.routes import RouteTable
from crossroads.routing.select import RoutePlan, plan
from crossroads.store import Store, database_url

log = logging.getLogger("crossroads")

Handler = Callable[[Request], Awaitable[None]]
API_PREFIXES = ("/api/v1", "/v1")
DISCOVERY_HEAD_START = 1.0  # seconds start-up waits for upstream model discovery before answering /health


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        master_key, _ = ensure_master_key(config)
        self.auth = Authenticator(master_key)
        self.registry: Registry = build_registry(config)
        self.views: ModelViews | None = None
        self._media: Any = None
        self.ready = False
        self._background: set[asyncio.Task[None]] = set()
        self.ledger = CreditLedger()
        self.route_table = RouteTable.from_config(config)
        breaker = config.routing.breaker
        self.health = HealthBoard(BreakerPolicy(failure_threshold=breaker.failure_threshold,
                                                cooldown=breaker.cooldown))
        self.redis_url = os.environ.get("CROSSROADS_REDIS_URL") or None
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
        # With several worker processes each would keep its own ledger, so limits would not hold: refuse them.
        self.workers = int(os.environ.get("CROSSROADS_WORKERS") or 1)
        self.chat_front = ChatFront()
        self.messages_front = MessagesFront()
        self.responses_front = ResponsesFront()
        self.routes: dict[tuple[str, str], tuple[Handler, bool]] = {}
        # Endpoints whose errors take another shape than OpenAI's (the Anthropic SDK reads its own).
        self.error_shapes: dict[str, Callable[[GatewayError], bytes]] = {}
        for prefix in API_PREFIXES:
            self.error_shapes[prefix + "/messages"] = self.messages_front.error_body
            self.error_shapes[prefix + "/messages/count_tokens"] = self.messages_front.error_body
            self.error_shapes[prefix + "/responses"] = self.responses_front.error_body
            for method, path, handler in (
                ("POST", "/chat/completions", self._chat),
                ("POST", "/messages", self._front(self.messages_front)),
                ("POST", "/messages/count_tokens", self._bind(stored.count_tokens)),
                ("POST", "/responses", self._front(self.responses_front)),
                ("POST", "/completions", self._front(CompletionsFront())),
                ("GET", "/models", self._models),
                ("GET", "/providers", self._providers),
                ("GET", "/key", self._bind(account.current_key)),
                ("GET", "/auth/key", self._bind(account.current_key)),
                ("GET", "/keys", self._bind(account.list_keys)),
                ("POST", "/keys", self._bind(account.create_key)),
                ("GET", "/credits", self._bind(account.credits)),
                ("GET", "/generation", self._bind(account.generation)),
                ("GET", "/activity", self._bind(account.activity)),
            ):
                self.routes[(method, prefix + path)] = (handler, True)
        self.response_routes: dict[str, Handler] = {
            "GET": self._bind(stored.get_response), "DELETE": self._bind(stored.delete_response)}
        self.key_routes: dict[str, Handler] = {
            "GET": self._bind(account.get_key), "PATCH": self._bind(account.update_key),
            "DELETE": self._bind(account.delete_key)}
        self.routes[("GET", "/health")] = (self._health, False)

    def _front(self, front: Any) -> Handler:
        async def handler(request: Request) -> None:
            await serve(self, request, front)

        return handler

    def _bind(self, endpoint: Callable[[Gateway, Request], Awaitable[None]]) -> Handler:
        async def handler(request: Request) -> None:
            await endpoint(self, request)

        return handler

    def check_limit_allowed(self, changes: dict[str, Any]) -> None:
        if self.workers > 1 and changes.get("limit") is not None:
            raise GatewayError(400, "Credit limits are enforced in one process; this gateway runs "
                                    f"{self.workers} workers. Run a single worker to use key limits.")
        if self.workers > 1 and self.redis_url is None and (changes.get("rpm") or changes.get("tpm")):
            raise GatewayError(400, f"Rate limits need CROSSROADS_REDIS_URL when the gateway runs {self.workers} "
                                    "workers (each would otherwise count alone).")

    # -- routing and capacity (used by api/inference.py) ---------------------------------------------------------
    def plan(self, body: dict[str, Any], headers: dict[bytes, bytes], key: Any, prompt_tokens: int) -> RoutePlan:
        return plan(self.registry, self.route_table, body, headers=headers, key=key, stats=self.health,
                    prompt_tokens=prompt_tokens)

    def request_limits(self, key: Any, route: str | None) -> list[Limit]:
        limits = []
        if key is not None and (key.rpm or key.tpm):
            limits.append(Limit(f"key:{key.hash}", rpm=key.rpm, tpm=key.tpm))
        if route is not None and route in self._route_limits:
            limits.append(self._route_limits[route])
        return limits

    def connection_limits(self, name: str) -> list[Limit]:
        return self._connection_limits.get(name, [])

    async def finish(self, exchange: Exchange) -> None:
        """Settle the request's credit reservation with its real cost and hand its record to the writer.

        Called just before the response completes (so that with strict durability the record is committed before the
        client has its answer) and again, as a no-op, when the request ends whatever the way."""
        if exchange.finished:
            return
        exchange.finished = True
        row = exchange.to_row()
        if exchange.reservation is not None:
            self.ledger.settle(exchange.reservation, row.cost)
        await self.recorder.record(row)

    @property
    def media(self) -> Any:
        if self._media is None:
            from crossroads.net.fetch import MediaFetcher

            media = self.config.server.media
            self._media = MediaFetcher(allow=media.allow, max_bytes=media.max_bytes, timeout=media.timeout)
        return self._media

    # -- ASGI ------------------------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

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
        self.keys = KeyCache(self.store)
        await self.keys.load()
        self.keys.start()
        self.auth.keys = self.keys
        starts = period_starts(datetime.now(UTC))
        self.ledger.load(await self.store.key_spend(starts), starts)
        accounting = self.config.accounting
        self.recorder = GenerationRecorder(self.store, flush_interval=accounting.flush_interval,
                                           strict=accounting.durability == "strict")
        self.recorder.start()
        # Everything loaded so far lives as long as the process: keep it out of every future GC pass.
        gc.freeze()
        discovery = asyncio.get_running_loop().create_task(self._discover())
        # Readiness must not wait on a slow upstream: discovery gets a short head start, then finishes in the
        # background (ad-hoc "<connection>/<model>" addressing works either way).
        await asyncio.wait((discovery,), timeout=DISCOVERY_HEAD_START)
        self._background.add(discovery)
        discovery.add_done_callback(self._background.discard)
        self.ready = True

    async def _discover(self) -> None:
        await discover_models(self.registry, self.config)
        self.views = ModelViews(self.registry, self.route_table, self.health)

    async def shutdown(self) -> None:
        self.ready = False
        for task in list(self._background):
            task.cancel()
        if self.recorder is not None:
            await self.recorder.stop(self.config.server.shutdown_grace)
        if self.keys is not None:
            await self.keys.stop()
        if self.store is not None:
            await self.store.close()
        await self.registry.close()
        await self.limiter.close()
        if self._media is not None:
            await self._media.close()

    def _route(self, method: str, path: str) -> tuple[Handler, bool, dict[str, str]] | None:
        found = self.routes.get((method, path.rstrip("/") or "/"))
        if found is not None:
            return found[0], found[1], {}
        for prefix in API_PREFIXES:
            keys_base = prefix + "/keys/"
            if path.startswith(keys_base) and "/" not in path[len(keys_base):] and method in self.key_routes:
                return self.key_routes[method], True, {"hash": path[len(keys_base):]}
            responses_base = prefix + "/responses/"
            if (path.startswith(responses_base) and "/" not in path[len(responses_base):]
                    and method in self.response_routes):
                return self.response_routes[method], True, {"id": path[len(responses_base):]}
            base = prefix + "/models/"
            if method == "GET" and path.startswith(base) and path.endswith("/endpoints"):
                model_id = path[len(base):-len("/endpoints")]
                if model_id.count("/") >= 1:
                    return self._endpoints, True, {"model": model_id}
        return None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        found = self._route(method, path)
        request = Request(scope, receive, send, found[2] if found else None)
        try:
            if found is None:
                if any(p == (path.rstrip("/") or "/") for (_, p) in self.routes):
                    raise GatewayError(405, f"Method {method} not allowed on {path}")
                raise GatewayError(404, f"Not found: {method} {path}")
            handler, needs_auth, _ = found
            if needs_auth:
                request.principal = self.auth.authenticate(request.headers)
            if method in ("POST", "PATCH"):
                await request.read_body(self.config.server.max_body_bytes)
                await self._watched(handler, request)
            else:
                await handler(request)
        except GatewayError as error:
            shape = self._error_shape(path.rstrip("/"))
            await respond_error(send, error, shape(error) if shape is not None else None)
        except ClientGone:
            return
        except Exception:  # noqa: BLE001 - last line: a client never sees a traceback
            log.exception("unhandled error on %s %s", method, path)
            await respond_error(send, GatewayError(500, "Internal gateway error"))

    def _error_shape(self, path: str) -> Callable[[GatewayError], bytes] | None:
        shape = self.error_shapes.get(path)
        if shape is None and "/responses/" in path:  # GET/DELETE /responses/{id}
            shape = self.error_shapes.get(path.rsplit("/", 1)[0])
        return shape

    async def _watched(self, handler: Handler, request: Request) -> None:
        """Run a handler, cancelling it if the client disconnects (which closes its upstream request)."""
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    task.cancel()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await handler(request)
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        finally:
            watcher.cancel()

    # -- handlers ----------------------------------------------------------------------------------------------------
    async def _chat(self, request: Request) -> None:
        await serve(self, request, self.chat_front)

    async def _models(self, request: Request) -> None:
        assert self.views is not None
        await respond(request.send, 200, self.views.models_body)

    async def _providers(self, request: Request) -> None:
        assert self.views is not None
        await respond(request.send, 200, self.views.providers_body)

    async def _endpoints(self, request: Request) -> None:
        assert self.views is not None
        await respond(request.send, 200, self.views.endpoints_body(request.path_params["model"]))

    async def _health(self, request: Request) -> None:
        if not self.ready:
            await respond_json(request.send, 503, {"status": "starting"})
            return
        await respond_json(request.send, 200, {"status": "ok"})


def create_app() -> Gateway:
    """Factory for uvicorn workers: each process loads the same configuration the CLI validated."""
    import os

    return Gateway(load_config(os.environ.get("CROSSROADS_CONFIG") or None))
