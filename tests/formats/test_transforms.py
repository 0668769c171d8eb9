"""The middle-out prompt transform: when it applies, what it removes, what it keeps together, what it cuts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from crossroads.accounting.exchange import estimate_prompt_tokens as estimate
from crossroads.formats.transforms import ELISION, middle_out, wants_middle_out
from crossroads.providers.anthropic import MAX_MESSAGES as ANTHROPIC_MAX_MESSAGES

Body = dict[str, Any]


def msg(role: str, tag: str, size: int = 400, **extra: Any) -> dict[str, Any]:
    """A message whose content starts with `tag` and is padded to `size` characters (size/4 estimated tokens)."""
    return {"role": role, "content": tag.ljust(size, "."), **extra}


def call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


def tags(body: Body) -> list[str]:
    return [m["content"].split(".")[0] if isinstance(m["content"], str) else "parts" for m in body["messages"]]


def fits(body: Body, context: int, max_output: int) -> bool:
    return estimate(body) + max_output <= context


def tokens_for(chars: int) -> int:
    """A context that holds exactly `chars` characters of message text plus estimate's overhead (no output)."""
    return chars // 4 + 8


# sys + 8 middle turns + the last user turn, 400 characters (100 tokens) each except the 40-character system prompt.
CHAT = {"model": "m", "messages": [msg("system", "sys", 40)]
        + [msg("user" if i % 2 else "assistant", f"m{i}") for i in range(1, 9)] + [msg("user", "last")]}
MIDDLE = [f"m{i}" for i in range(1, 9)]


# ---- already fits: the very same object comes back -------------------------------------------------------------

@pytest.mark.parametrize(("body", "context", "max_output"), [
    (CHAT, 10_000, 1000),
    (CHAT, tokens_for(40 + 9 * 400) + 50, 50),  # exactly full
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                               {"type": "image_url", "image_url": {"url": "x"}}]}]},
     2000, 100),
    ({"model": "m", "prompt": "no messages at all"}, 10, 100),  # nothing to work on
])
def test_fitting_body_is_returned_as_is(body: Body, context: int, max_output: int) -> None:
    out, changed = middle_out(body, context, max_output=max_output, estimate=estimate)
    assert out is body
    assert changed == 0


# ---- whole messages from the middle ----------------------------------------------------------------------------

@pytest.mark.parametrize(("removed_needed", "removed"), [
    # Indices 1..8 are removable and the conversation's midpoint is 4.5: m4, m5, m3, m6, m2, m7, m1, m8.
    (1, ["m4"]),
    (2, ["m4", "m5"]),
    (3, ["m3", "m4", "m5"]),
    (5, ["m2", "m3", "m4", "m5", "m6"]),
    (8, MIDDLE),
])
def test_removes_from_the_middle_and_keeps_system_and_last_turn(removed_needed: int, removed: list[str]) -> None:
    max_output = 200
    kept_chars = 40 + (9 - removed_needed) * 400
    out, changed = middle_out(CHAT, tokens_for(kept_chars) + max_output, max_output=max_output, estimate=estimate)
    assert changed == removed_needed
    assert tags(out) == ["sys"] + [t for t in MIDDLE if t not in removed] + ["last"]
    assert fits(out, tokens_for(kept_chars) + max_output, max_output)
    assert out["model"] == "m"


def test_removes_no_more_than_needed() -> None:
    # One token short of fitting after two removals: a third must go.
    context = tokens_for(40 + 7 * 400) - 1
    out, changed = middle_out(CHAT, context, max_output=0, estimate=estimate)
    assert changed == 3
    assert fits(out, context, 0)


def test_keeps_every_leading_instruction_and_everything_after_the_last_user_turn() -> None:
    body = {"model": "m", "messages": [
        msg("developer", "dev"), msg("system", "sys"),
        msg("user", "u1"), msg("assistant", "a1"), msg("system", "late"), msg("user", "u2"), msg("assistant", "a2"),
        msg("user", "last"), msg("assistant", "pre", tool_calls=[call("c9")]), msg("tool", "res", tool_call_id="c9"),
    ]}
    # With no room at all every removable message goes and nothing is cut: what is left is what is protected.
    out, changed = middle_out(body, 100, max_output=100, estimate=estimate)
    assert tags(out) == ["dev", "sys", "last", "pre", "res"]
    assert changed == 5  # the non-leading system message is removable like any other


def test_message_limit_keeps_both_ends() -> None:
    body = {"model": "m", "messages": [msg("system", "sys")]
            + [msg("user" if i % 2 else "assistant", f"m{i}", 10) for i in range(1, 19)] + [msg("user", "last")]}
    out, changed = middle_out(body, 1_000_000, max_output=0, estimate=estimate, max_messages=10)
    assert changed == 10
    assert tags(out) == ["sys", "m1", "m2", "m3", "m4", "m15", "m16", "m17", "m18", "last"]
    assert ANTHROPIC_MAX_MESSAGES == 1000


# ---- tool calls and their results go together ------------------------------------------------------------------

TOOLS = {"model": "m", "messages": [
    msg("system", "sys", 40),
    msg("user", "u1"),
    msg("assistant", "a1", 40),
    msg("user", "u2"),
    msg("assistant", "call", 40, tool_calls=[call("c1"), call("c2")]),
    msg("tool", "r1", tool_call_id="c1"),
    msg("tool", "r2", tool_call_id="c2"),
    msg("assistant", "a2"),
    msg("user", "u3"),
    msg("assistant", "a3"),
    msg("user", "last"),
]}


def pairs_intact(body: Body) -> bool:
    called = {c["id"] for m in body["messages"] for c in m.get("tool_calls") or ()}
    answered = {m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"}
    return called == answered


# From just the protected system prompt and last turn (440 characters) to everything.
@pytest.mark.parametrize("context", [tokens_for(n) for n in range(440, 3500, 50)])
def test_tool_calls_and_results_are_removed_together(context: int) -> None:
    out, changed = middle_out(TOOLS, context, max_output=0, estimate=estimate)
    assert pairs_intact(out)
    assert changed == len(TOOLS["messages"]) - len(out["messages"])  # whole messages only at these sizes
    assert tags(out)[0] == "sys" and tags(out)[-1] == "last"


def test_tool_group_counts_every_message_it_removes() -> None:
    # The call group sits at the midpoint (index 5) and goes first: 3 messages for one removal.
    out, changed = middle_out(TOOLS, estimate(TOOLS) - 1, max_output=0, estimate=estimate)
    assert tags(out) == ["sys", "u1", "a1", "u2", "a2", "u3", "a3", "last"]
    assert changed == 3


def test_results_with_unknown_ids_stay_with_the_call_they_follow() -> None:
    body = {"model": "m", "messages": [
        msg("user", "u1"), msg("assistant", "call", tool_calls=[{"type": "function"}]),
        msg("tool", "r1", tool_call_id="nobody"), msg("user", "last"),
    ]}
    out, changed = middle_out(body, tokens_for(400), max_output=0, estimate=estimate)
    assert tags(out) == ["last"]
    assert changed == 3


def test_call_answered_after_the_last_user_turn_is_protected() -> None:
    body = {"model": "m", "messages": [
        msg("user", "u1"), msg("assistant", "call", tool_calls=[call("c1")]),
        msg("user", "last"), msg("tool", "r1", tool_call_id="c1"),
    ]}
    protected = {"messages": body["messages"][1:]}
    out, changed = middle_out(body, estimate(protected), max_output=0, estimate=estimate)
    assert tags(out) == ["call", "last", "r1"]
    assert changed == 1


# ---- truncation when removing is not enough --------------------------------------------------------------------

GIANT_TEXT = "".join(f"{i:06d}" for i in range(10_000))  # 60 000 distinct-looking characters
GIANT = {"model": "m", "messages": [msg("system", "sys", 40), msg("user", "u1"), msg("assistant", "a1"),
                                    {"role": "user", "content": GIANT_TEXT}]}


def test_truncates_the_giant_message_in_its_middle() -> None:
    context, max_output = 4000, 1000
    out, changed = middle_out(GIANT, context, max_output=max_output, estimate=estimate)
    assert changed == 3  # u1 and a1 removed, the giant message truncated
    assert [m["role"] for m in out["messages"]] == ["system", "user"]
    assert out["messages"][0] is GIANT["messages"][0]  # untouched messages are not copied
    cut = out["messages"][1]["content"]
    head, tail = cut.split(ELISION)
    assert GIANT_TEXT.startswith(head) and GIANT_TEXT.endswith(tail)
    assert abs(len(head) - len(tail)) <= 1 and len(head) > 1000
    assert fits(out, context, max_output)
    # As much as fits is kept: one more token's worth would not fit.
    assert estimate(out) + max_output > context - 2


def test_truncates_a_text_part_and_keeps_the_other_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": GIANT_TEXT}, image]}]}
    out, changed = middle_out(body, 3000, max_output=500, estimate=estimate)
    parts = out["messages"][0]["content"]
    assert changed == 1
    assert parts[1] is image
    assert ELISION in parts[0]["text"] and parts[0]["type"] == "text"
    assert fits(out, 3000, 500)


def test_two_long_texts_are_both_cut_to_the_same_length() -> None:
    body = {"model": "m", "messages": [{"role": "system", "content": "s" * 20_000},
                                       {"role": "user", "content": "u" * 30_000}]}
    out, changed = middle_out(body, 2000, max_output=0, estimate=estimate)
    system, user = (m["content"] for m in out["messages"])
    assert changed == 2
    assert len(system) == len(user) and ELISION in system
    assert fits(out, 2000, 0)


def test_only_the_longest_text_is_cut_when_that_is_enough() -> None:
    body = {"model": "m", "messages": [{"role": "system", "content": "s" * 2000},
                                       {"role": "user", "content": "u" * 30_000}]}
    out, changed = middle_out(body, 2000, max_output=0, estimate=estimate)
    assert changed == 1
    assert out["messages"][0] is body["messages"][0]
    assert fits(out, 2000, 0)


# ---- cannot fit: what is left goes upstream, texts intact ------------------------------------------------------

IMAGES = {"model": "m", "messages": [msg("user", "u1"), msg("assistant", "a1"), {"role": "user", "content": [
    {"type": "text", "text": "describe"}] + [{"type": "image_url", "image_url": {"url": f"u{i}"}} for i in range(5)]}]}


@pytest.mark.parametrize(("body", "context", "max_output", "kwargs", "left", "removed"), [
    (GIANT, 4000, 4000, {}, ["sys", GIANT_TEXT[:6]], 2),  # the output alone fills the context
    (GIANT, 4000, 5000, {}, ["sys", GIANT_TEXT[:6]], 2),
    (IMAGES, 2000, 100, {}, ["parts"], 2),  # five images are 5000 tokens whatever the text
    (CHAT, 1_000_000, 0, {"max_messages": 1}, ["sys", "last"], 8),  # the protected messages alone exceed it
])
def test_unfittable_input_returns_what_is_left(body: Body, context: int, max_output: int, kwargs: dict[str, Any],
                                               left: list[str], removed: int) -> None:
    out, changed = middle_out(body, context, max_output=max_output, estimate=estimate, **kwargs)
    assert [t[:6] for t in tags(out)] == left
    assert changed == removed
    assert all(ELISION not in (m["content"] if isinstance(m["content"], str) else "") for m in out["messages"])


# ---- the input is never mutated --------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "context", "max_output"), [
    (CHAT, 500, 100),
    (TOOLS, 300, 0),
    (GIANT, 4000, 1000),
    (IMAGES, 2000, 100),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": GIANT_TEXT},
                                                               {"type": "text", "text": GIANT_TEXT}]}]}, 3000, 0),
])
def test_input_body_is_never_mutated(body: Body, context: int, max_output: int) -> None:
    before = copy.deepcopy(body)
    out, changed = middle_out(body, context, max_output=max_output, estimate=estimate)
    assert changed > 0 and out is not body
    assert body == before


# ---- when it applies -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "context", "expected"), [
    ({"transforms": ["middle-out"]}, 1_000_000, True),
    ({"transforms": ["middle-out"]}, None, True),
    ({"transforms": []}, 4096, False),
    ({"transforms": ["something-else"]}, 4096, False),
    ({"plugins": [{"id": "context-compression"}]}, 1_000_000, True),
    ({"plugins": [{"id": "web"}, {"id": "context-compression", "enabled": True}]}, None, True),
    ({"plugins": [{"id": "context-compression", "enabled": False}]}, 4096, False),
    ({"plugins": [{"id": "context-compression", "enabled": False}], "transforms": ["middle-out"]}, 4096, False),
    ({"plugins": [{"id": "context-compression"}], "transforms": []}, 1_000_000, True),
    ({"plugins": [{"id": "web"}]}, 1_000_000, False),
    ({"plugins": [{"id": "web"}]}, 8192, True),
    ({}, 8192, True),
    ({}, 4096, True),
    ({}, 8193, False),
    ({}, 128_000, False),
    ({}, None, False),
    ({}, 0, False),
])
def test_wants_middle_out(fields: Body, context: int | None, expected: bool) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    assert wants_middle_out(body, context) is expected
