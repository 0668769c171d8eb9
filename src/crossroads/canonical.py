"""The canonical middle shape every front converts to and every provider converts from.

It is OpenAI's Chat Completions, extended the way OpenRouter extends it (`reasoning`, `reasoning_details`,
`native_finish_reason`, provider preferences...). Bodies stay plain dicts on the request path — decoded once by orjson
and never validated as a whole — and these TypedDicts say which keys the gateway itself reads and writes, so a type
checker holds every front and provider to one shape. Keys the gateway does not know pass through untouched, which is
why every TypedDict here is `total=False`: it names what may be there, and the checks in `formats/chat.py` say what
must be.

`Usage` is the one token count every stage shares: translators fill it, fronts render it, accounting prices it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

# Finish reasons a client may see (OpenRouter's normalised set).
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "error")
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


@dataclass(slots=True)
class Usage:
    """Token usage in OpenAI's accounting: prompt_tokens includes cached reads and cache writes;
    completion_tokens includes reasoning tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the cache
    cache_write_tokens: int = 0  # prompt tokens written to the cache
    seen: bool = False  # whether the upstream reported usage at all

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class FunctionCall(TypedDict, total=False):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(TypedDict, total=False):
    index: int  # in stream deltas
    id: str
    type: Literal["function"]
    function: FunctionCall


class ReasoningDetail(TypedDict, total=False):
    """OpenRouter's reasoning_details entry: reasoning.text | reasoning.summary | reasoning.encrypted."""

    type: str
    text: str
    summary: str
    data: str
    signature: str | None
    format: str  # anthropic-claude-v1, google-gemini-v1, openai-responses-v1...
    index: int
    id: str | None


class Message(TypedDict, total=False):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None  # text, or parts: text, image_url, input_audio, file
    name: str
    tool_calls: list[ToolCall]
    tool_call_id: str
    reasoning: str | None
    reasoning_details: list[ReasoningDetail]
    refusal: str | None
    cache_control: dict[str, Any]  # Anthropic prompt caching, as OpenRouter passes it


class Reasoning(TypedDict, total=False):
    effort: str  # xhigh | high | medium | low | minimal | none
    max_tokens: int
    exclude: bool
    enabled: bool


class ChatRequest(TypedDict, total=False):
    """A canonical chat request as the router and the providers see it (the client's body, checked)."""

    model: str
    models: list[str]
    messages: list[Message]
    stream: bool
    stream_options: dict[str, Any]
    max_tokens: int
    max_completion_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: str | list[str]
    seed: int
    frequency_penalty: float
    presence_penalty: float
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    response_format: dict[str, Any]
    reasoning: Reasoning
    include_reasoning: bool
    provider: dict[str, Any]
    transforms: list[str]
    metadata: dict[str, Any]
    user: str


class Delta(TypedDict, total=False):
    role: str
    content: str | None
    reasoning: str | None
    reasoning_details: list[ReasoningDetail]
    tool_calls: list[ToolCall]
    refusal: str | None


class Choice(TypedDict, total=False):
    """One choice of a completion (`message`) or of a stream chunk (`delta`)."""

    index: int
    message: Message
    delta: Delta
    finish_reason: str | None  # one of FINISH_REASONS (translators normalise the upstream's)
    native_finish_reason: str | None
    logprobs: Any


class Completion(TypedDict, total=False):
    """What a translator's `response()` returns, and each chunk its `stream_event()` and `finish()` return: choices
    only. Ids, `model`, `provider` and usage are the front's to stamp."""

    choices: list[Choice]


Chunk = Completion  # a stream chunk has the same shape, its choices carrying `delta` instead of `message`


def text_of(content: Any) -> str:
    """The text of a chat message's content (a string, or a list of parts of which the text parts count)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(text for p in content if isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(text := p.get("text"), str))
    return str(content)
