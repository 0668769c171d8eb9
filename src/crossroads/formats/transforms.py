"""OpenRouter's "middle-out" prompt transform (also spelled `plugins: [{"id": "context-compression"}]`).

When a prompt does not fit the model's context window, messages are removed from the middle of the conversation
until it does: the start (system/developer instructions) and the end (the latest user turn and what follows it) are
what a model needs most, and models attend least to the middle of long inputs anyway. If dropping every droppable
message is still not enough, the longest texts are cut in their middle. The same transform also enforces a limit on
the number of messages some upstreams have (Anthropic: 1000), keeping messages from both ends.

OpenRouter applies it by default to models whose context is 8k tokens or less; `transforms: []` turns it off.

Both functions are pure: the input body is never mutated, and only what changes is copied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MIDDLE_OUT = "middle-out"
CONTEXT_COMPRESSION = "context-compression"
# Models with at most this much context get middle-out unless the request says otherwise (OpenRouter's default).
DEFAULT_ON_MAX_CONTEXT = 8192
# What replaces the cut-out middle of a truncated text.
ELISION = "\n…\n"

_LEADING_ROLES = ("system", "developer")

Body = dict[str, Any]
Estimate = Callable[[Body], int]


def wants_middle_out(body: Body, context_length: int | None) -> bool:
    """Whether the request asks for middle-out, explicitly or by OpenRouter's default for small-context models."""
    plugin = _compression_plugin(body.get("plugins"))
    if plugin is not None:
        # `enabled: false` is the plugin's explicit off switch, so it wins over a `transforms` opt-in.
        return plugin.get("enabled", True) is not False
    transforms = body.get("transforms")
    if isinstance(transforms, list):
        # An explicit list is the whole answer: `[]` (or a list without it) turns the default off.
        return MIDDLE_OUT in transforms
    return context_length is not None and 0 < context_length <= DEFAULT_ON_MAX_CONTEXT


def _compression_plugin(plugins: Any) -> dict[str, Any] | None:
    if not isinstance(plugins, list):
        return None
    for plugin in plugins:
        if isinstance(plugin, dict) and plugin.get("id") == CONTEXT_COMPRESSION:
            return plugin
    return None


def middle_out(body: Body, context_length: int, *, max_output: int, estimate: Estimate,
               max_messages: int | None = None) -> tuple[Body, int]:
    """Fit the prompt plus `max_output` into `context_length` (and, if given, at most `max_messages` messages).

    Returns the new body and how many messages were removed or truncated; the same body and 0 when it already
    fits. Whole messages go first, nearest the middle first; then the longest texts are cut in their middle. When
    even that cannot make it fit, what is left after the removals is returned and the upstream reports the overflow.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return body, 0
    budget = context_length - max_output

    def fits(candidate: Body) -> bool:
        if max_messages is not None and len(candidate["messages"]) > max_messages:
            return False
        return estimate(candidate) <= budget

    if fits(body):
        return body, 0

    order = _removal_order(messages)

    def without(count: int) -> Body:
        dropped = {i for group in order[:count] for i in group}
        return {**body, "messages": [m for i, m in enumerate(messages) if i not in dropped]}

    # Removing more never makes the prompt longer, so the fewest groups that suffice can be found by bisection.
    count = _least(lambda n: fits(without(n)), 1, len(order))
    if count is not None:
        trimmed = without(count)
        return trimmed, len(messages) - len(trimmed["messages"])

    trimmed = without(len(order))
    removed = len(messages) - len(trimmed["messages"])
    if max_messages is not None and len(trimmed["messages"]) > max_messages:
        return trimmed, removed  # cutting texts cannot lower the message count
    longest = max((len(text) for _, _, text in _texts(trimmed["messages"])), default=0)
    # A lower cap never makes the prompt longer either: find the highest cap on text length that fits.
    cap = _most(lambda c: fits(_cap_texts(trimmed, c)[0]), 0, longest - 1)
    if cap is None:
        return trimmed, removed  # cannot fit at all: don't mangle the texts for nothing
    capped, truncated = _cap_texts(trimmed, cap)
    return capped, removed + truncated


def _removal_order(messages: list[Any]) -> list[list[int]]:
    """The removable groups of message indices, nearest the middle of the conversation first.

    Protected: every leading system/developer message, and the last user message with everything after it (the
    last message when there is no user message). A group is an assistant message with tool calls plus its tool
    results: upstreams reject a call without its results or a result without its call, so they go together.
    """
    head = 0
    while head < len(messages) and _role(messages[head]) in _LEADING_ROLES:
        head += 1
    users = [i for i, m in enumerate(messages) if _role(m) == "user"]
    tail = max(users[-1] if users else len(messages) - 1, head)

    groups = [g for g in _groups(messages) if head <= g[0] and g[-1] < tail]
    middle = (len(messages) - 1) / 2
    # Ties (one group either side at the same distance) go to the earlier one, so removal alternates outwards.
    groups.sort(key=lambda g: (abs((g[0] + g[-1]) / 2 - middle), g[0]))
    return groups


def _groups(messages: list[Any]) -> list[list[int]]:
    """Messages grouped so that tool calls and their results stay together; every other message stands alone."""
    groups: list[list[int]] = []
    owner: dict[str, int] = {}  # tool_call_id -> index of the group of the assistant message that made the call
    run: int | None = None  # the tool-call group whose results directly follow (for results with unknown ids)
    for i, message in enumerate(messages):
        role = _role(message)
        if role == "tool":
            call_id = message.get("tool_call_id")
            group = owner.get(call_id, run) if isinstance(call_id, str) else run
            if group is not None:
                groups[group].append(i)
                continue
        calls = message.get("tool_calls") if role == "assistant" else None
        groups.append([i])
        run = None
        if calls:
            run = len(groups) - 1
            for call in calls:
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    owner[call["id"]] = run
    return groups


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


def _texts(messages: list[Any]) -> list[tuple[int, int | None, str]]:
    """Every text in the messages as (message index, content part index or None for string content, text)."""
    found: list[tuple[int, int | None, str]] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            found.append((i, None, content))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    found.append((i, j, part["text"]))
    return found


def _cut(text: str, keep: int) -> str:
    """The text's first and last characters, `keep` in all, around the elision mark."""
    tail = keep // 2
    return text[:keep - tail] + ELISION + (text[-tail:] if tail else "")


def _cap_texts(body: Body, cap: int) -> tuple[Body, int]:
    """The body with every text longer than `cap` (plus the mark) cut to `cap` characters; and how many messages
    that changed. Only the changed messages (and their content lists) are copied."""
    messages = list(body["messages"])
    changed: set[int] = set()
    for i, j, text in _texts(messages):
        if len(text) <= cap + len(ELISION):
            continue  # cutting would not make it shorter
        if i not in changed:
            changed.add(i)
            messages[i] = dict(messages[i])
            if j is not None:
                messages[i]["content"] = list(messages[i]["content"])
        if j is None:
            messages[i]["content"] = _cut(text, cap)
        else:
            messages[i]["content"][j] = {**messages[i]["content"][j], "text": _cut(text, cap)}
    return {**body, "messages": messages}, len(changed)


def _least(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The smallest n in [lo, hi] with ok(n), for ok false-then-true; None when ok(hi) is false."""
    if lo > hi or not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _most(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The largest n in [lo, hi] with ok(n), for ok true-then-false; None when ok(lo) is false."""
    if lo > hi or not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
