"""The hostile inputs a probe of the running gateway answered with a 500, a 503 or a closed connection, one by one:
each now gets a 4xx in its endpoint's error shape and never reaches an upstream (tests/test_fuzz.py covers the rest
at random)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.conftest import MASTER_KEY
from tests.test_fuzz import PATHS, error_shape_problem

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
