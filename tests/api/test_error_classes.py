"""Every gateway error status reaches users of the official `openrouter` SDK as its typed error class.

The SDK picks the class by HTTP status and validates the body against that class's model, which requires
`error.code` to be a number: a string there (as the gateway's own 429 once had) turns into a ResponseValidationError
instead, and the user never learns it was a rate limit.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import pytest
from openrouter import OpenRouter, errors

from tests.conftest import MASTER_KEY, GatewayServer, gateway_config
from tests.fakes.base import Fault

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
HELLO = [{"role": "user", "content": "Hi"}]
MODEL = "openai/gpt-4o-mini"


def new_key(gateway: GatewayServer, **policy) -> str:
    resp = httpx.post(gateway.url + "/api/v1/keys", headers=AUTH, json={"name": "sdk-errors", **policy})
    assert resp.status_code in (200, 201), resp.text
    return resp.json()["key"]


def send(gateway: GatewayServer, key: str = MASTER_KEY, **body) -> None:
    # No SDK retries (its default retries 5xx): the first answer is the one under test.
    with OpenRouter(api_key=key, server_url=gateway.url + "/api/v1", timeout_ms=20_000, retry_config=None) as sdk:
        sdk.chat.send(**{"model": MODEL, "messages": HELLO, **body})


def bad_request(gateway, fakes) -> None:
    send(gateway, model="oai/../../v1/files")


def unauthorized(gateway, fakes) -> None:
    send(gateway, key="sk-or-v1-" + "0" * 64)


def payment_required(gateway, fakes) -> None:
    send(gateway, key=new_key(gateway, limit=0.000001))


def forbidden(gateway, fakes) -> None:
    send(gateway, key=new_key(gateway, allowed_models=["anthropic/*"]))


def not_found(gateway, fakes) -> None:
    send(gateway, model="nobody/no-such-model")


def request_timeout(gateway, fakes) -> None:
    fakes["fake_openai"].fault(Fault(delay=3))  # the "slow" connection gives up after 1 s
    send(gateway, model="test/slow")


def payload_too_large(gateway, fakes) -> None:
    send(gateway, messages=[{"role": "user", "content": "x" * (3 * 1024 * 1024)}])


def too_many_requests(gateway, fakes) -> None:
    key = new_key(gateway, rpm=1)
    # Windows are whole clock minutes: if a minute turns between the first two, the third is refused.
    for _ in range(3):
        send(gateway, key=key)


def bad_gateway(gateway, fakes) -> None:
    fakes["fake_openai"].fault(Fault(status=500, message="upstream exploded"))
    send(gateway)


CASES: dict[int, tuple[Callable, type]] = {
    400: (bad_request, errors.BadRequestResponseError),
    401: (unauthorized, errors.UnauthorizedResponseError),
    402: (payment_required, errors.PaymentRequiredResponseError),
    403: (forbidden, errors.ForbiddenResponseError),
    404: (not_found, errors.NotFoundResponseError),
    408: (request_timeout, errors.RequestTimeoutResponseError),
    413: (payload_too_large, errors.PayloadTooLargeResponseError),
    429: (too_many_requests, errors.TooManyRequestsResponseError),
    502: (bad_gateway, errors.BadGatewayResponseError),
}


@pytest.mark.parametrize("status", list(CASES))
def test_sdk_gets_its_typed_error(gateway, fake_openai, status: int) -> None:
    trigger, error_class = CASES[status]
    with pytest.raises(errors.OpenRouterError) as raised:
        trigger(gateway, {"fake_openai": fake_openai})
    assert type(raised.value) is error_class, repr(raised.value)
    assert raised.value.status_code == status
    assert raised.value.data.error.code == status
    assert raised.value.data.error.message


def test_sdk_gets_its_typed_error_for_503(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path) -> None:
    # Rate limits whose shared store (Redis) is unreachable: refused with 503 rather than counted nowhere.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    gw = GatewayServer(gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path / "data"),
                        tmp_path, env={"CROSSROADS_REDIS_URL": f"redis://127.0.0.1:{closed}/0"}).start()
    try:
        key = new_key(gw, rpm=100)
        time.sleep(1.2)  # the key cache picks the new key up
        with pytest.raises(errors.OpenRouterError) as raised:
            send(gw, key=key)
    finally:
        gw.stop()
    assert type(raised.value) is errors.ServiceUnavailableResponseError, repr(raised.value)
    assert raised.value.data.error.code == 503


def test_rate_limit_error_code_is_the_status(gateway) -> None:
    key = new_key(gateway, rpm=1)
    first = httpx.post(gateway.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": MODEL, "messages": HELLO})
    assert first.status_code == 200
    refused = httpx.post(gateway.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                         json={"model": MODEL, "messages": HELLO})
    error = refused.json()["error"]
    assert refused.status_code == 429
    assert error["code"] == 429 and error["metadata"]["code"] == "resource_exhausted"
