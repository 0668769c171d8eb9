"""Anthropic Messages API upstreams (`POST {base_url}/messages`, base_url ending in /v1).

The canonical chat request is rebuilt as a Messages request: system prompts move to `system`, turns alternate
strictly (same-role neighbours merged, tool results become user `tool_result` blocks), reasoning becomes
`thinking`, and parameters Anthropic rejects or combines badly are dropped rather than turned into errors.
Responses and stream events are mapped back to chat completions with OpenRouter's reasoning extras
(`reasoning`, `reasoning_details` in the `anthropic-claude-v1` format, so clients can echo signatures back).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

import orjson

from crossroads import reasoning as rsn
from crossroads.canonical import ChatRequest, Chunk, Completion, Message, ReasoningDetail, ToolCall
from crossroads.errors import GatewayError
from crossroads.formats.json_input import too_deep, too_deep_text
from crossroads.providers.base import (
    Adapter,
    RequestContext,
    UpstreamRequest,
    UpstreamStreamError,
    Usage,
    choice_chunk,
    string_or_none,
    text_of,
    token_count,
)

if TYPE_CHECKING:
    from crossroads.config import ConnectionConfig

ANTHROPIC_VERSION = "2023-06-01"
REASONING_FORMAT = rsn.ANTHROPIC_FORMAT
DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024  # Anthropic rejects smaller budgets

_FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}
_STREAM_ERROR_CODES = {"rate_limit_error": 429, "overloaded_error": 503}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
_TOOL_ID_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")

JSON_OBJECT_INSTRUCTION = (
    "Respond with only a single valid JSON object: no prose, no explanation and no Markdown code fences.")
JSON_SCHEMA_INSTRUCTION = (
    "Respond with only a single valid JSON value that conforms to the following JSON schema: no prose, "
    "no explanation and no Markdown code fences.\nJSON schema:\n")


def normalise_finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _text(value: Any) -> str:
    """A text field of an upstream block or delta ("" when it is missing or not text)."""
    return value if isinstance(value, str) else ""


def _block_index(payload: dict[str, Any]) -> int:
    """The content block a stream event is about: blocks are told apart by it, so an index that is not a number
    makes the stream unreadable."""
    index = payload.get("index", 0)
    if not isinstance(index, int):
        raise ValueError("upstream stream event's content block index is not a number")
    return index


def sanitise_tool_id(raw: Any) -> str:
    """A tool-call id Anthropic accepts (^[a-zA-Z0-9_-]+$).

    Valid ids pass unchanged. Others are cleaned and suffixed with a digest of the original, so the mapping is
    deterministic (a tool_use and its tool_result, translated separately, still pair up) and two ids differing
    only in rejected characters stay distinct.
    """
    text = raw if isinstance(raw, str) else ("" if raw is None else str(raw))
    if text and _TOOL_ID.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cleaned = _TOOL_ID_BAD_CHARS.sub("_", text)[:48]
    return f"{cleaned}_{digest}" if cleaned else f"toolu_{digest}"


class AnthropicAdapter(Adapter):
    def __init__(self, conn: ConnectionConfig) -> None:
        super().__init__(conn)
        self.messages_url = self.url("messages")
        # Operator headers (an anthropic-beta flag, say) may override the defaults; the key is set last.
        version = conn.options.get("api_version") or ANTHROPIC_VERSION
        headers = {"content-type": "application/json", "anthropic-version": version, **conn.headers}
        if conn.api_key:
            headers["x-api-key"] = conn.api_key
        self.headers = headers

    def translator(self, ctx: RequestContext) -> AnthropicTranslator:
        return AnthropicTranslator(self, ctx)

    def native_translator(self, api: str, ctx: RequestContext, native: dict[str, Any],
                          extra: dict[str, Any]) -> AnthropicNativeTranslator | None:
        # A Messages request goes up as the client sent it (anthropic-beta included), but for the model.
        if api != "messages":
            return None
        return AnthropicNativeTranslator(self, ctx, native, extra.get("anthropic-beta"))


# -- request helpers -----------------------------------------------------------------------------------------


def _split_data_url(url: str) -> tuple[str, str, bool]:
    """(media type, payload, is_base64) of a data: URL, without decoding it."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise GatewayError(400, "malformed data URL: missing ',' separator")
    params = [p.strip() for p in header.split(";")]
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    return params[0].lower(), payload, is_base64


_CANONICAL_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _is_canonical_base64(payload: str) -> bool:
    """Whether Anthropic takes `payload` as it is: padded standard base64, nothing else in it. Clients often send
    it unpadded, wrapped or percent-encoded (the VMSRouter docs' own sample is unpadded), which Anthropic refuses."""
    return len(payload) % 4 == 0 and _CANONICAL_BASE64.fullmatch(payload) is not None


def _decoded_base64(url: str) -> tuple[str, str]:
    """(media type, base64) for data URLs that are not already plain base64 with a useful type."""
    import base64

    from crossroads.net.fetch import parse_data_url  # decodes, un-percent-encodes and sniffs the type

    media = parse_data_url(url)
    assert media is not None  # callers only pass data: URLs
    return media.mime_type, base64.b64encode(media.data).decode("ascii")


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise GatewayError(400, "image_url part without a url")
    if url[:5].lower() == "data:":
        mime, payload, is_base64 = _split_data_url(url)
        if mime == "image/jpg":
            mime = "image/jpeg"
        if not (is_base64 and mime in _IMAGE_TYPES and _is_canonical_base64(payload)):
            # Unpadded, wrapped, percent-encoded, untyped or generically typed: decode, sniff and re-encode (rare, so
            # the copy is fine).
            mime, payload = _decoded_base64(url)
            if mime == "image/jpg":
                mime = "image/jpeg"
        if mime not in _IMAGE_TYPES:
            raise GatewayError(400, f"unsupported image type {mime!r} (Anthropic takes JPEG, PNG, GIF, WebP)")
        source: dict[str, Any] = {"type": "base64", "media_type": mime, "data": payload}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}  # Anthropic fetches URL images itself
    else:
        raise GatewayError(400, "image_url must be an http(s) or data: URL")
    return {"type": "image", "source": source}


def _file_block(part: dict[str, Any]) -> dict[str, Any]:
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str) or not data:
        raise GatewayError(400, "file parts need file_data (base64 or a data: URL); file_id is not supported")
    if data[:5].lower() == "data:":
        mime, payload, is_base64 = _split_data_url(data)
        if mime == "text/plain":
            import urllib.parse

            text = _decoded_text(data) if is_base64 else urllib.parse.unquote(payload)
            return {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
        if not (is_base64 and mime == "application/pdf" and _is_canonical_base64(payload)):
            mime, payload = _decoded_base64(data)
        if mime != "application/pdf":
            raise GatewayError(400, f"unsupported file type {mime!r} (Anthropic accepts PDF and plain text)")
        source: dict[str, Any] = {"type": "base64", "media_type": "application/pdf", "data": payload}
    elif data.startswith(("http://", "https://")):
        source = {"type": "url", "url": data}
    else:
        # Raw base64 (OpenAI's file_data): checked and normalised like a data URL's.
        mime, payload = _decoded_base64(f"data:application/pdf;base64,{data}")
        if mime != "application/pdf":
            raise GatewayError(400, f"unsupported file type {mime!r} (Anthropic accepts PDF and plain text)")
        source = {"type": "base64", "media_type": "application/pdf", "data": payload}
    return {"type": "document", "source": source}


def _decoded_text(url: str) -> str:
    from crossroads.net.fetch import parse_data_url

    media = parse_data_url(url)
    assert media is not None
    return media.data.decode("utf-8", "replace")


def _content_blocks(content: Any, name: str | None, *, allow_media: bool) -> list[dict[str, Any]]:
    """Anthropic blocks for a user/assistant message's content, the speaker's name prefixed to its text."""
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content.strip():
            blocks.append({"type": "text", "text": f"{name}: {content}" if name else content})
        return blocks
    if not isinstance(content, list):
        return blocks
    named = not name
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str) or not text.strip():
                continue  # Anthropic rejects empty and whitespace-only text blocks
            if not named:
                text, named = f"{name}: {text}", True
            block: dict[str, Any] = {"type": "text", "text": text}
        elif kind == "image_url" and allow_media:
            block = _image_block(part)
        elif kind == "file" and allow_media:
            block = _file_block(part)
        else:
            continue  # audio, refusal parts and the like have no Anthropic counterpart
        if "cache_control" in part:
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _own_details(details: Any) -> list[dict[str, Any]]:
    """The reasoning_details entries that may be Anthropic's (unlabelled or anthropic-*): another vendor's signature
    would be rejected."""
    own = []
    for item in details if isinstance(details, list) else ():
        if isinstance(item, dict):
            fmt = item.get("format")
            if not isinstance(fmt, str) or not fmt or fmt.startswith("anthropic"):
                own.append(item)
    return own


def _thinking_blocks(details: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for item in rsn.merge_details(_own_details(details)):
        kind = item.get("type")
        if kind == rsn.TEXT and item.get("signature"):
            blocks.append({"type": "thinking", "thinking": item.get("text") or "",
                           "signature": item["signature"]})
        elif kind == rsn.ENCRYPTED and item.get("data"):
            blocks.append({"type": "redacted_thinking", "data": item["data"]})
        # Unsigned text and summaries cannot be verified by Anthropic, so they are not sent back.
    return blocks


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str) and arguments:
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {}
        if too_deep_text(arguments, value):  # Anthropic takes the arguments as an object inside the body
            raise too_deep("a tool call's arguments")
        return value if isinstance(value, dict) else {}
    return {}


def _system_parts(message: Message) -> list[dict[str, Any]]:
    content = message.get("content")
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content.strip():
            parts.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) \
                    and part["text"].strip():
                block = {"type": "text", "text": part["text"]}
                if "cache_control" in part:
                    block["cache_control"] = part["cache_control"]
                parts.append(block)
    if parts and "cache_control" in message and "cache_control" not in parts[-1]:
        parts[-1]["cache_control"] = message["cache_control"]
    return parts


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return int(value)


class AnthropicTranslator:
    __slots__ = ("adapter", "ctx", "usage", "upstream_model", "upstream_id", "exclude_reasoning", "_blocks",
                 "_tools", "_reasoning_count", "_role_sent", "_input", "_cache_read", "_cache_write")

    def __init__(self, adapter: AnthropicAdapter, ctx: RequestContext) -> None:
        self.adapter = adapter
        self.ctx = ctx
        self.usage = Usage()
        self.upstream_model: str | None = None
        self.upstream_id: str | None = None
        self.exclude_reasoning = False
        # Stream state: Anthropic block index -> (kind, ordinal among tool calls / reasoning details).
        self._blocks: dict[int, tuple[str, int]] = {}
        self._tools = 0
        self._reasoning_count = 0
        self._role_sent = False
        self._input = self._cache_read = self._cache_write = 0

    # -- request ---------------------------------------------------------------------------------------------
    async def request(self, body: ChatRequest) -> UpstreamRequest:
        return UpstreamRequest(url=self.adapter.messages_url, body=orjson.dumps(self.build(body)),
                               headers=self.adapter.headers)

    def build(self, body: ChatRequest) -> dict[str, Any]:
        """The Messages request body for a canonical chat request."""
        system: list[dict[str, Any]] = []
        turns: list[dict[str, Any]] = []

        def add(role: str, blocks: list[dict[str, Any]]) -> None:
            if not blocks:
                return
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})

        messages = body.get("messages")
        if not isinstance(messages, list):
            prompt = body.get("prompt")
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else []
        for message in messages:
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            name = message.get("name")
            name = name if isinstance(name, str) and name else None
            if role in ("system", "developer"):
                system.extend(_system_parts(message))
            elif role == "user":
                blocks = _content_blocks(message.get("content"), name, allow_media=True)
                if blocks and "cache_control" in message and "cache_control" not in blocks[-1]:
                    blocks[-1]["cache_control"] = message["cache_control"]
                add("user", blocks)
            elif role == "assistant":
                blocks = _thinking_blocks(message.get("reasoning_details"))
                text_blocks = _content_blocks(message.get("content"), name, allow_media=False)
                if text_blocks and "cache_control" in message and "cache_control" not in text_blocks[-1]:
                    text_blocks[-1]["cache_control"] = message["cache_control"]
                blocks += text_blocks
                for call in message.get("tool_calls") or ():
                    if not isinstance(call, dict):
                        continue
                    function = call.get("function") or {}
                    blocks.append({"type": "tool_use", "id": sanitise_tool_id(call.get("id")),
                                   "name": function.get("name") or "",
                                   "input": _tool_input(function.get("arguments"))})
                add("assistant", blocks)
            elif role == "tool":
                block: dict[str, Any] = {"type": "tool_result",
                                         "tool_use_id": sanitise_tool_id(message.get("tool_call_id"))}
                content = message.get("content")
                text = text_of(content)
                if text:
                    block["content"] = text
                cache = message.get("cache_control")
                if isinstance(content, list):
                    cache = next((p["cache_control"] for p in content
                                  if isinstance(p, dict) and "cache_control" in p), cache)
                if cache is not None:
                    block["cache_control"] = cache
                add("user", [block])

        for turn in turns:
            # Anthropic wants a user turn's tool results before anything else in it.
            content = turn["content"]
            if turn["role"] == "user" and len(content) > 1 and content[0]["type"] != "tool_result" \
                    and any(b["type"] == "tool_result" for b in content):
                content.sort(key=lambda b: b["type"] != "tool_result")

        prefill = bool(turns) and turns[-1]["role"] == "assistant"
        if prefill:
            # The final assistant turn is a prefill; Anthropic rejects one ending in whitespace.
            last_turn = turns[-1]["content"]
            last = last_turn[-1]
            if last["type"] == "text":
                last["text"] = last["text"].rstrip()
                if not last["text"]:
                    last_turn.pop()
            if not last_turn:
                turns.pop()

        out: dict[str, Any] = {"model": self.ctx.model.upstream}
        max_tokens = (_positive_int(body.get("max_tokens"))
                      or _positive_int(body.get("max_completion_tokens"))
                      or _positive_int(self.ctx.model.max_completion_tokens)
                      or DEFAULT_MAX_TOKENS)

        instruction = self._format_instruction(body.get("response_format"))
        if instruction:
            system.append({"type": "text", "text": instruction})
        if system:
            if any("cache_control" in b for b in system):
                out["system"] = system
            else:
                out["system"] = "\n\n".join(b["text"] for b in system)
        out["messages"] = turns

        tools = [self._tool(t) for t in body.get("tools") or ()
                 if isinstance(t, dict) and t.get("type", "function") == "function"
                 and isinstance(t.get("function"), dict) and t["function"].get("name")]
        # Anthropic refuses tool_choice without tools.
        tool_choice = self._tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")) \
            if tools else None
        if tools:
            out["tools"] = tools
        if tool_choice:
            out["tool_choice"] = tool_choice

        reasoning = body.get("reasoning")
        if rsn.excluded(reasoning):
            self.exclude_reasoning = True
        budget = self._thinking_budget(reasoning, max_tokens)
        if budget is not None and not self._thinking_allowed(turns, tool_choice, prefill):
            budget = None
        if budget is not None:
            if max_tokens <= budget:
                # The budget counts inside max_tokens; the visible answer keeps the room the client asked for.
                max_tokens = budget + max_tokens
                model_max = _positive_int(self.ctx.model.max_completion_tokens)
                if model_max and model_max > budget:
                    max_tokens = min(max_tokens, model_max)
            out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        out["max_tokens"] = max_tokens

        if budget is None:
            # Anthropic rejects sampling parameters alongside thinking, so they only go out without it.
            temperature = body.get("temperature")
            if isinstance(temperature, int | float) and not isinstance(temperature, bool):
                out["temperature"] = min(max(float(temperature), 0.0), 1.0)  # OpenAI's range is 0..2
            top_p = body.get("top_p")
            # Current Claude models refuse temperature and top_p together ("use only one"); temperature wins.
            if isinstance(top_p, int | float) and not isinstance(top_p, bool) and "temperature" not in out:
                out["top_p"] = top_p
            top_k = _positive_int(body.get("top_k"))
            if top_k:
                out["top_k"] = top_k

        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        # Anthropic rejects empty and whitespace-only stop sequences.
        stops = [s for s in stops if isinstance(s, str) and s.strip()]
        if stops:
            out["stop_sequences"] = stops
        user = body.get("user")
        if isinstance(user, str) and user:
            out["metadata"] = {"user_id": user}
        if self.ctx.stream:
            out["stream"] = True
        return out

    @staticmethod
    def _format_instruction(response_format: Any) -> str | None:
        if not isinstance(response_format, dict):
            return None
        kind = response_format.get("type")
        if kind == "json_object":
            return JSON_OBJECT_INSTRUCTION
        if kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if schema is None:
                return JSON_OBJECT_INSTRUCTION
            return JSON_SCHEMA_INSTRUCTION + orjson.dumps(schema).decode()
        return None

    @staticmethod
    def _tool(tool: dict[str, Any]) -> dict[str, Any]:
        function = tool["function"]
        out: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            out["description"] = function["description"]
        schema = function.get("parameters")
        # Anthropic requires an input_schema, even for a tool without parameters.
        out["input_schema"] = schema if isinstance(schema, dict) and schema \
            else {"type": "object", "properties": {}}
        if "cache_control" in tool:
            out["cache_control"] = tool["cache_control"]
        return out

    @staticmethod
    def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
        out: dict[str, Any] | None
        if choice == "auto":
            out = {"type": "auto"}
        elif choice == "none":
            return {"type": "none"}  # takes no other fields
        elif choice == "required":
            out = {"type": "any"}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) \
                and choice["function"].get("name"):
            out = {"type": "tool", "name": choice["function"]["name"]}
        else:
            out = None
        if parallel is False:
            out = out or {"type": "auto"}
            out["disable_parallel_tool_use"] = True
        return out

    @staticmethod
    def _thinking_budget(reasoning: Any, max_tokens: int) -> int | None:
        if not isinstance(reasoning, dict):
            return None
        effort = reasoning.get("effort")
        explicit = _positive_int(reasoning.get("max_tokens"))
        if rsn.switched_off(reasoning):
            return None
        if reasoning.get("enabled") is not True and effort is None and explicit is None:
            return None  # OpenRouter infers "enabled" from effort or max_tokens
        if explicit is not None:
            budget = explicit
        else:
            # xhigh gets medium's share here, as it always has (this adapter's table had no xhigh; Gemini's has 0.9).
            budget = rsn.effort_budget("medium" if effort == "xhigh" else effort, max_tokens)
        return max(budget, MIN_THINKING_BUDGET)

    @staticmethod
    def _thinking_allowed(turns: list[dict[str, Any]], tool_choice: dict[str, Any] | None,
                          prefill: bool) -> bool:
        """Whether Anthropic would accept thinking with this conversation; if not, thinking is dropped."""
        if tool_choice and tool_choice["type"] in ("any", "tool"):
            return False  # forced tool use is incompatible with thinking
        if prefill:
            return False  # a prefilled answer is incompatible with thinking
        # Mid tool loop, the assistant turn that called the tools must start with its thinking; clients that
        # did not echo reasoning_details cannot satisfy that, and an answer without thinking beats a 400.
        for turn in reversed(turns):
            if turn["role"] == "assistant":
                blocks = turn["content"]
                if any(b["type"] == "tool_use" for b in blocks):
                    return blocks[0]["type"] in ("thinking", "redacted_thinking")
                break
        return True

    # -- response --------------------------------------------------------------------------------------------
    def _read_usage(self, raw: dict[str, Any]) -> None:
        usage = self.usage
        usage.seen = True
        if "input_tokens" in raw:
            self._input = token_count(raw.get("input_tokens"))
        if "cache_read_input_tokens" in raw:
            self._cache_read = token_count(raw.get("cache_read_input_tokens"))
        if "cache_creation_input_tokens" in raw:
            self._cache_write = token_count(raw.get("cache_creation_input_tokens"))
        if "output_tokens" in raw:
            usage.completion_tokens = token_count(raw.get("output_tokens"))
        usage.prompt_tokens = self._input + self._cache_read + self._cache_write
        usage.cached_tokens = self._cache_read
        usage.cache_write_tokens = self._cache_write

    def response(self, raw: bytes) -> Completion:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise ValueError("upstream response is not an Anthropic message")
        self.upstream_model = string_or_none(data.get("model"))
        self.upstream_id = string_or_none(data.get("id"))
        if isinstance(data.get("usage"), dict):
            self._read_usage(data["usage"])
        texts: list[str] = []
        reasoning: list[str] = []
        details: list[ReasoningDetail] = []
        tool_calls: list[ToolCall] = []
        for block in data["content"]:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                texts.append(_text(block.get("text")))
            elif kind == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                tool_calls.append({"index": len(tool_calls), "id": _text(block.get("id")), "type": "function",
                                   "function": {"name": _text(block.get("name")), "arguments": arguments}})
            elif kind == "thinking" and not self.exclude_reasoning:
                reasoning.append(_text(block.get("thinking")))
                details.append(rsn.detail(rsn.TEXT, REASONING_FORMAT, len(details), text=_text(block.get("thinking")),
                                          signature=block.get("signature")))
            elif kind == "redacted_thinking" and not self.exclude_reasoning:
                details.append(rsn.detail(rsn.ENCRYPTED, REASONING_FORMAT, len(details), data=block.get("data")))
        message: Message = {"role": "assistant", "content": "".join(texts) if texts else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        rsn.add_to_message(message, reasoning, details)
        stop_reason = data.get("stop_reason")
        return {"choices": [{"index": 0, "message": message,
                             "finish_reason": normalise_finish_reason(stop_reason),
                             "native_finish_reason": string_or_none(stop_reason)}]}

    # -- stream ----------------------------------------------------------------------------------------------
    def _chunk(self, delta: dict[str, Any], finish: str | None = None,
               native: str | None = None) -> Chunk:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        return choice_chunk(delta, finish, native)

    def stream_event(self, event: str | None, data: bytes) -> list[Chunk]:
        payload = orjson.loads(data)
        if not isinstance(payload, dict):
            return []
        kind = payload.get("type") or event
        if kind == "content_block_delta":
            return self._block_delta(payload)
        if kind == "content_block_start":
            return self._block_start(payload)
        if kind == "message_start":
            message = payload.get("message")
            if not isinstance(message, dict):
                return []
            self.upstream_model = string_or_none(message.get("model"))
            self.upstream_id = string_or_none(message.get("id"))
            if isinstance(message.get("usage"), dict):
                self._read_usage(message["usage"])
            return []
        if kind == "message_delta":
            if isinstance(payload.get("usage"), dict):
                self._read_usage(payload["usage"])
            delta = payload.get("delta")
            stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if stop_reason is None:
                return []
            return [self._chunk({}, normalise_finish_reason(stop_reason), string_or_none(stop_reason))]
        if kind == "error":
            err = payload.get("error")
            err_type = err.get("type") if isinstance(err, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            raise UpstreamStreamError(message or err_type or "upstream stream error",
                                      code=_STREAM_ERROR_CODES.get(err_type or "", 502), raw=err)
        # content_block_stop, message_stop and ping carry nothing a client needs.
        return []

    def _block_start(self, payload: dict[str, Any]) -> list[Chunk]:
        block = payload.get("content_block")
        if not isinstance(block, dict):
            return []
        index = _block_index(payload)
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = ("text", 0)
            text = _text(block.get("text"))
            return [self._chunk({"content": text})] if text else []
        if kind == "tool_use":
            ordinal = self._tools
            self._tools += 1
            self._blocks[index] = ("tool_use", ordinal)
            initial = block.get("input")  # {} in practice: the arguments follow as input_json_delta fragments
            arguments = orjson.dumps(initial).decode() if initial else ""
            call = {"index": ordinal, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments}}
            return [self._chunk({"tool_calls": [call]})]
        if kind in ("thinking", "redacted_thinking"):
            ordinal = self._reasoning_count
            self._reasoning_count += 1
            self._blocks[index] = (kind, ordinal)
            if self.exclude_reasoning:
                return []
            if kind == "redacted_thinking":
                detail = rsn.detail(rsn.ENCRYPTED, REASONING_FORMAT, ordinal, data=block.get("data"))
                return [self._chunk({"reasoning_details": [detail]})]
            text = _text(block.get("thinking"))
            return [self._thinking_chunk(text, ordinal)] if text else []
        return []  # server tool blocks and the like have no chat-completions counterpart

    def _thinking_chunk(self, text: str, ordinal: int) -> Chunk:
        return self._chunk({"reasoning": text,
                            "reasoning_details": [rsn.detail(rsn.TEXT, REASONING_FORMAT, ordinal, text=text)]})

    def _block_delta(self, payload: dict[str, Any]) -> list[Chunk]:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta":
            text = _text(delta.get("text"))
            return [self._chunk({"content": text})] if text else []
        known = self._blocks.get(_block_index(payload))
        if kind == "input_json_delta":
            fragment = _text(delta.get("partial_json"))
            if not fragment or known is None:
                return []
            return [self._chunk({"tool_calls": [{"index": known[1], "function": {"arguments": fragment}}]})]
        if self.exclude_reasoning:
            return []
        ordinal = known[1] if known is not None else 0
        if kind == "thinking_delta":
            text = _text(delta.get("thinking"))
            return [self._thinking_chunk(text, ordinal)] if text else []
        if kind == "signature_delta":
            signature = _text(delta.get("signature"))
            if not signature:
                return []
            detail = rsn.detail(rsn.TEXT, REASONING_FORMAT, ordinal, signature=signature)
            return [self._chunk({"reasoning_details": [detail]})]
        return []  # citations_delta and future delta types

    def finish(self) -> list[Chunk]:
        return []


class AnthropicNativeTranslator(AnthropicTranslator):
    """The client already speaks the Messages API: its body goes up untouched but for `model` (and its
    `anthropic-beta` header along), and the answer is read like any other, for usage and the record."""

    __slots__ = ("native", "beta")

    def __init__(self, adapter: AnthropicAdapter, ctx: RequestContext, native: dict[str, Any],
                 beta: str | None) -> None:
        super().__init__(adapter, ctx)
        self.native = native
        self.beta = beta

    async def request(self, body: ChatRequest) -> UpstreamRequest:
        headers = self.adapter.headers if not self.beta else {**self.adapter.headers, "anthropic-beta": self.beta}
        raw = orjson.dumps({**self.native, "model": self.ctx.model.upstream})
        return UpstreamRequest(url=self.adapter.messages_url, body=raw, headers=headers)
