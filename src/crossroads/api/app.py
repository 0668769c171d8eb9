"""The gateway's ASGI application: routing, authentication, error rendering, lifespan."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast
from urllib.parse import unquote

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
from crossroads.api.models import model_query
from crossroads.api.protocol import CUT_OFF
from crossroads.api.services import Services, make_services, start_discovery, start_services, stop_services
from crossroads.config import Config, ensure_master_key, load_config
from crossroads.dashboard.app import Dashboard
from crossroads.errors import GatewayError
from crossroads.formats.chat import ChatFront
from crossroads.formats.embeddings import EmbeddingsFront
from crossroads.formats.fronts import CompletionsFront, MessagesFront, ResponsesFront
from crossroads.gate.auth import Authenticator, Principal
from crossroads.observability.hub import Observability
from crossroads.observability.logs import REQUEST_ID
from crossroads.observability.record import RequestInfo, presented_key_label, request_id_from
from crossroads.routing.retry import REAL_CLOCK, Clock
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
READY_CHECK_TIMEOUT = 2.0  # seconds each readiness check may take


class Gateway:
    def __init__(self, config: Config, *, clock: Clock = REAL_CLOCK) -> None:
        self.config = config
        self.clock = clock  # what the breakers read and the retry backoff waits on (tests give a fake one)
        master_key, _ = ensure_master_key(config)
        self.auth = Authenticator(master_key)
        # What the process holds (registry, breakers, limiter, ledgers; the store and what runs beside the requests
        # once started): api/services.py. The endpoints reach it as gateway.services.
        self.services: Services = make_services(config, now=clock.now, sleep=clock.sleep)
        self.ready = False
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
            directory = self.services.keys.directory
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
        services = self.services
        await start_services(services)  # the store, keys, ledgers, record writer, fleet health (api/services.py)
        self.dashboard.sessions.db = self.dashboard.grants.db = SignInStore(services.store)
        self.auth.keys = services.keys
        # Everything loaded so far lives as long as the process: keep it out of every future GC pass.
        gc.freeze()
        # The objects of the requests in flight (coroutines, frames, headers: a few thousand at 32 concurrent) keep
        # CPython's default first-generation threshold (700) crossed every few dozen requests, and each pass walks
        # all of them only to find them alive. Requests free their objects by reference counting; the cycle
        # collector runs only once this many container objects have accumulated (a few MB at most).
        gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
        await start_discovery(services)
        await self.observability.start()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        CUT_OFF.flush()  # the slow-client cut-offs counted since the last warning line
        await self.observability.stop()
        await stop_services(self.services)
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
        services = self.services
        views = services.views
        assert views is not None
        key = request.principal.key
        workspace = services.workspace_name(key.workspace_id) if key is not None and services.scoped_resources \
            else None
        allowed = key.allowed_models if key is not None else None
        if not request.scope.get("query_string"):  # the common case: the prebuilt body (text-output models)
            await respond(request, 200, views.models_body_for(allowed, workspace))
            return
        # OpenRouter's query: output_modalities (default text), filters, sort, offset/limit (api/models.py).
        params = request.query()
        await respond(request, 200, views.models_page(allowed, workspace, model_query(params), params, request.path))

    async def _models_count(self, request: Request) -> None:
        services = self.services
        assert services.views is not None
        key = request.principal.key
        workspace = services.workspace_name(key.workspace_id) if key is not None and services.scoped_resources \
            else None
        await respond(request, 200, services.views.count_body(key.allowed_models if key is not None else None,
                                                              workspace, model_query(request.query())))

    async def _providers(self, request: Request) -> None:
        assert self.services.views is not None
        await respond(request, 200, self.services.views.providers_body)

    async def _endpoints(self, request: Request) -> None:
        services = self.services
        assert services.views is not None
        others = await services.fleet_health.others() if services.fleet_health is not None else None
        key = request.principal.key
        scope = key is not None and services.scoped_resources
        await respond(request, 200, services.views.endpoints_body(
            request.path_params["model"], others,
            workspace=services.workspace_name(key.workspace_id) if scope else None, scoped=scope))

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
        services = self.services
        checks = {"database": await _bounded_check(self._database_ready())}
        if services.redis_url is not None:
            checks["redis"] = await _bounded_check(services.limiter.ping())
        pending, bound = services.recorder.pending_count(), services.recorder.max_pending
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
        revision = await self.services.store.schema_revision()
        if self._known_revisions is None:
            from crossroads.store.migrate import known_revisions

            self._known_revisions = await asyncio.to_thread(known_revisions)
        head = self._known_revisions[0]
        if revision is None or (revision != head and revision in self._known_revisions):
            raise NotMigrated(f"the database schema is at {revision or 'nothing'}, this version needs {head}: "
                              "restart the gateway, which migrates at start")

    def _connection_serving(self, name: str) -> bool:
        """Whether some model of the connection is not ejected by a breaker (its own or the connection's)."""
        deployments = [d for ds in self.services.registry.models.values() for d in ds if d.connection.name == name]
        health = self.services.health
        return not deployments or any(not health.ejected(name, d.model.upstream) for d in deployments)


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


async def _end_stream(send: Send) -> None:
    """Close a streamed answer that failed part-way (the client sees a truncated stream, as on a dropped upstream)."""
    try:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except Exception:  # noqa: BLE001 - the answer was already complete, or the connection is gone
        log.debug("could not end a failed stream", exc_info=True)


async def read_paced_body(request: Request, limit: int, idle_timeout: float) -> None:
    """Request.read_body, paced against slow clients (slowloris): each part of the body must come at most
    `idle_timeout` seconds after the one before, and, once the body has had `idle_timeout` seconds, it must keep up
    BODY_MIN_RATE on average (a byte every half second never pauses for long, yet would hold the connection for
    days). Otherwise 408, in the endpoint's error shape like any GatewayError, and the connection is closed.

    Cheap for the body that comes with its head (nearly all): one timer, armed and cancelled. It is not moved as parts
    arrive: `read_body` notes each part's time and the size so far in `progress`, and the timer, when it fires,
    re-arms itself for the later deadline while the body keeps pace."""
    task = asyncio.current_task()
    assert task is not None
    pace = _BodyPace(asyncio.get_running_loop(), task, idle_timeout)
    try:
        await request.read_body(limit, pace.progress)
    except asyncio.CancelledError:
        if pace.late is None or task.uncancel() > 0:  # not this timer's cancel, or cancelled by someone else as well
            raise
        client = request.scope.get("client")
        CUT_OFF.record("body", client[0] if client else "unknown", pace.late)
        raise GatewayError(408, f"Request timeout: {pace.late}", headers={"Connection": "close"}) from None
    finally:
        pace.timer.cancel()  # a cancelled handle lets go of its callback: nothing of the request is left in a cycle


class _BodyPace:
    """The pace check of one request body (read_paced_body): an object rather than a closure, because a closure that
    re-arms itself refers to itself, and that cycle (holding the request's task) was left to the cycle collector
    after every request: its passes were most of the gateway's p99 at concurrency 1 (bench/run.py, target 5)."""

    __slots__ = ("loop", "task", "idle_timeout", "started", "progress", "late", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], idle_timeout: float) -> None:
        self.loop, self.task, self.idle_timeout = loop, task, idle_timeout
        self.started = loop.time()
        self.progress: list[Any] = [self.started, 0]  # when the last part came, bytes so far (read_body keeps them)
        self.late: str | None = None  # why the body was cut off
        self.timer = loop.call_at(self.started + idle_timeout, self.check)

    def check(self) -> None:
        last_part, received = self.progress
        pause_ends = last_part + self.idle_timeout
        rate_ends = self.started + self.idle_timeout + received / BODY_MIN_RATE
        if self.loop.time() < min(pause_ends, rate_ends):
            self.timer = self.loop.call_at(min(pause_ends, rate_ends), self.check)
            return
        self.late = f"no part of the request body arrived for {self.idle_timeout:g} s" if pause_ends <= rate_ends \
            else f"the request body arrived slower than {BODY_MIN_RATE} bytes a second"
        self.task.cancel()


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
