"""The floor: the cheapest reasonable Python pass-through on the gateway's own HTTP stack.

`python bench/floor.py --port P --upstream http://127.0.0.1:U/v1` runs a bare ASGI app under uvicorn (uvloop +
httptools, access log off, no server/date headers: the same options `crossroads serve` uses) that, for
`POST /v1/<path>` (`/v1/chat/completions`, `/v1/embeddings`, ...):

1. reads the request body,
2. parses it with orjson (to see `stream`) and serialises it again (the gateway must rewrite the model, so it
   re-serialises too),
3. posts it to the same path under the upstream base URL (`/v1/embeddings` -> `<upstream>/embeddings`) with one
   pooled aiohttp `ClientSession` (created once, at start-up),
4. writes the answer back: whole for a completion; for a stream, line by line as the upstream sends it, one ASGI send
   per SSE event (the lines up to and including the blank line that ends it), like the gateway.

No authentication, no validation, no accounting: whatever the gateway spends above this is its own cost.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import orjson

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Floor:
    def __init__(self, upstream: str) -> None:
        self.base = upstream.rstrip("/")
        self.urls: dict[str, str] = {}  # request path -> upstream URL, built once per path
        self.headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    connector = aiohttp.TCPConnector(limit=0)
                    self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                         skip_auto_headers=("User-Agent",))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
            await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
            return
        path = scope["path"]
        url = self.urls.get(path)
        if url is None:
            if scope["method"] != "POST" or not path.startswith("/v1/"):
                await send({"type": "http.response.start", "status": 404, "headers": JSON_HEADERS})
                await send({"type": "http.response.body", "body": b'{"error":{"message":"not found"}}'})
                return
            url = self.urls[path] = self.base + path[3:]
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = orjson.loads(b"".join(chunks))
        stream = body.get("stream") is True
        assert self.session is not None
        async with self.session.post(url, data=orjson.dumps(body), headers=self.headers) as resp:
            if not stream:
                raw = await resp.read()
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [*JSON_HEADERS, (b"content-length", str(len(raw)).encode())]})
                await send({"type": "http.response.body", "body": raw})
                return
            await send({"type": "http.response.start", "status": resp.status, "headers": SSE_HEADERS})
            event = b""
            async for line in resp.content:
                event += line
                if line == b"\n" or line == b"\r\n":
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                    event = b""
            await send({"type": "http.response.body", "body": event, "more_body": False})


def main() -> None:
    parser = argparse.ArgumentParser(description="bare ASGI pass-through proxy (the benchmark's floor)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:9000/v1")
    args = parser.parse_args()

    import uvicorn

    uvicorn.run(Floor(args.upstream), host=args.host, port=args.port, loop="uvloop", http="httptools",
                lifespan="on", access_log=False, log_level="warning", server_header=False, date_header=False)


if __name__ == "__main__":
    main()
