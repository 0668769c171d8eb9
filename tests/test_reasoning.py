"""crossroads.reasoning: the reasoning request decisions and reasoning_details shapes fronts and providers share."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from crossroads import reasoning as rsn


@pytest.mark.parametrize(("reasoning", "expected"), [
    ({"exclude": True}, True),
    ({"exclude": False}, False),
    ({"exclude": 1}, False),  # only a real true excludes
    ({}, False),
    (None, False),
    ("exclude", False),
    ([{"exclude": True}], False),
])
def test_excluded(reasoning: Any, expected: bool) -> None:
    assert rsn.excluded(reasoning) is expected


@pytest.mark.parametrize(("reasoning", "expected"), [
    ({"enabled": False}, True),
    ({"effort": "none"}, True),
    ({"enabled": False, "effort": "high"}, True),
    ({"enabled": True, "effort": "none"}, True),
    ({"enabled": 0}, False),  # not the boolean false
    ({"effort": "None"}, False),
    ({"effort": None}, False),
    ({}, False),
])
def test_switched_off(reasoning: dict[str, Any], expected: bool) -> None:
    assert rsn.switched_off(reasoning) is expected


@pytest.mark.parametrize(("body", "expected"), [
    ({}, True),
    ({"include_reasoning": True}, True),
    ({"include_reasoning": False}, False),
    ({"include_reasoning": None}, True),
    ({"reasoning": {"exclude": True}}, False),
    ({"reasoning": {"exclude": True}, "include_reasoning": True}, False),
    ({"reasoning": {"exclude": False}, "include_reasoning": False}, False),
    ({"reasoning": {"effort": "high"}}, True),
    ({"reasoning": "exclude"}, True),  # not an object: nothing it says counts
])
def test_wants_reasoning(body: dict[str, Any], expected: bool) -> None:
    assert rsn.wants_reasoning(body) is expected


@pytest.mark.parametrize(("effort", "max_tokens", "expected"), [
    ("xhigh", 10000, 9000),
    ("high", 10000, 8000),
    ("medium", 10000, 5000),
    ("low", 10000, 2000),
    ("minimal", 10000, 1000),
    ("minimal", 15, 1),  # rounded down
    ("medium", 0, 0),
    ("unheard-of", 10000, 5000),  # unknown: medium
    ("none", 10000, 5000),  # "none" has no share: whether to think at all is decided before this
    (None, 10000, 5000),
    (3, 10000, 5000),  # not a string
    (["high"], 10000, 5000),  # not even hashable
])
def test_effort_budget(effort: Any, max_tokens: int, expected: int) -> None:
    assert rsn.effort_budget(effort, max_tokens) == expected


def test_detail_keeps_fields_in_order_and_leaves_out_a_missing_format_and_index() -> None:
    entry = rsn.detail(rsn.TEXT, rsn.ANTHROPIC_FORMAT, 2, text="hm", signature=None)
    assert entry == {"type": "reasoning.text", "text": "hm", "signature": None, "format": "anthropic-claude-v1",
                     "index": 2}
    assert list(entry) == ["type", "text", "signature", "format", "index"]
    assert rsn.detail(rsn.SUMMARY, summary="s") == {"type": "reasoning.summary", "summary": "s"}
    assert rsn.detail(rsn.ENCRYPTED, "google-gemini-v1", 0, data="d", id=None) == {
        "type": "reasoning.encrypted", "data": "d", "id": None, "format": "google-gemini-v1", "index": 0}
    assert rsn.detail(rsn.ENCRYPTED, None, 0, data="d") == {"type": "reasoning.encrypted", "data": "d", "index": 0}


@pytest.mark.parametrize(("entry", "expected"), [
    ({"type": "reasoning.text", "text": "a", "summary": "b"}, "a"),
    ({"type": "reasoning.summary", "text": "a", "summary": "b"}, "b"),
    ({"type": "reasoning.text", "text": ""}, ""),
    ({"type": "reasoning.text", "text": 5}, None),
    ({"type": "reasoning.text"}, None),
    ({"type": "reasoning.encrypted", "data": "x", "text": "a"}, None),
    ({"text": "a"}, None),
    ("reasoning.text", None),
    (None, None),
])
def test_detail_text(entry: Any, expected: str | None) -> None:
    assert rsn.detail_text(entry) == expected


def test_details_text_joins_text_and_summaries_only() -> None:
    details = [{"type": "reasoning.text", "text": "a"}, {"type": "reasoning.encrypted", "data": "x"},
               {"type": "reasoning.summary", "summary": "b"}, "junk", {"type": "reasoning.text", "text": None}]
    assert rsn.details_text(details) == "ab"
    assert rsn.details_text({"type": "reasoning.text", "text": "a"}) == ""  # not a list
    assert rsn.details_text(None) == ""
    assert rsn.details_text([]) == ""


def test_merge_details_joins_stream_fragments() -> None:
    fragments = [
        {"type": "reasoning.text", "text": "Let me ", "format": "anthropic-claude-v1", "index": 0},
        {"type": "reasoning.text", "text": "think.", "signature": None, "index": 0},
        {"type": "reasoning.text", "signature": "SIG", "format": "other", "index": 0},
        {"type": "reasoning.encrypted", "data": "BLOB", "index": 1},
        {"type": "reasoning.summary", "summary": "So ", "index": 2},
        {"type": "reasoning.summary", "summary": "this.", "id": "rs_1", "index": 2},
    ]
    merged = rsn.merge_details(fragments)
    assert merged == [
        {"type": "reasoning.text", "text": "Let me think.", "format": "anthropic-claude-v1", "index": 0,
         "signature": "SIG"},
        {"type": "reasoning.encrypted", "data": "BLOB", "index": 1},
        {"type": "reasoning.summary", "summary": "So this.", "index": 2, "id": "rs_1"},
    ]
    assert fragments[0]["text"] == "Let me "  # the input entries are copied, not changed


def test_merge_details_later_signature_wins_but_not_an_empty_one() -> None:
    merged = rsn.merge_details([
        {"type": "reasoning.text", "text": "a", "signature": "OLD", "index": 0},
        {"type": "reasoning.text", "signature": "NEW", "index": 0},
        {"type": "reasoning.text", "signature": "", "index": 0},
        {"type": "reasoning.encrypted", "data": "D1", "index": 1},
        {"type": "reasoning.encrypted", "data": None, "index": 1},
    ])
    assert merged == [{"type": "reasoning.text", "text": "a", "signature": "NEW", "index": 0},
                      {"type": "reasoning.encrypted", "data": "D1", "index": 1}]


@pytest.mark.parametrize("details", [None, "reasoning.text", {"type": "reasoning.text", "index": 0}, 5])
def test_merge_details_of_something_not_a_list(details: Any) -> None:
    assert rsn.merge_details(details) == []
    into: list[Any] = [{"type": "reasoning.text", "text": "kept", "index": 0}]
    assert rsn.merge_details(details, into) is into
    assert into == [{"type": "reasoning.text", "text": "kept", "index": 0}]


def test_merge_details_joins_nothing_without_a_usable_index_or_type() -> None:
    odd = [
        "not an entry", 7, None,
        {"type": "reasoning.text", "text": "a"}, {"type": "reasoning.text", "text": "b"},  # no index
        {"type": "reasoning.text", "text": "c", "index": [0]}, {"type": "reasoning.text", "text": "d", "index": [0]},
        {"type": "reasoning.text", "text": "e", "index": 1.0}, {"type": "reasoning.text", "text": "f", "index": 1.0},
        {"type": ["x"], "text": "g", "index": 0}, {"type": ["x"], "text": "h", "index": 0},
        {"type": "reasoning.text", "text": "i", "index": 0}, {"type": "reasoning.summary", "summary": "j", "index": 0},
    ]
    merged = rsn.merge_details(odd)
    assert [d.get("text", d.get("summary")) for d in merged] == ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]


def test_merge_details_into_an_earlier_list_as_a_stream_goes_on() -> None:
    into = rsn.merge_details([{"type": "reasoning.text", "text": "one ", "index": "k"}])
    rsn.merge_details([{"type": "reasoning.text", "text": "two", "index": "k"}], into)
    rsn.merge_details([{"type": "reasoning.encrypted", "data": "x", "index": "k"}], into)
    assert into == [{"type": "reasoning.text", "text": "one two", "index": "k"},
                    {"type": "reasoning.encrypted", "data": "x", "index": "k"}]


def test_merge_details_copes_with_many_fragments() -> None:
    fragments = [{"type": "reasoning.text", "text": "x", "index": n % 3} for n in range(30000)]
    fragments += [{"type": "reasoning.text", "text": "y", "index": n} for n in range(3, 20003)]
    merged = rsn.merge_details(fragments)
    assert len(merged) == 20003
    assert merged[0]["text"] == "x" * 10000


def test_add_to_message() -> None:
    message: dict[str, Any] = {"role": "assistant"}
    rsn.add_to_message(message, [], [])
    assert message == {"role": "assistant"}
    rsn.add_to_message(message, ["", ""], [])  # thinking blocks without text still say there was reasoning
    assert message == {"role": "assistant", "reasoning": ""}
    entry = rsn.detail(rsn.ENCRYPTED, data="d")
    rsn.add_to_message(message, ["a", "b"], [entry])
    assert message == {"role": "assistant", "reasoning": "ab", "reasoning_details": [entry]}


@pytest.mark.parametrize("value", [
    {"format": "google-gemini-v1", "id": "call_1", "data": "SIG"},
    [{"type": "reasoning.text", "text": "ü", "signature": "S", "index": 0}],
    "text", 0, [],
])
def test_seal_round_trip(value: Any) -> None:
    sealed = rsn.seal(value)
    assert sealed.startswith("crossroads.v1.")
    assert sealed.isascii() and "+" not in sealed and "/" not in sealed  # base64url: safe in a JSON string and a URL
    assert rsn.unseal(sealed) == value


@pytest.mark.parametrize("text", [
    "", "SIG", "crossroads.v2.e30=", "crossroads.v1.", "crossroads.v1.!!!", "crossroads.v1.ü",
    "crossroads.v1." + base64.urlsafe_b64encode(b"{not json").decode(),
    "crossroads.v1." + base64.urlsafe_b64encode(b'{"a": 1}').decode()[:-3],  # truncated
])
def test_unseal_of_something_not_sealed_here(text: str) -> None:
    assert rsn.unseal(text) is None
