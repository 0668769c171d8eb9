"""Timing probe of bench/phases.py, loaded (as Python loads any `sitecustomize` on its path) by the floor and the
gateway it starts with this directory first on PYTHONPATH and CROSSROADS_BENCH_PHASES set to a file name.

It wraps four methods of the HTTP stack both servers share, to stamp one request at a time (concurrency 1):
uvicorn's protocol receiving a request's first bytes, aiohttp writing the first bytes upstream, aiohttp receiving the
upstream's first answer bytes, and uvicorn's send of the answer's last body part. On SIGUSR2 it writes the samples
taken since the last write (pre, upstream, post and total, in microseconds) to the file as JSON and starts afresh.
Without the variable it does nothing.
"""

from __future__ import annotations

import builtins
import json
import os
import signal
import time
from typing import Any

_OUT = os.environ.get("CROSSROADS_BENCH_PHASES")


def _install() -> None:
    from aiohttp import client_proto, http_writer
    from uvicorn.protocols.http import httptools_impl

    now = time.perf_counter_ns
    stamps = [0, 0, 0]  # request's first bytes, first upstream write, first upstream answer bytes
    samples: list[tuple[int, int, int, int]] = []

    def wrap_first(cls: Any, name: str, slot: int) -> None:
        original = getattr(cls, name)

        def stamped(self: Any, *args: Any) -> Any:
            if stamps[0] and not stamps[slot]:
                stamps[slot] = now()
            return original(self, *args)

        setattr(cls, name, stamped)

    received = httptools_impl.HttpToolsProtocol.data_received

    def data_received(self: Any, data: bytes) -> None:
        if not stamps[0] and data[:5] == b"POST ":
            stamps[0], stamps[1], stamps[2] = now(), 0, 0
        received(self, data)

    httptools_impl.HttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]
    wrap_first(http_writer.StreamWriter, "_write", 1)
    wrap_first(http_writer.StreamWriter, "_writelines", 1)
    wrap_first(client_proto.ResponseHandler, "data_received", 2)
    send = httptools_impl.RequestResponseCycle.send

    async def send_stamped(self: Any, message: Any) -> None:
        await send(self, message)
        if message["type"] == "http.response.body" and not message.get("more_body") and stamps[0]:
            end = now()
            start, upstream, answer = stamps
            stamps[0] = 0
            if upstream and answer:
                samples.append(((upstream - start) // 1000, (answer - upstream) // 1000, (end - answer) // 1000,
                                (end - start) // 1000))

    httptools_impl.RequestResponseCycle.send = send_stamped  # type: ignore[method-assign]

    def write(signum: int, frame: Any) -> None:
        taken = samples[:]
        del samples[:]
        assert _OUT is not None
        with open(_OUT + ".tmp", "w") as out:
            json.dump(taken, out)
        os.replace(_OUT + ".tmp", _OUT)

    signal.signal(signal.SIGUSR2, write)


if _OUT:
    _import = builtins.__import__

    def _watch(name: str, *args: Any, **kwargs: Any) -> Any:
        module = _import(name, *args, **kwargs)
        if name == "uvicorn" or name.startswith("uvicorn."):
            builtins.__import__ = _import
            _install()
        return module

    builtins.__import__ = _watch
