"""OpenRouter's reasoning vocabulary: what the fronts (formats/) and the providers (providers/) decide alike.

Asked for with the `reasoning` request object ({effort, max_tokens, exclude, enabled}) or the older
`include_reasoning` flag; answered with a message's (or delta's) `reasoning` text and its `reasoning_details`
entries: reasoning.text (text, signature), reasoning.summary (summary) and reasoning.encrypted (data), each with the
`format` of the vendor that made it and an `index` that the stream fragments of one entry share.

Only the shared shape and decisions live here; what one vendor alone knows (Anthropic's minimum thinking budget,
Gemini's per-model budget ranges, how each turns details into its own blocks) stays in its provider package. This
module imports neither formats/ nor providers/: both import it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, cast

import orjson

from crossroads.canonical import Message, Reasoning, ReasoningDetail

# reasoning_details entry types
TEXT = "reasoning.text"
SUMMARY = "reasoning.summary"
ENCRYPTED = "reasoning.encrypted"

# The format of Anthropic's own signatures: the provider labels them so, the Messages front hands them on unwrapped.
ANTHROPIC_FORMAT = "anthropic-claude-v1"

# Share of the output allowance an effort level gives to thinking, where a budget is derived from max_tokens.
EFFORT_SHARE = {"xhigh": 0.9, "high": 0.8, "medium": 0.5, "low": 0.2, "minimal": 0.1}

# Marks a string handed to a client that carries reasoning state only this gateway reads back (base64url JSON).
ENVELOPE = "crossroads.v1."


# -- the request ---------------------------------------------------------------------------------------------------


def excluded(reasoning: Any) -> bool:
    """Whether a reasoning object asks for the reasoning to be left out of the answer (`exclude: true`)."""
    return isinstance(reasoning, dict) and reasoning.get("exclude") is True


def switched_off(reasoning: Reasoning | dict[str, Any]) -> bool:
    """Whether a reasoning object turns reasoning off (`enabled: false` or effort "none")."""
    return reasoning.get("enabled") is False or reasoning.get("effort") == "none"


def wants_reasoning(body: dict[str, Any]) -> bool:
    """Whether the client wants reasoning in its answer: not excluded, and `include_reasoning` not false."""
    return not excluded(body.get("reasoning")) and body.get("include_reasoning") is not False


def effort_budget(effort: Any, max_tokens: int) -> int:
    """The thinking budget an effort level takes out of `max_tokens` (an unknown or missing effort: medium's)."""
    share = EFFORT_SHARE.get(effort) if isinstance(effort, str) else None
    return int(max_tokens * (share if share is not None else EFFORT_SHARE["medium"]))


# -- reasoning_details ---------------------------------------------------------------------------------------------


def detail(kind: str, fmt: str | None = None, index: int | None = None, **fields: Any) -> ReasoningDetail:
    """A reasoning_details entry: its type, `fields` (text, summary, data, signature, id) as given, then its format
    and index (left out when None, as they are in the entries a client sends back)."""
    entry: dict[str, Any] = {"type": kind, **fields}
    if fmt is not None:
        entry["format"] = fmt
    if index is not None:
        entry["index"] = index
    return cast(ReasoningDetail, entry)


def detail_text(entry: Any) -> str | None:
    """The reasoning text an entry shows: a reasoning.text's text or a reasoning.summary's summary (None otherwise)."""
    if not isinstance(entry, dict):
        return None
    kind = entry.get("type")
    value = entry.get("text") if kind == TEXT else entry.get("summary") if kind == SUMMARY else None
    return value if isinstance(value, str) else None


def details_text(details: Any) -> str:
    """The reasoning text carried in reasoning_details, joined ("" when there is none or details is not a list)."""
    if not isinstance(details, list):
        return ""
    return "".join(text for entry in details if (text := detail_text(entry)) is not None)


def _fragment_key(entry: dict[str, Any]) -> tuple[str, int | str] | None:
    """What the fragments of one entry share (type and index); None for an entry that joins nothing (no index, or
    a type or index that is not a string or a number)."""
    kind = entry.get("type")
    index = entry.get("index")
    if not isinstance(kind, str) or not isinstance(index, int | str):
        return None
    return kind, index


def merge_details(details: Any, into: list[ReasoningDetail] | None = None) -> list[ReasoningDetail]:
    """`into` (a new list by default) with the reasoning_details entries of `details` added, stream fragments of one
    entry (same type and index) joined into one: text and summary appended, a non-empty signature or data taking
    the place of an earlier one, any other field kept from the first fragment that has it.

    Streams hand out one entry per fragment and clients that accumulate deltas naively send them back that way;
    an upstream needs one entry with the whole text and its signature. Entries that are not objects are dropped.
    """
    out: list[dict[str, Any]] = cast(list[dict[str, Any]], into if into is not None else [])
    if not isinstance(details, list):
        return cast(list[ReasoningDetail], out)
    by_key: dict[tuple[str, int | str], dict[str, Any]] = {}
    for known in out:
        if (key := _fragment_key(known)) is not None:
            by_key.setdefault(key, known)
    for item in details:
        if not isinstance(item, dict):
            continue
        key = _fragment_key(item)
        entry = by_key.get(key) if key is not None else None
        if entry is None:
            out.append(dict(item))
            if key is not None:
                by_key[key] = out[-1]
            continue
        for field, value in item.items():
            if field in ("text", "summary") and isinstance(value, str):
                entry[field] = (entry.get(field) or "") + value
            elif field in ("signature", "data"):
                if value:
                    entry[field] = value
            elif value is not None and entry.get(field) is None:
                entry[field] = value
    return cast(list[ReasoningDetail], out)


def add_to_message(message: Message | dict[str, Any], texts: list[str], details: list[ReasoningDetail]) -> None:
    """Set a message's `reasoning` (the texts joined) and `reasoning_details`, each only when there is some."""
    if texts:
        message["reasoning"] = "".join(texts)
    if details:
        message["reasoning_details"] = details


# -- opaque state handed to clients --------------------------------------------------------------------------------


def seal(value: Any) -> str:
    """`value` as an envelope string (ENVELOPE + base64url JSON) a client carries and hands back unread."""
    return ENVELOPE + base64.urlsafe_b64encode(orjson.dumps(value)).decode("ascii")


def unseal(text: str) -> Any:
    """What an envelope string holds; None when `text` is no envelope or was altered or truncated."""
    if not text.startswith(ENVELOPE):
        return None
    try:
        return orjson.loads(base64.urlsafe_b64decode(text[len(ENVELOPE):]))
    except (binascii.Error, ValueError):
        return None
