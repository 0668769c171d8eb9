"""The upstream SSE reader, against a real server that splits events across network reads in awkward places."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from crossroads.providers.http import iter_sse
from tests.fakes.serve import serving

STREAM = (b": comment\n\nevent: message_start\ndata: {\"a\": 1}\n\n"
          b"data: {\"b\": 2}\r\n\r\n"
          b"data: line one\ndata: line two\n\n"
          b"id: 7\nretry: 10\n\n"
          b"data: [DONE]\n\n")


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
async def test_events_survive_any_split(piece: int) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for start in range(0, len(STREAM), piece):
            await resp.write(STREAM[start:start + piece])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    async with serving(app) as url, aiohttp.ClientSession() as session, session.get(url + "/") as resp:
        events = [e async for batch in iter_sse(resp) for e in batch]
    assert events == [("message_start", b'{"a": 1}'), (None, b'{"b": 2}'), (None, b"line one\nline two"),
                      (None, b"[DONE]")]
