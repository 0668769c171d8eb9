"""`crossroads serve` as a real process: start-up, authentication, shutdown, workers, master key, config errors,
secrets. Fake upstreams are real HTTP servers on loopback."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from tests.conftest import MASTER_KEY, GatewayProcess, free_port
from tests.fakes.base import Fault, Reply
from tests.fakes.openai_fake import FakeOpenAI

PROVIDER_ENV = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENROUTER_API_KEY", "GROQ_API_KEY",
    "DEEPSEEK_API_KEY", "MISTRAL_API_KEY", "TOGETHER_API_KEY", "OLLAMA_BASE_URL",
)
STREAM_TEXT = "".join(f"piece{i:02d} " for i in range(10))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # GatewayProcess passes os.environ on to the gateway: keep the machine's keys and settings out of it.
    for name in (*PROVIDER_ENV, "CROSSROADS_CONFIG", "CROSSROADS_MASTER_KEY", "CROSSROADS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def small_config(fake: FakeOpenAI, data_dir: Path, **server: object) -> dict:
    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir), **server},
        "providers": [{"name": "oai", "type": "openai", "base_url": fake.base_url + "/v1", "api_key": fake.api_key,
                       "timeout": 20, "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini"}]}],
    }


def auth(key: str = MASTER_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_body(stream: bool = False) -> dict:
    return {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": stream}


def refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=0.5)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


class StreamReader(threading.Thread):
    """Reads one streaming chat completion in the background; `first` is set once the first content arrives."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.first = threading.Event()
        self.body = b""
        self.status: int | None = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + "/api/v1/chat/completions", json=chat_body(stream=True),
                              headers=auth(), timeout=30) as resp:
                self.status = resp.status_code
                for chunk in resp.iter_bytes():
                    self.body += chunk
                    if b"piece" in self.body:
                        self.first.set()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.first.set()

    def text(self) -> str:
        out = []
        for line in self.body.decode().splitlines():
            if line.startswith("data: {"):
                for choice in orjson.loads(line[6:]).get("choices", []):
                    out.append(choice.get("delta", {}).get("content") or "")
        return "".join(out)


# -- start-up ---------------------------------------------------------------------------------------------------------

@pytest.mark.alone  # a start-up bound
def test_ready_within_two_seconds(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gw = GatewayProcess(small_config(fake_openai, tmp_path / "data"), tmp_path)
    started = time.monotonic()
    gw.start(wait=False)
    try:
        gw.wait_ready(timeout=10)
        elapsed = time.monotonic() - started
        # Two seconds on a quiet machine; the suite runs on two workers, and the other one's load can double a
        # process's start-up, so the bound here is coarse (start-up is not a speed target of the tests).
        assert elapsed < 6.0, f"ready after {elapsed:.2f} s"
        resp = httpx.post(gw.url + "/api/v1/chat/completions", json=chat_body(), headers=auth(), timeout=10)
        assert resp.status_code == 200, resp.text
    finally:
        assert gw.stop() == 0


def test_host_and_port_flags_override_config(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config_port, flag_port = free_port(), free_port()
    # The configured host is not an address of this machine: binding it would fail, so the flag must win.
    config = small_config(fake_openai, tmp_path / "data", host="192.0.2.1", port=config_port)
    gw = GatewayProcess(config, tmp_path, args=["--host", "127.0.0.1", "--port", str(flag_port)])
    gw.port = flag_port
    gw.start()
    try:
        assert httpx.get(gw.url + "/health", timeout=5).status_code == 200
        assert refused(f"http://127.0.0.1:{config_port}")
        assert f"http://127.0.0.1:{flag_port}" in gw.log()
    finally:
        assert gw.stop() == 0


# -- authentication ----------------------------------------------------------------------------------------------------

def test_health_needs_no_key(gateway: GatewayProcess) -> None:
    resp = httpx.get(gateway.url + "/health", timeout=5)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/api/v1/models", "/v1/models", "/api/v1/providers"])
def test_missing_key_is_401_in_error_shape(gateway: GatewayProcess, path: str) -> None:
    resp = httpx.get(gateway.url + path, timeout=5)
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert error["code"] == 401
    assert isinstance(error["message"], str) and error["message"]


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer sk-or-v1-wrong"},
    {"x-api-key": "sk-or-v1-wrong"},
    {"Authorization": f"Bearer {MASTER_KEY}x"},
    {"Authorization": f"Basic {MASTER_KEY}"},
    {"Authorization": "Bearer"},
])
def test_wrong_key_is_401(gateway: GatewayProcess, headers: dict[str, str]) -> None:
    resp = httpx.get(gateway.url + "/api/v1/models", headers=headers, timeout=5)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == 401
    post = httpx.post(gateway.url + "/api/v1/chat/completions", json=chat_body(), headers=headers, timeout=5)
    assert post.status_code == 401


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {MASTER_KEY}"},
    {"authorization": f"bearer {MASTER_KEY}"},
    {"x-api-key": MASTER_KEY},
])
def test_bearer_and_x_api_key_both_work(gateway: GatewayProcess, fake_openai: FakeOpenAI,
                                        headers: dict[str, str]) -> None:
    resp = httpx.get(gateway.url + "/api/v1/models", headers=headers, timeout=5)
    assert resp.status_code == 200
    assert "openai/gpt-4o-mini" in {m["id"] for m in resp.json()["data"]}
    fake_openai.reply(Reply(text="authorized"))
    chat = httpx.post(gateway.url + "/v1/chat/completions", json=chat_body(), headers=headers, timeout=10)
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == "authorized"


# -- shutdown ---------------------------------------------------------------------------------------------------------

def test_sigterm_drains_in_flight_stream(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gw = GatewayProcess(small_config(fake_openai, tmp_path / "data", shutdown_grace=10), tmp_path).start()
    fake_openai.reply(Reply(text=STREAM_TEXT, chunks=10))
    fake_openai.fault(Fault(chunk_delay=0.2))
    reader = StreamReader(gw.url)
    reader.start()
    try:
        assert reader.first.wait(10) and reader.error is None, reader.error
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.5
        while not refused(gw.url):
            assert time.monotonic() < deadline, "still accepting new connections after SIGTERM"
            time.sleep(0.05)
        assert reader.finished_at is None, "the stream ended before new connections were refused"
        reader.join(15)
        assert reader.error is None, reader.error
        assert reader.status == 200
        assert reader.body.rstrip().endswith(b"data: [DONE]")
        assert reader.text() == STREAM_TEXT
        assert gw.proc.wait(10) == 0
    finally:
        gw.stop()
    assert "Traceback" not in gw.log()


def test_shutdown_grace_bounds_the_wait(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gw = GatewayProcess(small_config(fake_openai, tmp_path / "data", shutdown_grace=1), tmp_path).start()
    fake_openai.reply(Reply(text=STREAM_TEXT * 5, chunks=50))  # ~10 s at 0.2 s per event
    fake_openai.fault(Fault(chunk_delay=0.2))
    reader = StreamReader(gw.url)
    reader.start()
    try:
        assert reader.first.wait(10) and reader.error is None, reader.error
        assert gw.proc is not None
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(8)
        took = time.monotonic() - signalled
        assert took < 3.0, f"exited {took:.1f} s after SIGTERM with shutdown_grace 1"
        assert took > 0.8, "did not give the in-flight stream its grace period"
        assert code == 0
        reader.join(5)
        assert not reader.body.rstrip().endswith(b"data: [DONE]")
    finally:
        gw.stop()


def test_sigint_stops_cleanly(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gw = GatewayProcess(small_config(fake_openai, tmp_path / "data"), tmp_path).start()
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGINT)
    try:
        assert gw.proc.wait(10) == 0
    finally:
        gw.stop()
    log = gw.log()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log


# -- workers and the master key ------------------------------------------------------------------------------------------

def start_process_group(args: list[str], workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "crossroads", "serve", *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)


def test_two_workers_share_the_generated_master_key(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config = small_config(fake_openai, tmp_path / "data")
    del config["server"]["master_key"]
    gw = GatewayProcess(config, tmp_path, args=["--workers", "2"]).start()
    try:
        key = (tmp_path / "data" / "master_key").read_text().strip()
        assert key.startswith("sk-") and gw.log().count(key) == 1
        # New connections each time, so that both workers get to answer; every one must accept the same key.
        for _ in range(12):
            fake_openai.reply(Reply(text="from a worker"))
            resp = httpx.post(gw.url + "/api/v1/chat/completions", json=chat_body(), headers=auth(key), timeout=10)
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"] == "from a worker"
        assert httpx.get(gw.url + "/health", timeout=5).status_code == 200
        assert httpx.get(gw.url + "/api/v1/models", headers=auth(MASTER_KEY), timeout=5).status_code == 401
    finally:
        assert gw.stop() == 0
    assert "Traceback" not in gw.log()


def test_ctrl_c_with_workers_stops_the_whole_group(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group: supervisor and workers alike.
    gw = GatewayProcess(small_config(fake_openai, tmp_path / "data"), tmp_path)
    proc = start_process_group(["--config", str(gw.config_path), "--workers", "2"], tmp_path, gw.log_path)
    gw.proc = proc  # for wait_ready(); this test stops the process itself
    try:
        gw.wait_ready()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = gw.log()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log


def test_generated_master_key_is_printed_once_and_kept(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config = small_config(fake_openai, tmp_path / "data")
    del config["server"]["master_key"]
    first = GatewayProcess(config, tmp_path).start()
    try:
        key_file = tmp_path / "data" / "master_key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert len(key) >= 32
        assert first.log().count(key) == 1
        assert httpx.get(first.url + "/api/v1/models", headers=auth(key), timeout=5).status_code == 200
        assert httpx.get(first.url + "/api/v1/models", headers=auth(MASTER_KEY), timeout=5).status_code == 401
    finally:
        assert first.stop() == 0
    first_log = first.log()

    second = GatewayProcess(config, tmp_path).start()
    try:
        assert key_file.read_text().strip() == key
        assert key not in second.log()
        assert httpx.get(second.url + "/api/v1/models", headers={"x-api-key": key}, timeout=5).status_code == 200
    finally:
        assert second.stop() == 0
    assert key in first_log


def test_master_key_from_environment_is_not_printed(fake_openai: FakeOpenAI, tmp_path: Path,
                                                    clean_env: pytest.MonkeyPatch) -> None:
    config = small_config(fake_openai, tmp_path / "data")
    config["server"]["master_key"] = "${CROSSROADS_MASTER_KEY}"
    clean_env.setenv("CROSSROADS_MASTER_KEY", "sk-env-master-key-0123456789abcdef")
    gw = GatewayProcess(config, tmp_path).start()
    try:
        assert httpx.get(gw.url + "/api/v1/models", headers=auth("sk-env-master-key-0123456789abcdef"),
                         timeout=5).status_code == 200
    finally:
        assert gw.stop() == 0
    assert "sk-env-master-key-0123456789abcdef" not in gw.log()
    assert not (tmp_path / "data" / "master_key").exists()


# -- configuration errors ----------------------------------------------------------------------------------------------

def serve_with(tmp_path: Path, text: str | None, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSROADS_")}
    try:
        done = subprocess.run([sys.executable, "-m", "crossroads", "serve", "--config", str(path), *args],
                              capture_output=True, cwd=tmp_path, env=env, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the gateway started despite a bad configuration")
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace"), str(path)


GOOD = "  - {name: oai, type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k, models: [{id: a/b}]}\n"
BAD_CONFIGS = {
    "unknown-type": ("providers:\n  - {name: x, type: azure, base_url: 'http://h/v1'}\n",
                     "providers[0].type", "azure"),
    "missing-name": ("providers:\n  - {type: openai, base_url: 'http://h/v1'}\n", "providers[0].name", "required"),
    "duplicate-name": ("providers:\n" + GOOD + GOOD, "providers[1].name", "duplicate"),
    "port-not-int": ("server:\n  port: eighty\n", "server.port", "integer"),
    "bad-yaml": ("server:\n  port: 8080\nproviders:\n  - name: x\n   type: openai\n", "line 5", "YAML"),
    "unknown-key": ("provders:\n" + GOOD, "provders", "unknown key"),
    "non-http-base-url": ("providers:\n  - {name: x, type: openai, base_url: 'ftp://h/v1'}\n",
                          "providers[0].base_url", "http"),
    "negative-timeout": ("providers:\n  - {name: x, type: openai, base_url: 'http://h/v1', timeout: -5}\n",
                         "providers[0].timeout", "positive"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_stops_with_one_clear_message(tmp_path: Path, case: str) -> None:
    text, key, problem = BAD_CONFIGS[case]
    code, output, path = serve_with(tmp_path, text)
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert path in lines[0] and key in lines[0] and problem in lines[0], lines[0]


def test_nonexistent_config_file(tmp_path: Path) -> None:
    code, output, path = serve_with(tmp_path, None)
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and path in lines[0] and "No such file" in lines[0], output


# -- secrets -------------------------------------------------------------------------------------------------------------

def test_no_secret_in_logs_or_errors(tmp_path: Path) -> None:
    provider_key = "plain-provider-secret-9f8e7d6c5b4a"  # not shaped like an sk- key: must be removed by value
    fake = FakeOpenAI(api_key=provider_key).start()
    config = small_config(fake, tmp_path / "data")
    config["routing"] = {"retries": 0}  # each injected failure reaches the client
    gw = GatewayProcess(config, tmp_path, args=["--log-level", "debug"])
    try:
        gw.start()
        echo = ('{"error": {"message": "Incorrect API key provided: ' + provider_key + ' (Authorization: Bearer '
                + provider_key + ')", "type": "invalid_request_error"}}').encode()
        client_errors = []
        for status, stream in ((401, False), (500, False), (500, True), (401, True)):
            fake.fault(Fault(status=status, body=echo))
            resp = httpx.post(gw.url + "/api/v1/chat/completions", json=chat_body(stream=stream), headers=auth(),
                              timeout=10)
            assert resp.status_code >= 400 or b"error" in resp.content, resp.text
            client_errors.append(resp.text)
            assert fake.last.headers.get("Authorization") == f"Bearer {provider_key}"
            assert MASTER_KEY not in str(fake.last.headers) and MASTER_KEY not in fake.last.body.decode()
        # The provider key really was in the upstream's answer, so the test exercises the redaction.
        assert "Incorrect API key provided" in "".join(client_errors)
        for text in client_errors:
            assert provider_key not in text, text
            assert MASTER_KEY not in text, text
    finally:
        gw.stop()
        fake.stop()
    log = gw.log()
    assert provider_key not in log, log
    assert MASTER_KEY not in log, log


def serve_exit(config: dict, tmp_path: Path, args: list[str], env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "crossroads.yaml"
    path.write_text(yaml.safe_dump(config))
    environment = {k: v for k, v in os.environ.items() if k != "CROSSROADS_REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "crossroads", "serve", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path, env={**environment, **(env or {})})


def test_workers_refused_when_limits_could_not_hold(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    # A connection's rpm counted in each of 2 processes would allow twice the limit: refused without Redis.
    config = small_config(fake_openai, tmp_path / "data", port=free_port())
    config["providers"][0]["rpm"] = 100
    result = serve_exit(config, tmp_path, ["--workers", "2"])
    assert result.returncode == 2
    assert "CROSSROADS_REDIS_URL" in result.stderr and "connection oai" in result.stderr
    assert "Traceback" not in result.stderr
    # A key with a credit limit cannot be shared by processes at all.
    config["providers"][0]["rpm"] = None
    subprocess.run([sys.executable, "-m", "crossroads", "keys", "--config", str(tmp_path / "crossroads.yaml"),
                    "create", "--name", "capped", "--limit", "5"], check=True, capture_output=True, cwd=tmp_path)
    result = serve_exit(config, tmp_path, ["--workers", "2"])
    assert result.returncode == 2 and "credit limits" in result.stderr
