"""Breaker granularity, end to end: a breaker per endpoint (one upstream model on one connection), connection-level
faults that eject every model of a connection, 429s that never eject, and panic routing when every candidate is
ejected. A real gateway (in this process, on a fake clock: cool-downs pass when a test says so) in front of fake
OpenAI-compatible upstreams on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MASTER_KEY, FakeClock, GatewayServer
from tests.fakes.base import Fault
from tests.routing.conftest import connection

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]
PRICE = {"prompt": 1.0, "completion": 2.0}
FAKES = ("acct", "auto", "doomed", "pa", "pb", "busy", "spare", "slow")  # started by tests/routing/conftest.py
COOLDOWN = 1.5  # routing.breaker.cooldown of the gateway below; failure_threshold is 2


def model(model_id: str, upstream: str, **extra) -> dict:
    return {"id": model_id, "upstream": upstream, "pricing": PRICE, **extra}


@pytest.fixture(scope="module")
def gw(fakes, tmp_path_factory) -> Iterator[GatewayServer]:
    long = {"context_length": 200000}  # only these fit the auto test's max_tokens
    config = {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(tmp_path_factory.mktemp("data")),
                   "keepalive_interval": 0.3},
        "routing": {"retries": 1, "max_retry_wait": 1, "breaker": {"failure_threshold": 2, "cooldown": COOLDOWN}},
        "providers": [
            connection("acct", fakes["acct"], [model("test/gpt-x", "gpt-x"), model("test/gpt-y", "gpt-y")]),
            connection("auto", fakes["auto"], [
                model("test/a1", "a1", pricing={"prompt": 0.1, "completion": 0.1}, **long),
                model("test/a2", "a2", pricing={"prompt": 0.2, "completion": 0.2}, **long),
                model("test/a3", "a3", pricing={"prompt": 0.3, "completion": 0.3}, **long)]),
            connection("gone", fakes["doomed"], [model("test/g1", "g1"), model("test/g2", "g2")]),
            # The fake wants sk-spare: every request on this connection is a 401.
            {**connection("badkey", fakes["spare"], [model("test/k1", "k1"), model("test/k2", "k2")]),
             "api_key": "sk-wrong"},
            connection("pa", fakes["pa"], [model("test/both", "both")]),
            connection("pb", fakes["pb"], [model("test/both", "both")]),
            connection("busy", fakes["busy"], [model("test/rl", "rl"), model("test/pair", "pair")]),
            connection("spare", fakes["spare"], [model("test/pair", "pair"), model("test/fallback", "fb")]),
            {**connection("slow", fakes["slow"], [model("test/s1", "s1"), model("test/s2", "s2")]), "timeout": 0.5},
        ],
    }
    proc = GatewayServer(config, tmp_path_factory.mktemp("breaker"), clock=FakeClock()).start()
    yield proc
    proc.stop()


def post(gw: GatewayServer, body: dict) -> httpx.Response:
    return httpx.post(gw.url + CHAT, json={"messages": HELLO, **body}, headers=AUTH, timeout=30)


def attempts(gw: GatewayServer, resp: httpx.Response) -> list[tuple[str, int | None]]:
    data = httpx.get(gw.url + "/api/v1/generation", params={"id": resp.headers["x-generation-id"]},
                     headers=AUTH).json()["data"]
    return [(a["provider_name"], a["status"]) for a in data["provider_responses"]]


def status(gw: GatewayServer, model_id: str) -> dict[str, int]:
    """Each endpoint's live status for a model, by connection (0 ok, -5 probing, -10 ejected)."""
    endpoints = httpx.get(f"{gw.url}/api/v1/models/{model_id}/endpoints", headers=AUTH).json()["data"]["endpoints"]
    return {e["provider_name"]: e["status"] for e in endpoints}


def test_one_failing_model_does_not_eject_the_other_models_of_its_connection(gw, fakes) -> None:
    fakes["acct"].fault(Fault(status=500), Fault(status=500))
    resp = post(gw, {"model": "test/gpt-x"})  # the attempt and its retry: two failures, the threshold
    assert resp.status_code == 502, resp.text
    assert status(gw, "test/gpt-x") == {"acct": -10}
    assert status(gw, "test/gpt-y") == {"acct": 0}
    resp = post(gw, {"model": "test/gpt-y"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["provider"] == "acct"
    assert [r.json["model"] for r in fakes["acct"].requests] == ["gpt-x", "gpt-x", "gpt-y"]


def test_auto_router_is_not_refused_when_one_model_of_the_account_fails(gw, fakes) -> None:
    # The auto router's three cheapest fitting models all live on connection "auto"; the cheapest one fails.
    fakes["auto"].fault(Fault(status=500), Fault(status=500))
    assert post(gw, {"model": "test/a1"}).status_code == 502
    assert status(gw, "test/a1") == {"auto": -10}
    for _ in range(3):
        resp = post(gw, {"model": "openrouter/auto", "max_tokens": 100000})
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == "test/a2"  # a1 (ejected) goes last; the next cheapest serves
    assert "circuit breaker" not in resp.text
    assert [r.json["model"] for r in fakes["auto"].requests] == ["a1", "a1", "a2", "a2", "a2"]


def test_rate_limits_never_open_the_breaker(gw, fakes) -> None:
    busy = fakes["busy"]
    # Retry-After beyond routing.max_retry_wait: not waited for, the 429 goes to the client at once.
    busy.fault(*[Fault(status=429, headers={"Retry-After": "5"}, message="slow down")] * 4)
    for _ in range(4):  # twice the failure threshold
        resp = post(gw, {"model": "test/rl"})
        assert resp.status_code == 429, resp.text
        assert resp.headers["retry-after"] == "5"
        assert "slow down" in resp.json()["error"]["message"]
    assert len(busy.requests) == 4  # every request reached the upstream: nothing was ejected
    assert status(gw, "test/rl") == {"busy": 0}
    resp = post(gw, {"model": "test/rl"})
    assert resp.status_code == 200, resp.text
    assert len(busy.requests) == 5


def test_retry_after_makes_the_endpoint_cool_for_routing_order(gw, fakes) -> None:
    fakes["busy"].fault(Fault(status=429, headers={"Retry-After": "30"}))
    preferred = {"model": "test/pair", "provider": {"order": ["busy", "spare"]}}
    resp = post(gw, preferred)
    assert resp.status_code == 200 and resp.json()["provider"] == "spare"
    assert attempts(gw, resp) == [("busy", 429), ("spare", 200)]
    # For the next 30 s busy is tried after spare (not skipped, not ejected): it is not asked while spare serves.
    resp = post(gw, preferred)
    assert resp.status_code == 200 and resp.json()["provider"] == "spare"
    assert attempts(gw, resp) == [("spare", 200)]
    assert len(fakes["busy"].requests) == 1
    assert status(gw, "test/pair") == {"busy": 0, "spare": 0}
    # When spare fails (its attempt and retry), busy is still tried.
    fakes["spare"].fault(Fault(status=503), Fault(status=503))
    resp = post(gw, preferred)
    assert resp.status_code == 200 and resp.json()["provider"] == "busy"
    assert attempts(gw, resp) == [("spare", 503), ("spare", 503), ("busy", 200)]


def test_connection_refused_ejects_every_model_of_the_connection(gw, fakes) -> None:
    assert post(gw, {"model": "test/g2"}).status_code == 200
    fakes["doomed"].stop()  # the upstream goes away: connection refused
    resp = post(gw, {"model": "test/g1"})  # the attempt and its retry
    assert resp.status_code == 502 and "Could not reach upstream gone" in resp.text
    assert status(gw, "test/g1") == {"gone": -10}
    assert status(gw, "test/g2") == {"gone": -10}  # never failed itself: its connection is ejected
    # g2 goes after a healthy fallback, which serves without g2 being tried.
    resp = post(gw, {"model": "test/g2", "models": ["test/fallback"]})
    assert resp.status_code == 200 and resp.json()["model"] == "test/fallback"
    assert attempts(gw, resp) == [("spare", 200)]
    # Alone, the ejected g2 is still attempted (panic routing): the client sees the real failure, not the breaker.
    resp = post(gw, {"model": "test/g2"})
    assert resp.status_code == 502
    assert resp.json()["error"]["message"].startswith("Could not reach upstream gone")
    assert attempts(gw, resp) == [("gone", None)]


def test_unauthorized_ejects_every_model_of_the_connection(gw, fakes) -> None:
    for _ in range(2):  # 401 is not retried: one attempt per request
        resp = post(gw, {"model": "test/k1"})
        assert resp.status_code == 502 and "HTTP 401" in resp.text
    assert status(gw, "test/k1") == {"badkey": -10}
    assert status(gw, "test/k2") == {"badkey": -10}
    resp = post(gw, {"model": "test/k2", "models": ["test/fallback"]})
    assert resp.status_code == 200 and resp.json()["model"] == "test/fallback"
    assert [r.headers["Authorization"] for r in fakes["spare"].requests] == ["Bearer sk-wrong"] * 2 + [
        "Bearer sk-spare"]
    # Alone, the ejected k2 is still attempted (panic routing) and the client sees what the upstream said.
    resp = post(gw, {"model": "test/k2"})
    assert resp.status_code == 502
    message = resp.json()["error"]["message"]
    assert "refused the gateway's credentials (HTTP 401)" in message and "Incorrect API key" in message
    assert attempts(gw, resp) == [("badkey", 401)]


def test_a_response_timeout_ejects_only_its_model(gw, fakes) -> None:
    # Decided: a timeout waiting for the response once connected is the endpoint's (a slow or stuck model), unlike
    # a connect failure.
    fakes["slow"].fault(Fault(delay=1.0), Fault(delay=1.0))
    resp = post(gw, {"model": "test/s1"})
    assert resp.status_code == 408, resp.text
    assert status(gw, "test/s1") == {"slow": -10}
    assert status(gw, "test/s2") == {"slow": 0}
    assert post(gw, {"model": "test/s2"}).status_code == 200


def test_every_candidate_ejected_is_still_attempted_in_health_order(gw, fakes) -> None:
    fakes["pa"].fault(*[Fault(status=500, message="pa exploded")] * 3)
    fakes["pb"].fault(*[Fault(status=502, message="pb exploded")] * 3)
    assert post(gw, {"model": "test/both", "provider": {"only": ["pa"]}}).status_code == 502
    gw.fake_clock.advance(0.05)
    assert post(gw, {"model": "test/both", "provider": {"only": ["pb"]}}).status_code == 502
    assert status(gw, "test/both") == {"pa": -10, "pb": -10}

    started, clock_started = time.monotonic(), gw.fake_clock.now()
    resp = post(gw, {"model": "test/both"})
    # No waiting on the breakers: both still cooling.
    assert time.monotonic() - started < COOLDOWN - 0.2 and gw.fake_clock.now() == clock_started
    assert resp.status_code == 502
    message = resp.json()["error"]["message"]
    assert message.startswith("Upstream pb failed (HTTP 502)") and "pb exploded" in message  # the last attempt
    assert "circuit breaker" not in message
    # Ejected longest ago first; one attempt each (no retry on an ejected endpoint), then the error.
    assert attempts(gw, resp) == [("pa", 500), ("pb", 502)]
    assert (len(fakes["pa"].requests), len(fakes["pb"].requests)) == (3, 3)

    # Panic attempts neither extend nor cut the cool-down: once it is over, a probe closes each breaker.
    gw.fake_clock.advance(COOLDOWN)
    for name in ("pa", "pb"):
        resp = post(gw, {"model": "test/both", "provider": {"only": [name]}})
        assert resp.status_code == 200, resp.text
    assert status(gw, "test/both") == {"pa": 0, "pb": 0}


def test_a_panic_attempt_that_succeeds_serves_the_request(gw, fakes) -> None:
    fakes["acct"].fault(Fault(status=500), Fault(status=500))
    assert post(gw, {"model": "test/gpt-y"}).status_code == 502
    assert status(gw, "test/gpt-y") == {"acct": -10}
    resp = post(gw, {"model": "test/gpt-y"})  # ejected, the only candidate, and the upstream has recovered
    assert resp.status_code == 200, resp.text
    assert attempts(gw, resp) == [("acct", 200)]


def test_which_transport_errors_are_the_connections() -> None:
    import aiohttp

    from crossroads.providers.transport import reached_nothing

    for exc in (aiohttp.ServerDisconnectedError(), aiohttp.ClientOSError(104, "reset"),
                aiohttp.ConnectionTimeoutError("connect timeout"), aiohttp.InvalidURL("x")):
        assert reached_nothing(exc), exc
    # Connected, then no answer in time, or an answer that broke off: the endpoint's.
    for exc in (TimeoutError(), aiohttp.SocketTimeoutError("read timeout"), aiohttp.ClientPayloadError("cut")):
        assert not reached_nothing(exc), exc
