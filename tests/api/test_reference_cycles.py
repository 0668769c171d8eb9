"""A request leaves nothing for the cycle collector: everything it made is freed by reference counting as soon as it
is over. Objects left in reference cycles wait for a collector pass, and with thousands of requests a second those
passes were the gateway's tail latency at low concurrency (bench/run.py, target 5): a self-re-arming closure of the
body pace check held every request's task in a cycle."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayServer
from tests.fakes.openai_fake import FakeOpenAI

REQUESTS = 100
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture
def gateway(fake_openai: FakeOpenAI, tmp_path) -> Iterator[GatewayServer]:
    config = {"server": {"host": "127.0.0.1", "master_key": MASTER_KEY},
              "providers": [{"name": "oai", "type": "openai", "base_url": fake_openai.base_url + "/v1",
                             "api_key": fake_openai.api_key,
                             "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini"}]}]}
    gw = GatewayServer(config, tmp_path).start()
    yield gw
    gw.stop()


def gateway_garbage(objects: list[object]) -> list[str]:
    """What of `objects` the gateway made: its own types and functions, and the event loop's tasks and handles (the
    test's own client, httpx, leaves cycles of its own, which are not the gateway's)."""
    found = []
    for obj in objects:
        kind = type(obj)
        module = getattr(obj, "__module__", "") if callable(obj) else kind.__module__
        if (module or "").startswith("crossroads") or kind.__name__ in ("Task", "TimerHandle", "Handle", "coroutine"):
            found.append(f"{kind.__module__}.{kind.__qualname__} {getattr(obj, '__qualname__', '')}".strip())
    return sorted(set(found))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_requests_leave_no_reference_cycles(gateway: GatewayServer, stream: bool) -> None:
    body = {"model": "openai/gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=10) as client:
        for _ in range(10):  # warm: what is made once per process is not per request
            assert client.post("/api/v1/chat/completions", json=body).status_code == 200
        time.sleep(0.2)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a pass finds unreachable is kept in gc.garbage instead of freed
        gc.disable()
        try:
            for _ in range(REQUESTS):
                assert client.post("/api/v1/chat/completions", json=body).status_code == 200
            time.sleep(0.3)  # the records' batch (observability) and the writer have run
            gc.collect()
            left = gateway_garbage(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert left == [], left
