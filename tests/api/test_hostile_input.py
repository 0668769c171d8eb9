"""The hostile inputs a probe of the running gateway answered with a 500, a 503 or a closed connection, one by one:
each now gets a 4xx in its endpoint's error shape and never reaches an upstream (tests/api/test_fuzz.py covers the rest
at random)."""

from __future__ import annotations

import socket

import httpx
import orjson
import pytest

from tests.api.test_fuzz import PATHS, error_shape_problem
from tests.conftest import MASTER_KEY

AUTH = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
MAX_DEPTH = 128  # crossroads.formats.json_input.MAX_DEPTH


def nested(levels: int) -> str:
    """A JSON object nested `levels` levels deep (itself included)."""
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


def body_for(endpoint: str, model: str, extra: str = "") -> bytes:
    """A valid request for `endpoint`, with `extra` (raw JSON members) spliced in."""
    main = {
        "chat": '"messages":[{"role":"user","content":"hi"}],"max_tokens":5',
        "messages": '"messages":[{"role":"user","content":"hi"}],"max_tokens":5',
        "count_tokens": '"messages":[{"role":"user","content":"hi"}]',
        "responses": '"input":"hi","max_output_tokens":16',
        "completions": '"prompt":"hi","max_tokens":5',
    }[endpoint]
    return f'{{"model":{orjson.dumps(model).decode()},{main}{"," + extra if extra else ""}}}'.encode()


def post(gateway, endpoint: str, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(gateway.url + PATHS[endpoint], content=body, headers={**AUTH, **(headers or {})}, timeout=15)


def assert_client_error(endpoint: str, resp: httpx.Response, status: int = 400) -> dict:
    assert resp.status_code == status, resp.text[:500]
    problem = error_shape_problem(endpoint, resp.status_code, resp.json())
    assert problem is None, problem
    return resp.json()["error"]


def untouched(*fakes) -> None:
    for fake in fakes:
        assert not fake.requests, f"{fake} was called"


@pytest.mark.parametrize("endpoint", list(PATHS))
@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 254, 300, 1000, 5000])
def test_nesting_is_bounded_at_parse_time(gateway, fake_openai, fake_anthropic, endpoint, levels) -> None:
    model = "anthropic/claude-sonnet-4" if endpoint in ("messages", "count_tokens") else "openai/gpt-4o-mini"
    resp = post(gateway, endpoint, body_for(endpoint, model, f'"metadata":{{"deep":{nested(levels)}}}'))
    error = assert_client_error(endpoint, resp)
    assert f"nested more than {MAX_DEPTH} levels" in error["message"]
    untouched(fake_openai, fake_anthropic)


@pytest.mark.parametrize("fake_name,model", [("fake_openai", "openai/gpt-4o-mini"),
                                             ("fake_anthropic", "anthropic/claude-sonnet-4"),
                                             ("fake_gemini", "google/gemini-2.5-flash")])
def test_deep_tool_schema_within_the_bound_is_served(gateway, request, fake_name, model) -> None:
    """A tool schema nested as deep as the bound allows reaches every provider type (converted where needed)."""
    fake = request.getfixturevalue(fake_name)
    levels = 50  # schema objects, two JSON levels each: ~105 levels with the body's own
    schema = '{"type":"object"}'
    for _ in range(levels):
        schema = f'{{"type":"object","properties":{{"x":{schema}}}}}'
    tool = f'"tools":[{{"type":"function","function":{{"name":"deep","parameters":{schema}}}}}]'
    resp = post(gateway, "chat", body_for("chat", model, tool))
    assert resp.status_code == 200, resp.text[:500]
    assert len(fake.requests) == 1


def test_deep_tools_and_deep_tool_arguments(gateway, fake_openai, fake_anthropic) -> None:
    resp = post(gateway, "chat", body_for("chat", "openai/gpt-4o-mini",
                                          f'"tools":[{{"type":"function","function":{{"name":"f","parameters":'
                                          f'{"[" * 1000 + "]" * 1000}}}}}]'))
    assert "nested more than" in assert_client_error("chat", resp)["message"]
    # Arguments are a string in Chat Completions; Anthropic takes them as an object inside the body.
    arguments = nested(300)
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "call_1", "type": "function",
                                 "function": {"name": "f", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    resp = httpx.post(gateway.url + PATHS["chat"], headers=AUTH, timeout=15, json={
        "model": "anthropic/claude-sonnet-4", "max_tokens": 5, "messages": messages})
    assert "a tool call's arguments is nested more than" in assert_client_error("chat", resp)["message"]
    untouched(fake_openai, fake_anthropic)


@pytest.mark.parametrize(("message", "field"), [
    ({"role": {}, "content": "hi"}, "messages[0].role"),
    ({"role": ["user"], "content": "hi"}, "messages[0].role"),
    ({"role": "user", "content": [{"type": "text", "text": 5}]}, "messages[0].content[0].text"),
    ({"role": "user", "content": [{"type": "text", "text": ["a"]}]}, "messages[0].content[0].text"),
    ({"role": "assistant", "content": "x", "tool_calls": ["call"]}, "messages[0].tool_calls[0]"),
    ({"role": "assistant", "content": "x", "tool_calls": [{"id": "c", "function": "f"}]},
     "messages[0].tool_calls[0].function"),
])
@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "google/gemini-2.5-flash"])
def test_wrong_shapes_in_messages_name_the_field(gateway, fake_openai, fake_anthropic, fake_gemini, message,
                                                 field, model) -> None:
    resp = httpx.post(gateway.url + PATHS["chat"], headers=AUTH, timeout=15,
                      json={"model": model, "max_tokens": 5, "messages": [message]})
    error = assert_client_error("chat", resp)
    assert f"'{field}'" in error["message"] and error["metadata"]["field"] == field
    untouched(fake_openai, fake_anthropic, fake_gemini)


@pytest.mark.parametrize("reasoning", [{"effort": {}}, {"effort": ["high"]}, {"max_tokens": "x"},
                                       {"enabled": "yes"}, {"exclude": 1}])
def test_wrong_reasoning_fields(gateway, fake_anthropic, reasoning) -> None:
    resp = httpx.post(gateway.url + PATHS["chat"], headers=AUTH, timeout=15, json={
        "model": "anthropic/claude-sonnet-4", "max_tokens": 5, "reasoning": reasoning,
        "messages": [{"role": "user", "content": "hi"}]})
    field = f"reasoning.{next(iter(reasoning))}"
    assert f"'{field}'" in assert_client_error("chat", resp)["message"]
    untouched(fake_anthropic)


@pytest.mark.parametrize("endpoint", list(PATHS))
@pytest.mark.parametrize("model", ["local/a\r\nX-Evil: 1", "openai/gpt-4o-mini\n", "local/a\x00b", "local/\x7f",
                                   "local/" + "x" * 251, "a" * 1_000_004])
def test_model_names_are_bounded_and_free_of_control_characters(gateway, fake_local, endpoint, model) -> None:
    resp = post(gateway, endpoint, body_for(endpoint, model))
    error = assert_client_error(endpoint, resp)
    assert ("control character" in error["message"]) or ("a model name has at most 256" in error["message"])
    assert "X-Evil" not in str(resp.headers) and "x" * 100 not in str(resp.headers)
    assert len(resp.content) < 2000  # the name is not echoed back either
    untouched(fake_local)


def test_a_model_name_of_256_characters_is_accepted(gateway, fake_local) -> None:
    model = "local/" + "m" * 250
    resp = post(gateway, "chat", body_for("chat", model))
    assert resp.status_code == 200, resp.text[:300]
    assert fake_local.requests[-1].json["model"] == "m" * 250


def test_models_entries_are_checked_too(gateway, fake_openai) -> None:
    resp = httpx.post(gateway.url + PATHS["chat"], headers=AUTH, timeout=15, json={
        "model": "openai/gpt-4o-mini", "models": ["openai/gpt-4o-mini", "local/a\nb"],
        "messages": [{"role": "user", "content": "hi"}]})
    assert "'models[1]'" in assert_client_error("chat", resp)["message"]
    untouched(fake_openai)


def test_control_characters_in_echoed_metadata_never_break_the_answer(gateway, fake_openai) -> None:
    """Metadata values are echoed as X-Crossroads-Metadata-* headers: control characters are dropped, not sent."""
    resp = httpx.post(gateway.url + PATHS["chat"], headers=AUTH, timeout=15, json={
        "model": "openai/gpt-4o-mini", "max_tokens": 5, "metadata": {"trace": "a\x00b\x1fc\r\nX-Evil: 1"},
        "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200
    assert resp.headers["x-crossroads-metadata-trace"] == "abcX-Evil: 1"
    assert "x-evil" not in resp.headers


@pytest.mark.parametrize("vendor", ["nope", "x" * 2000])
def test_an_unknown_vendor_pin_is_a_client_error(gateway, fake_openai, vendor) -> None:
    resp = post(gateway, "chat", body_for("chat", "openai/gpt-4o-mini"), headers={"vendor": vendor})
    assert 400 <= resp.status_code < 500, resp.text[:300]
    assert error_shape_problem("chat", resp.status_code, resp.json()) is None
    untouched(fake_openai)


def test_management_api_bounds_nesting_too(gateway) -> None:
    resp = httpx.post(gateway.url + "/api/v1/keys", headers=AUTH, timeout=15,
                      content=f'{{"name":"deep","metadata":{nested(400)}}}'.encode())
    assert resp.status_code == 400, resp.text[:300]
    assert "nested more than" in resp.json()["error"]["message"]


# -- found by tests/api/test_fuzz.py's account, key and header cases ---------------------------------------------------

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}


def account_error(resp: httpx.Response, status: int = 400) -> dict:
    assert resp.status_code == status, resp.text[:500]
    problem = error_shape_problem("account", resp.status_code, resp.json())
    assert problem is None, problem
    return resp.json()["error"]


@pytest.mark.parametrize("query", ["date_to=0001-01-29", "date_to=0001-01-01", "date=9999-12-31",
                                   "date_from=9999-12-31&date_to=9999-12-31", "date_from=0001-01-01",
                                   "date_to=1969-12-31"])
def test_activity_dates_at_the_ends_of_the_calendar_are_a_client_error(gateway, query) -> None:
    """The default range (29 days before date_to) and the store's end of day (date_to + 1) left the calendar: 500."""
    resp = httpx.get(f"{gateway.url}/api/v1/activity?{query}", headers=MASTER, timeout=15)
    assert "must be a date" in account_error(resp)["message"]
    ok = httpx.get(f"{gateway.url}/api/v1/activity?date_from=1970-01-01&date_to=9999-12-30", headers=MASTER,
                   timeout=15)
    assert ok.status_code == 200, ok.text[:300]


@pytest.mark.parametrize("expires_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_expiry_outside_the_calendar_in_utc_is_a_client_error(gateway, expires_at) -> None:
    """Valid ISO-8601 with an offset that moves it before year 1 or after 9999 in UTC: the store's conversion raised."""
    resp = httpx.post(gateway.url + "/api/v1/keys", headers=MASTER, timeout=15,
                      json={"name": "hostile-expiry", "expires_at": expires_at})
    assert account_error(resp)["metadata"]["field"] == "expires_at"
    made = httpx.post(gateway.url + "/api/v1/keys", headers=MASTER, timeout=15,
                      json={"name": "hostile-expiry", "expires_at": "9999-12-31T23:59:59Z"})
    assert made.status_code == 201, made.text[:300]
    key_hash = made.json()["data"]["hash"]
    resp = httpx.patch(f"{gateway.url}/api/v1/keys/{key_hash}", headers=MASTER, timeout=15,
                       json={"expires_at": expires_at})
    assert account_error(resp)["metadata"]["field"] == "expires_at"
    assert httpx.delete(f"{gateway.url}/api/v1/keys/{key_hash}", headers=MASTER, timeout=15).status_code == 200


@pytest.mark.parametrize("field", ["rpm", "tpm"])
@pytest.mark.parametrize("value", [2**31, 2**63 - 1])
def test_rate_limits_beyond_the_column_are_a_client_error(gateway, field, value) -> None:
    """An integer orjson reads but a 32-bit column cannot hold: the database driver's OverflowError was a 500."""
    resp = httpx.post(gateway.url + "/api/v1/keys", headers=MASTER, timeout=15,
                      json={"name": "hostile-rate", field: value})
    assert account_error(resp)["metadata"]["field"] == field
    made = httpx.post(gateway.url + "/api/v1/keys", headers=MASTER, timeout=15,
                      json={"name": "hostile-rate", field: 2**31 - 1})
    assert made.status_code == 201 and made.json()["data"][field] == 2**31 - 1, made.text[:300]
    key_hash = made.json()["data"]["hash"]
    resp = httpx.patch(f"{gateway.url}/api/v1/keys/{key_hash}", headers=MASTER, timeout=15, json={field: value})
    assert account_error(resp)["metadata"]["field"] == field
    assert httpx.delete(f"{gateway.url}/api/v1/keys/{key_hash}", headers=MASTER, timeout=15).status_code == 200


def test_names_with_control_characters_are_refused(gateway) -> None:
    """A NUL is stored as U+FFFD: the check for an existing name compared the name as sent, so a second such name
    passed it and then hit the database's unique constraint (500)."""
    for _ in range(2):
        resp = httpx.post(gateway.url + "/api/v1/workspaces", headers=MASTER, timeout=15, json={"name": "\x00"})
        assert account_error(resp)["metadata"]["field"] == "name"
    resp = httpx.post(gateway.url + "/api/v1/workspaces/default/environments", headers=MASTER, timeout=15,
                      json={"name": "env\x00"})
    assert account_error(resp)["metadata"]["field"] == "name"
    resp = httpx.post(gateway.url + "/api/v1/workspaces/default/members", headers=MASTER, timeout=15,
                      json={"email": "a\x00@example.test", "role": "member"})
    assert account_error(resp)["metadata"]["field"] == "email"


def test_a_search_result_whose_content_is_not_a_list_is_a_client_error(gateway, fake_anthropic) -> None:
    """In an assistant turn the converter iterated `content` whatever it was: an integer was a TypeError (500)."""
    for content in (5, {"type": "text"}, "text"):
        messages = [{"role": "user", "content": "hi"},
                    {"role": "assistant", "content": [{"type": "search_result", "source": "s", "title": "t",
                                                       "content": content}]},
                    {"role": "user", "content": "go on"}]
        resp = post(gateway, "messages", orjson.dumps({"model": "anthropic/claude-sonnet-4", "max_tokens": 5,
                                                       "messages": messages}))
        assert "'messages[1].content[0].content'" in assert_client_error("messages", resp)["message"]
    untouched(fake_anthropic)


def raw_answer(gateway, head: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send `head` (and nothing more) and read the answer until the server closes: (status, headers, body)."""
    received = b""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        try:
            sock.sendall(head)
        except OSError:  # refused part-way: the answer is still there to read
            pass
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:  # closed with our bytes unread: what was answered before is kept
            pass
    status_line, _, rest = received.partition(b"\r\n")
    raw_headers, _, body = rest.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in raw_headers.split(b"\r\n"))
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("extra", [b"X-Title: " + b"x" * 100_000 + b"\r\n",
                                   b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)),
                                   b"X-Title: " + b"x" * (32 << 20) + b"\r\n"])
def test_a_request_head_over_64_kib_is_answered_431(gateway, extra) -> None:
    """httptools joins a header's pieces by copying them: a 32 MB header took seconds of the event loop (and a 64 MB
    one ~5 s, every other request waiting) before it was answered at all."""
    start = b"GET /api/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + MASTER_KEY.encode() + b"\r\n"
    status, headers, body = raw_answer(gateway, start + extra + b"\r\n")
    assert status == 431 and headers[b"connection"] == b"close"
    assert error_shape_problem("account", 431, orjson.loads(body)) is None, body
    assert httpx.get(gateway.url + "/health", timeout=5).status_code == 200
    # Just under the bound, the same request is served.
    status, _, _ = raw_answer(gateway, start + b"Connection: close\r\nX-Title: " + b"x" * 60_000 + b"\r\n\r\n")
    assert status == 200


def test_ad_hoc_model_names_do_not_grow_the_health_board_without_end() -> None:
    """Each `<connection>/<any name>` a client sends made an endpoint entry for good (~5 KB: 20,000 names grew the
    process by 100 MB); past the bound the oldest idle one is forgotten, never one whose breaker is open."""
    from crossroads.routing.health import MAX_ENDPOINTS_PER_CONNECTION, OPEN, BreakerPolicy, HealthBoard

    board = HealthBoard(BreakerPolicy(failure_threshold=1))
    board.record_failure("local", "broken", status=503)
    assert board.state("local", "broken") == OPEN
    for n in range(MAX_ENDPOINTS_PER_CONNECTION * 3):
        board.record_success("local", f"model-{n}", ttft=0.1, output_tokens=5, duration=0.2)
    assert len(board.export()) <= MAX_ENDPOINTS_PER_CONNECTION
    assert board.state("local", "broken") == OPEN
    assert board.latency("local", f"model-{MAX_ENDPOINTS_PER_CONNECTION * 3 - 1}") is not None


def test_a_refused_head_on_the_messages_api_is_in_anthropics_shape(gateway) -> None:
    start = b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + MASTER_KEY.encode() + b"\r\n"
    status, _, body = raw_answer(gateway, start + b"X-Title: " + b"x" * 100_000 + b"\r\n\r\n")
    assert status == 431
    assert error_shape_problem("messages", 431, orjson.loads(body)) is None, body
    status, _, body = raw_answer(gateway, start + b"X-Title: a\x00b\r\n\r\n")
    assert status == 400
    assert error_shape_problem("messages", 400, orjson.loads(body)) is None, body


@pytest.mark.parametrize("fields", [{"name": "k" * 257}, {"name": "ok", "allowed_models": ["m"] * 1001},
                                    {"name": "ok", "allowed_models": ["m" * 257]},
                                    {"name": "ok", "allowed_models": [""]}])
def test_key_names_and_allow_lists_are_bounded(gateway, fields) -> None:
    # Every key lives in each process's memory and in every GET /keys answer.
    resp = httpx.post(gateway.url + "/api/v1/keys", json=fields,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["metadata"]["field"] in ("name", "allowed_models")
