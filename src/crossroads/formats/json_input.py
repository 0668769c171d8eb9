"""JSON from a client, parsed with bounds the rest of the gateway relies on.

Nesting is bounded at parse time: orjson writes at most 254 levels and the adapters recurse over schemas and
content, so a body nested deeper than any real request would otherwise fail later, far from its cause.
"""

from __future__ import annotations

from typing import Any

import orjson

from crossroads.errors import GatewayError

# Deep enough for any real request (a tool schema with 20 nested objects is ~45 levels); shallow enough that the
# few levels a format conversion adds stay far inside orjson's 254 and Python's recursion limit.
MAX_DEPTH = 128


def loads_bounded(raw: bytes) -> Any:
    """The parsed body, or a 400 naming what is wrong (invalid JSON, nested deeper than MAX_DEPTH)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise too_deep("the JSON body") from None
        raise GatewayError(400, f"Invalid JSON in request body: {exc}") from None
    if too_deep_text(raw, value):
        raise too_deep("the JSON body")
    return value


def too_deep_text(raw: bytes | str, value: Any) -> bool:
    """Whether `value`, parsed from `raw`, nests deeper than MAX_DEPTH."""
    # Counting brackets is C-speed and over-counts (brackets inside strings), so a text with fewer than the limit
    # cannot be too deep and skips the walk: nearly every request.
    opening = (raw.count("{") + raw.count("[")) if isinstance(raw, str) else (raw.count(b"{") + raw.count(b"["))
    return opening > MAX_DEPTH and nesting_exceeds(value, MAX_DEPTH)


def too_deep(what: str) -> GatewayError:
    return GatewayError(400, f"Invalid request: {what} is nested more than {MAX_DEPTH} levels deep",
                        metadata={"max_depth": MAX_DEPTH})


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels (the top-level container is level 1)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False
