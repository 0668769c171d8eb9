"""The routing tests' fake fleet: one fake OpenAI-compatible upstream per name a module lists in `FAKES`, started once
for the module and reset before each test, and the connection entry pointing at one of them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openai_fake import FakeOpenAI


@pytest.fixture(scope="module")
def fakes(request: pytest.FixtureRequest) -> Iterator[dict[str, FakeOpenAI]]:
    servers = {name: FakeOpenAI(api_key=f"sk-{name}").start() for name in request.module.FAKES}
    yield servers
    for server in servers.values():
        if server._thread is not None and server._thread.is_alive():  # a test may have stopped one itself
            server.stop()


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "fakes" in request.fixturenames:
        for fake in request.getfixturevalue("fakes").values():
            fake.reset()


def connection(name: str, fake: FakeOpenAI, models: list[dict], **extra) -> dict:
    return {"name": name, "type": "openai", "base_url": fake.base_url + "/v1", "api_key": fake.api_key,
            "timeout": 5, "models": models, **extra}
