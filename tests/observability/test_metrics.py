"""GET /metrics: what real requests through a real gateway count (read with prometheus_client's own text parser), who
may scrape it, and the sum over several worker processes."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from crossroads.config import MetricsConfig
from crossroads.observability.metrics import (
    attempt_outcome,
    forget_dead_workers,
    is_loopback,
    scrape_refusal,
    status_class,
)
from tests.conftest import MASTER_KEY, GatewayProcess, GatewayServer, free_port
from tests.fakes.base import Fault, Reply
from tests.fakes.openai_fake import FakeOpenAI

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]
PRICE = {"prompt": 1.0, "completion": 2.0}
TOKEN = "metrics-token-" + "5" * 24

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeOpenAI]]:
    servers = {name: FakeOpenAI(api_key=f"sk-{name}").start() for name in ("alpha", "beta")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(autouse=True)
def _clean(fakes: dict[str, FakeOpenAI]) -> None:
    for fake in fakes.values():
        fake.reset()


def metrics_config(fakes: dict[str, FakeOpenAI], data_dir: Path, **metrics: object) -> dict:
    def connection(name: str, models: list[tuple[str, str]]) -> dict:
        fake = fakes[name]
        return {"name": name, "type": "openai", "base_url": fake.base_url + "/v1", "api_key": fake.api_key,
                "timeout": 5, "models": [{"id": i, "upstream": u, "pricing": PRICE} for i, u in models]}

    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir),
                   "keepalive_interval": 0.3, "metrics": metrics},
        # One retry, quickly; breakers that never open (the tests' injected failures must not eject anything).
        "routing": {"retries": 1, "max_retry_wait": 1, "breaker": {"failure_threshold": 1000000}},
        "providers": [connection("alpha", [("test/solo", "solo")]),
                      connection("beta", [("test/second", "second")])],
    }


@pytest.fixture(scope="module")
def gw(fakes: dict[str, FakeOpenAI], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("metrics")
    proc = GatewayServer(metrics_config(fakes, workdir / "data"), workdir).start()
    yield proc
    proc.stop()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    resp = httpx.get(url + "/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series' value (0 when it does not exist yet: a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample_name, labels) in samples if sample_name == name]


def chat(gw: GatewayProcess, body: dict, key: str = MASTER_KEY) -> httpx.Response:
    return httpx.post(gw.url + CHAT, json={"messages": HELLO, **body}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})


class Delta:
    """What one test's requests added: each value read after, minus before."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.before = scrape(url)
        self.after: Samples = {}

    def read(self) -> Delta:
        self.after = scrape(self.url)
        return self

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


def requests_of(delta: Delta, model: str, connection: str, klass: str) -> float:
    return delta("crossroads_requests_total", endpoint=CHAT, model=model, connection=connection, status_class=klass)


# -- what requests count -----------------------------------------------------------------------------------------
def test_success_counts_request_tokens_cost_and_attempt(gw: GatewayProcess, fakes) -> None:
    delta = Delta(gw.url)
    fakes["alpha"].reply(Reply(prompt_tokens=20, completion_tokens=10, reasoning_tokens=4, cached_tokens=6))
    resp = chat(gw, {"model": "test/solo"})
    assert resp.status_code == 200, resp.text
    delta.read()
    assert requests_of(delta, "test/solo", "alpha", "2xx") == 1
    assert delta("crossroads_request_duration_seconds_count", endpoint=CHAT, status_class="2xx") == 1
    assert delta("crossroads_request_duration_seconds_sum", endpoint=CHAT, status_class="2xx") > 0
    tokens = {kind: delta("crossroads_tokens_total", model="test/solo", connection="alpha", kind=kind)
              for kind in ("prompt", "completion", "reasoning", "cached")}
    assert tokens == {"prompt": 20, "completion": 10, "reasoning": 4, "cached": 6}
    cost = delta("crossroads_cost_usd_total", model="test/solo", connection="alpha")
    assert cost == pytest.approx(resp.json()["usage"]["cost"]) and cost > 0
    assert delta("crossroads_upstream_attempts_total", connection="alpha", outcome="ok") == 1
    assert delta("crossroads_time_to_first_token_seconds_count", endpoint=CHAT, model="test/solo") == 0  # not streamed
    assert value(delta.after, "crossroads_breaker_state", connection="alpha", model="test/solo") == 0
    assert value(delta.after, "crossroads_in_flight_requests") == 1  # the scrape itself


def test_upstream_500_retried_then_fallen_back(gw: GatewayProcess, fakes) -> None:
    delta = Delta(gw.url)
    fakes["alpha"].fault(Fault(status=500), Fault(status=500))
    resp = chat(gw, {"model": "test/solo", "models": ["test/second"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "test/second"
    delta.read()
    assert delta("crossroads_upstream_attempts_total", connection="alpha", outcome="http_5xx") == 2
    assert delta("crossroads_upstream_attempts_total", connection="beta", outcome="ok") == 1
    assert delta("crossroads_retries_total", connection="alpha") == 1
    assert delta("crossroads_fallbacks_total") == 1
    # Counted under what served it, once.
    assert requests_of(delta, "test/second", "beta", "2xx") == 1
    assert requests_of(delta, "test/solo", "alpha", "2xx") == 0


def test_upstream_failure_reaches_the_client_as_5xx(gw: GatewayProcess, fakes) -> None:
    delta = Delta(gw.url)
    fakes["beta"].fault(Fault(status=429), Fault(status=500))
    resp = chat(gw, {"model": "test/second"})
    assert resp.status_code == 502, resp.text
    delta.read()
    assert requests_of(delta, "test/second", "beta", "5xx") == 1
    assert delta("crossroads_request_duration_seconds_count", endpoint=CHAT, status_class="5xx") == 1
    assert delta("crossroads_upstream_attempts_total", connection="beta", outcome="http_429") == 1
    assert delta("crossroads_upstream_attempts_total", connection="beta", outcome="http_5xx") == 1
    assert delta("crossroads_retries_total", connection="beta") == 1
    assert delta("crossroads_fallbacks_total") == 0
    # Upstream 429s are not the gateway's own denials.
    assert delta("crossroads_denials_total", reason="rate_limit") == 0


def test_key_rate_limit_denial(gw: GatewayProcess, fakes) -> None:
    created = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": "metrics-rpm", "rpm": 1})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    delta = Delta(gw.url)
    assert chat(gw, {"model": "test/solo"}, key).status_code == 200
    refused = chat(gw, {"model": "test/solo"}, key)
    assert refused.status_code == 429, refused.text
    delta.read()
    assert delta("crossroads_denials_total", reason="rate_limit") == 1
    assert delta("crossroads_denials_total", reason="auth") == 0
    # Refused before any upstream attempt: no connection, and nothing sent upstream.
    assert requests_of(delta, "test/solo", "", "4xx") == 1
    assert requests_of(delta, "test/solo", "alpha", "2xx") == 1
    assert delta("crossroads_upstream_attempts_total", connection="alpha", outcome="ok") == 1
    assert len(fakes["alpha"].requests) == 1


def test_auth_failure_is_a_denial(gw: GatewayProcess) -> None:
    delta = Delta(gw.url)
    assert chat(gw, {"model": "test/solo"}, "sk-cr-v1-" + "0" * 40).status_code == 401
    delta.read()
    assert delta("crossroads_denials_total", reason="auth") == 1
    assert requests_of(delta, "", "", "4xx") == 1


def test_stream_observes_time_to_first_token(gw: GatewayProcess, fakes) -> None:
    delta = Delta(gw.url)
    with httpx.stream("POST", gw.url + CHAT, headers=AUTH, timeout=20,
                      json={"model": "test/solo", "stream": True, "messages": HELLO}) as resp:
        assert resp.status_code == 200
        assert resp.read().decode().rstrip().endswith("data: [DONE]")
    delta.read()
    labels = {"endpoint": CHAT, "model": "test/solo"}
    assert delta("crossroads_time_to_first_token_seconds_count", **labels) == 1
    assert delta("crossroads_time_to_first_token_seconds_bucket", le="+Inf", **labels) == 1
    assert 0 < delta("crossroads_time_to_first_token_seconds_sum", **labels) < 5
    assert requests_of(delta, "test/solo", "alpha", "2xx") == 1


def test_cancelled_stream_counts_as_499(gw: GatewayProcess, fakes) -> None:
    delta = Delta(gw.url)
    fakes["alpha"].reply(Reply(text=" ".join(f"word{i}" for i in range(60))))
    fakes["alpha"].fault(Fault(chunk_delay=0.05))
    with httpx.stream("POST", gw.url + CHAT, headers=AUTH, timeout=20,
                      json={"model": "test/solo", "stream": True, "messages": HELLO}) as resp:
        assert resp.status_code == 200
        seen = 0
        for line in resp.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == 3:
                    during = scrape(gw.url)
                if seen == 6:
                    break
    # While the stream was open it was in flight, beside the scrape.
    assert value(during, "crossroads_in_flight_requests") == 2
    assert value(during, "crossroads_open_streams") - value(delta.before, "crossroads_open_streams") == 1
    # The gateway notices the disconnect, cancels the request, and counts it.
    deadline = time.monotonic() + 5
    while requests_of(delta.read(), "test/solo", "alpha", "499") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests_of(delta, "test/solo", "alpha", "499") == 1
    assert requests_of(delta, "test/solo", "alpha", "2xx") == 0
    assert delta("crossroads_request_duration_seconds_count", endpoint=CHAT, status_class="499") == 1
    assert delta("crossroads_time_to_first_token_seconds_count", endpoint=CHAT, model="test/solo") == 1
    assert delta("crossroads_tokens_total", model="test/solo", connection="alpha", kind="completion") > 0
    assert value(delta.after, "crossroads_in_flight_requests") == 1
    assert delta("crossroads_open_streams") == 0


def test_stream_that_fails_after_data_counts_as_its_error(gw: GatewayProcess, fakes) -> None:
    delta = Delta(gw.url)
    fakes["alpha"].reply(Reply(text="one two three four five six"))
    fakes["alpha"].fault(Fault(error_event_after=3))
    with httpx.stream("POST", gw.url + CHAT, headers=AUTH, timeout=20,
                      json={"model": "test/solo", "stream": True, "messages": HELLO}) as resp:
        assert resp.status_code == 200  # sent before the upstream failed
        assert '"finish_reason":"error"' in resp.read().decode().replace(" ", "")
    delta.read()
    assert requests_of(delta, "test/solo", "alpha", "5xx") == 1
    assert requests_of(delta, "test/solo", "alpha", "2xx") == 0


def test_unknown_model_ids_collapse_to_one_label(gw: GatewayProcess) -> None:
    delta = Delta(gw.url)
    for upstream in ("made-up-one", "made-up-two"):  # ad hoc "<connection>/<upstream model>": any id goes
        assert chat(gw, {"model": f"alpha/{upstream}"}).status_code == 200
    assert chat(gw, {"model": "no-such/model"}).status_code == 404
    delta.read()
    assert requests_of(delta, "other", "alpha", "2xx") == 2
    assert requests_of(delta, "", "", "4xx") == 1  # not found: never routed
    assert delta("crossroads_tokens_total", model="other", connection="alpha", kind="prompt") > 0
    models = {labels.get("model") for labels in series(delta.after, "crossroads_requests_total")}
    assert models <= {"", "other", "test/solo", "test/second"}, models


def test_loopback_rule_refuses_other_addresses(gw: GatewayProcess) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    # The gateway listens on 127.0.0.1; a connection from another local address arrives with that address.
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10) as client:
        refused = client.get(gw.url + "/metrics")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == 403
        assert client.get(gw.url + "/health").status_code == 200  # the address itself works
    assert httpx.get(gw.url + "/metrics", timeout=10).status_code == 200


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (the one its default route uses), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, only a route is chosen
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# -- who may scrape --------------------------------------------------------------------------------------------------
def test_token_guards_metrics(fakes, tmp_path: Path) -> None:
    gw = GatewayServer(metrics_config(fakes, tmp_path / "data", token=TOKEN), tmp_path).start()
    try:
        # Loopback is not enough once a token is set.
        for headers in ({}, {"Authorization": "Bearer wrong-" + TOKEN}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            refused = httpx.get(gw.url + "/metrics", headers=headers, timeout=10)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] == 401
            assert TOKEN not in refused.text and refused.headers["www-authenticate"].startswith("Bearer")
        samples = scrape(gw.url, {"Authorization": f"Bearer {TOKEN}"})
        # The refused scrapes were counted like any refused request.
        assert value(samples, "crossroads_denials_total", reason="auth") == 4
        assert value(samples, "crossroads_requests_total", endpoint="/metrics", model="", connection="",
                     status_class="4xx") == 4
    finally:
        gw.stop()
    assert TOKEN not in gw.log()


def test_metrics_port_serves_metrics_and_the_main_port_does_not(fakes, tmp_path: Path) -> None:
    port = free_port()
    gw = GatewayServer(metrics_config(fakes, tmp_path / "data", metrics_port=port), tmp_path).start()
    try:
        assert chat(gw, {"model": "test/solo"}).status_code == 200
        assert httpx.get(gw.url + "/metrics", timeout=10).status_code == 404
        metrics_url = f"http://127.0.0.1:{port}"
        samples = scrape(metrics_url)
        assert value(samples, "crossroads_requests_total", endpoint=CHAT, model="test/solo", connection="alpha",
                     status_class="2xx") == 1
        assert value(samples, "crossroads_in_flight_requests") == 0  # this scrape is not a gateway request
        assert httpx.get(metrics_url + "/other", timeout=10).status_code == 404
        assert httpx.post(metrics_url + "/metrics", timeout=10).status_code == 405
        # OpenMetrics for a scraper that asks for it.
        open_metrics = httpx.get(metrics_url + "/metrics", headers={"Accept": "application/openmetrics-text"})
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.rstrip().endswith("# EOF")
    finally:
        gw.stop()
    # Its listener is closed with the gateway.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_disabled_metrics_are_not_served(fakes, tmp_path: Path) -> None:
    gw = GatewayServer(metrics_config(fakes, tmp_path / "data", enabled=False), tmp_path).start()
    try:
        assert chat(gw, {"model": "test/solo"}).status_code == 200
        assert httpx.get(gw.url + "/metrics", timeout=10).status_code == 404
    finally:
        gw.stop()


# -- several workers ---------------------------------------------------------------------------------------------------
def chat_requests_by_worker(directory: Path) -> dict[int, float]:
    """Chat requests counted by each worker process, read from its own value file (in `directory` or an instance's
    directory under it)."""
    counted: dict[int, float] = {}
    for path in glob.glob(str(directory / "**" / "counter_*.db"), recursive=True):
        pid = int(Path(path).stem.rpartition("_")[2])
        counted[pid] = sum(sample.value for family in MultiProcessCollector.merge([path])
                           for sample in family.samples
                           if sample.name == "crossroads_requests_total" and sample.labels["endpoint"] == CHAT)
    return counted


def test_workers_report_their_sum(fakes, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    base = data_dir / "metrics-multiproc"
    ended = base / "999999"  # an instance that has ended: its lock is free
    ended.mkdir(parents=True)
    (ended / ".owner").write_bytes(b"")
    (ended / "counter_7.db").write_bytes(b"left by an earlier run")
    (base / "counter_1.db").write_bytes(b"left by an earlier version")  # wiped at start: counts start at zero
    # On a metrics port, which every worker listens on (SO_REUSEPORT): a worker that could not would not start.
    port = free_port()
    gw = GatewayProcess(metrics_config(fakes, data_dir, metrics_port=port), tmp_path, args=["--workers", "2"]).start()
    try:
        assert gw.proc is not None
        assert sorted(path.name for path in base.iterdir()) == [str(gw.proc.pid)]  # this instance's own
        directory = base / str(gw.proc.pid)
        sent = 0
        # New connections each time; go on until both workers have served some (the kernel picks who accepts).
        while sent < 200:
            assert chat(gw, {"model": "test/solo"}).status_code == 200
            sent += 1
            by_worker = chat_requests_by_worker(directory)
            if sent >= 10 and len([n for n in by_worker.values() if n > 0]) >= 2:
                break
        # A worker counts its requests' records in batches, within BATCH_EVERY of each answer.
        deadline = time.monotonic() + 5
        while sum(chat_requests_by_worker(directory).values()) < sent and time.monotonic() < deadline:
            time.sleep(0.02)
        by_worker = chat_requests_by_worker(directory)
        assert len([n for n in by_worker.values() if n > 0]) == 2, by_worker
        assert sum(by_worker.values()) == sent
        for _ in range(6):  # whichever worker answers the scrape
            samples = scrape(f"http://127.0.0.1:{port}")
            assert value(samples, "crossroads_requests_total", endpoint=CHAT, model="test/solo", connection="alpha",
                         status_class="2xx") == sent
            assert value(samples, "crossroads_tokens_total", model="test/solo", connection="alpha",
                         kind="prompt") == sent * Reply().prompt_tokens
            assert value(samples, "crossroads_request_duration_seconds_count", endpoint=CHAT,
                         status_class="2xx") == sent
            # Gauges are merged, not listed per process.
            breakers = sorted(series(samples, "crossroads_breaker_state"), key=lambda labels: labels["connection"])
            assert breakers == [{"connection": "alpha", "model": "test/solo"},
                                {"connection": "beta", "model": "test/second"}]
            assert len(series(samples, "crossroads_in_flight_requests")) == 1
    finally:
        assert gw.stop() == 0
    # A stopped worker takes its gauges out of the sum; its counts stay.
    assert not glob.glob(str(directory / "gauge_live*.db"))
    assert sum(chat_requests_by_worker(directory).values()) == sent


def test_instances_sharing_a_data_dir_keep_their_own_metrics(fakes, tmp_path: Path) -> None:
    # Two instances on one host with one data_dir (each --workers 2; a database each, as two instances on one
    # database need a shared store): each /metrics counts its own requests, and one starting again (its counts from
    # zero) leaves the other's values alone.
    data_dir = tmp_path / "data"
    base = data_dir / "metrics-multiproc"

    def start(name: str) -> GatewayProcess:
        database = f"sqlite:///{tmp_path / name / 'crossroads.db'}"
        return GatewayProcess(metrics_config(fakes, data_dir), tmp_path / name, args=["--workers", "2"],
                              env={"CROSSROADS_DATABASE_URL": database}).start()

    def counted(gw: GatewayProcess, expected: int) -> float:
        deadline = time.monotonic() + 5  # records are counted in batches, within BATCH_EVERY of each answer
        while True:
            total = value(scrape(gw.url), "crossroads_requests_total", endpoint=CHAT, model="test/solo",
                          connection="alpha", status_class="2xx")
            if total >= expected or time.monotonic() > deadline:
                return total
            time.sleep(0.05)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start("a")
    try:
        second = start("b")
    except BaseException:  # the first one must not outlive the test
        first.stop()
        raise
    try:
        for gw, requests in ((first, 3), (second, 5)):
            for _ in range(requests):
                assert chat(gw, {"model": "test/solo"}).status_code == 200
        assert counted(first, 3) == 3 and counted(second, 5) == 5
        assert first.proc is not None and second.proc is not None
        assert sorted(path.name for path in base.iterdir()) == sorted([str(first.proc.pid), str(second.proc.pid)])
        assert first.stop() == 0
        first = start("a")  # again: from zero, in a directory of its own; the ended one's is removed
        assert chat(first, {"model": "test/solo"}).status_code == 200
        assert counted(first, 1) == 1 and counted(second, 5) == 5
        assert first.proc is not None
        assert sorted(path.name for path in base.iterdir()) == sorted([str(first.proc.pid), str(second.proc.pid)])
    finally:
        first.stop()
        assert second.stop() == 0


# -- the rules themselves --------------------------------------------------------------------------------------------
def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 201, 304, 400, 401, 429, 499, 0, 500, 503)] == [
        "2xx", "2xx", "3xx", "4xx", "4xx", "4xx", "499", "499", "5xx", "5xx"]


def test_attempt_outcomes() -> None:
    def outcome(status: int | None, error: str | None = None) -> str:
        return attempt_outcome({"provider_name": "c", "model_permaslug": "m", "status": status, "error": error})

    assert outcome(200) == "ok"
    assert outcome(200, "Upstream c sent a response the gateway cannot read") == "bad_response"
    assert outcome(None, "Could not reach upstream c") == "transport_error"
    assert (outcome(429), outcome(400), outcome(401), outcome(500), outcome(503)) == (
        "http_429", "http_4xx", "http_4xx", "http_5xx", "http_5xx")


def test_loopback_addresses() -> None:
    assert all(is_loopback((host, 5000)) for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"))
    assert not any(is_loopback(client) for client in (("10.0.0.1", 1), ("::ffff:10.0.0.1", 1), ("2001:db8::1", 1),
                                                      ("example.com", 1), None, ()))


def test_scrape_rules() -> None:
    open_config, token_config = MetricsConfig(), MetricsConfig(token=TOKEN)
    assert scrape_refusal(open_config, None, ("127.0.0.1", 1), on_metrics_port=False) is None
    assert scrape_refusal(open_config, None, ("10.1.2.3", 1), on_metrics_port=False).status == 403
    assert scrape_refusal(open_config, None, None, on_metrics_port=True) is None
    good = f"Bearer {TOKEN}".encode()
    assert scrape_refusal(token_config, good, ("10.1.2.3", 1), on_metrics_port=False) is None
    assert scrape_refusal(token_config, b"bearer " + TOKEN.encode(), None, on_metrics_port=True) is None
    for presented in (None, b"", b"Bearer", TOKEN.encode(), good[:-1], good + b"0", b"Basic " + TOKEN.encode()):
        refusal = scrape_refusal(token_config, presented, ("127.0.0.1", 1), on_metrics_port=False)
        assert refusal is not None and refusal.status == 401 and TOKEN not in refusal.message
        assert scrape_refusal(token_config, presented, None, on_metrics_port=True) is not None


def test_gauges_of_dead_workers_are_dropped(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for pid in (gone.pid, os.getpid()):
        for name in (f"gauge_livesum_{pid}.db", f"gauge_livemax_{pid}.db", f"counter_{pid}.db"):
            (tmp_path / name).write_bytes(b"")
    forget_dead_workers(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{gone.pid}.db", f"counter_{os.getpid()}.db", f"gauge_livemax_{os.getpid()}.db",
         f"gauge_livesum_{os.getpid()}.db"])


def test_tallies_count_as_prometheus_client_would() -> None:
    """Counts kept in tallies and handed over later expose exactly what direct observations would (bucket edges
    included: a value equal to a bound falls in that bound's bucket)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from crossroads.observability.metrics import DURATION_BUCKETS, _CounterTally, _HistogramTally

    values = [0.0, 0.005, 0.0051, 0.1, 0.25, 0.2500001, 299.0, 300.0, 301.0, 1e9, *(i / 37 for i in range(100))]
    exposed = []
    for tallied in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("h", "h", ("a",), buckets=DURATION_BUCKETS, registry=registry).labels("x")
        counter = Counter("c", "c", ("a",), registry=registry).labels("x")
        h_target = _HistogramTally(histogram) if tallied else histogram
        c_target = _CounterTally(counter) if tallied else counter
        for value in values:
            h_target.observe(value)
            c_target.inc(value)
        if tallied:
            h_target.apply()
            c_target.apply()
            h_target.apply()  # applying twice adds nothing
        exposed.append(generate_latest(registry))
    assert exposed[0] == exposed[1]
