"""The gateway's ASGI application: routing, authentication, error rendering, lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

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
from crossroads.api.chat import chat_completions
from crossroads.api.models import ModelViews
from crossroads.config import Config, ensure_master_key, load_config
from crossroads.errors import GatewayError
from crossroads.gate.auth import Authenticator
from crossroads.routing.registry import Registry, build_registry, discover_models

log = logging.getLogger("crossroads")

Handler = Callable[[Request], Awaitable[None]]
API_PREFIXES = ("/api/v1", "/v1")


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        master_key, _ = ensure_master_key(config)
        self.auth = Authenticator(master_key)
        self.registry: Registry = build_registry(config)
        self.views: ModelViews | None = None
        self._media: Any = None
        self.ready = False
        self.routes: dict[tuple[str, str], tuple[Handler, bool]] = {}
        for prefix in API_PREFIXES:
            self.routes[("POST", prefix + "/chat/completions")] = (self._chat, True)
            self.routes[("GET", prefix + "/models")] = (self._models, True)
            self.routes[("GET", prefix + "/providers")] = (self._providers, True)
        self.routes[("GET", "/health")] = (self._health, False)

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
        await discover_models(self.registry, self.config)
        self.views = ModelViews(self.registry)
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        await self.registry.close()
        if self._media is not None:
            await self._media.close()

    def _route(self, method: str, path: str) -> tuple[Handler, bool, dict[str, str]] | None:
        found = self.routes.get((method, path.rstrip("/") or "/"))
        if found is not None:
            return found[0], found[1], {}
        for prefix in API_PREFIXES:
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
                self.auth.authenticate(request.headers)
            if method == "POST":
                await request.read_body(self.config.server.max_body_bytes)
                await self._watched(handler, request)
            else:
                await handler(request)
        except GatewayError as error:
            await respond_error(send, error)
        except ClientGone:
            return
        except Exception:  # noqa: BLE001 - last line: a client never sees a traceback
            log.exception("unhandled error on %s %s", method, path)
            await respond_error(send, GatewayError(500, "Internal gateway error"))

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
        await chat_completions(self, request)

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
