"""Google Gemini upstreams (the Generative Language API, ``generateContent`` / ``streamGenerateContent``).

Request: chat messages become ``contents`` (roles user/model, consecutive turns of one role merged, system text in
``systemInstruction``), media become ``inlineData`` bytes (http(s) URLs are fetched by the SSRF-guarded media fetcher,
since Gemini only reads URLs it hosts itself), tool calls/results become ``functionCall``/``functionResponse`` parts,
and sampling/reasoning/JSON-mode parameters go into ``generationConfig``.

Response: parts become content, reasoning (``thought: true`` parts) and tool calls. Gemini 2.5+ attaches opaque
``thoughtSignature``s to parts; they are handed to the client as OpenRouter-style ``reasoning_details`` entries
(``reasoning.encrypted``, format ``google-gemini-v1``) and put back on the matching part when the client sends the
conversation again — Gemini 3 refuses a function-calling turn without them.

Gemini 2.5 does not give function calls ids, so the gateway makes them: deterministic (response id, position and
name), and recognisable, so that they are not sent back as Gemini ids and the function name can be recovered from
the id alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from crossroads import reasoning as rsn
from crossroads.canonical import ChatRequest, Chunk, Completion, Message, ReasoningDetail, ToolCall
from crossroads.errors import GatewayError
from crossroads.formats.json_input import too_deep_text
from crossroads.net.fetch import FetchError, parse_data_url
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

REASONING_FORMAT = "google-gemini-v1"

# Gemini's finish reasons (google.ai.generativelanguage.v1beta.Candidate.FinishReason) in OpenRouter's set.
_FINISH_REASONS = {
    "STOP": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
    "UNEXPECTED_TOOL_CALL": "error",
    "TOO_MANY_TOOL_CALLS": "error",
    "OTHER": "error",
}

_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY", "any": "ANY"}

# Thinking budgets per reasoning effort when the client gives no explicit reasoning.max_tokens; where the fixed
# budget would not leave room for an answer (Gemini counts thoughts against the same output allowance), the effort's
# share of maxOutputTokens instead.
_EFFORT_BUDGETS = {"xhigh": 32768, "high": 24576, "medium": 8192, "low": 1024, "minimal": 512, "none": 0}

# Our generated tool-call ids: tool_<position>_<name>[_<16 hex digest of the response id>].
_GENERATED_ID = re.compile(r"^tool_(\d+)_(.+?)(?:_([0-9a-f]{16}))?$")
# Google documents this sentinel for replaying function calls whose signature was lost (Gemini 3 validates strictly).
_SKIP_SIGNATURE = "skip_thought_signature_validator"
_VERSION = re.compile(r"gemini-(\d+)(?:\.(\d+))?")
_MAX_STOP_SEQUENCES = 5  # Gemini rejects more


def normalise_finish_reason(value: Any, has_tool_calls: bool = False) -> str | None:
    if value is None:
        return None
    mapped = _FINISH_REASONS.get(value, "error") if isinstance(value, str) else "error"
    if mapped == "stop" and has_tool_calls:
        return "tool_calls"
    return mapped


def generated_tool_call_id(response_id: str | None, index: int, name: str) -> str:
    if not response_id:
        return f"tool_{index}_{name}"
    digest = hashlib.blake2b(f"{response_id}:{index}:{name}".encode(), digest_size=8).hexdigest()
    return f"tool_{index}_{name}_{digest}"


def _name_from_generated_id(call_id: str) -> str | None:
    match = _GENERATED_ID.match(call_id)
    return match.group(2) if match else None


def read_gemini_usage(meta: dict[str, Any], usage: Usage) -> None:
    thoughts = token_count(meta.get("thoughtsTokenCount"))
    usage.seen = True
    usage.prompt_tokens = token_count(meta.get("promptTokenCount"))
    usage.completion_tokens = token_count(meta.get("candidatesTokenCount")) + thoughts
    usage.reasoning_tokens = thoughts
    usage.cached_tokens = token_count(meta.get("cachedContentTokenCount"))


# -- JSON Schema -------------------------------------------------------------------------------------------------------
# responseJsonSchema / parametersJsonSchema take JSON Schema, but Google documents only this subset; other keywords
# have been seen to fail the request with 400 "Unknown name", so they are removed rather than risked.
_SCHEMA_KEYS = frozenset({
    "$id", "$defs", "$ref", "$anchor", "type", "format", "title", "description", "enum", "items", "prefixItems",
    "minItems", "maxItems", "minimum", "maximum", "anyOf", "oneOf", "properties", "additionalProperties", "required",
    "propertyOrdering",
})
_MAX_SCHEMA_DEPTH = 48


def sanitise_schema(schema: Any, depth: int = 0) -> Any:
    """Reduce a JSON Schema to the keywords Gemini's JSON-schema fields accept."""
    if not isinstance(schema, dict):
        return schema if isinstance(schema, bool) else {}
    if depth > _MAX_SCHEMA_DEPTH:
        return {}
    src = schema
    if isinstance(src.get("allOf"), list):
        # Pydantic wraps a described $ref in allOf; a shallow merge keeps the meaning for the usual cases.
        src = dict(src)
        for sub in src.pop("allOf"):
            if isinstance(sub, dict):
                for key, value in sub.items():
                    if key == "properties" and isinstance(src.get("properties"), dict) and isinstance(value, dict):
                        src["properties"] = {**src["properties"], **value}
                    elif key == "required" and isinstance(src.get("required"), list) and isinstance(value, list):
                        src["required"] = [*src["required"], *(r for r in value if r not in src["required"])]
                    else:
                        src.setdefault(key, value)
    out: dict[str, Any] = {}
    if isinstance(src.get("$ref"), str):
        # Google: when $ref is set on a sub-schema, only other `$` keywords may accompany it.
        out["$ref"] = src["$ref"].replace("#/definitions/", "#/$defs/")
        for key in ("$id", "$anchor", "$defs"):
            if key in src:
                out[key] = src[key]
        if "$defs" in out:
            out["$defs"] = _sanitise_map(out["$defs"], depth)
        return out
    for key, value in src.items():
        if key == "definitions":
            key = "$defs"
        elif key == "const":
            if _enum_value(value) and "enum" not in src:
                out["enum"] = [value]
            continue
        if key not in _SCHEMA_KEYS:
            continue
        if key in ("properties", "$defs"):
            out[key] = _sanitise_map(value, depth)
        elif key == "items":
            if isinstance(value, list):  # draft-4 tuple form
                out["prefixItems"] = [sanitise_schema(v, depth + 1) for v in value]
            else:
                out["items"] = sanitise_schema(value, depth + 1)
        elif key in ("anyOf", "oneOf", "prefixItems"):
            if isinstance(value, list):
                out[key] = [sanitise_schema(v, depth + 1) for v in value]
        elif key == "additionalProperties":
            out[key] = sanitise_schema(value, depth + 1) if isinstance(value, dict) else bool(value)
        elif key == "enum":
            values = [v for v in value if _enum_value(v)] if isinstance(value, list) else []
            if values:
                out["enum"] = values
        elif key == "required":
            if isinstance(value, list):
                props = src.get("properties")
                out["required"] = [r for r in value if isinstance(r, str) and (
                    not isinstance(props, dict) or r in props)]
        else:
            out[key] = value
    return out


def _enum_value(value: Any) -> bool:
    # Gemini documents enum for strings and numbers only (bool is an int in Python, so exclude it explicitly).
    return isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))


def _sanitise_map(value: Any, depth: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    return {k: sanitise_schema(v, depth + 1) for k, v in value.items()}


# -- model families ----------------------------------------------------------------------------------------------------

def _version(upstream: str) -> tuple[int, int] | None:
    match = _VERSION.search(upstream)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def _budget_range(upstream: str) -> tuple[int, int, bool]:
    """(minimum, maximum, may be 0) for thinkingBudget, from Google's per-model documentation."""
    name = upstream.lower()
    if "flash-lite" in name:
        return 512, 24576, True
    if "flash" in name:
        return 1, 24576, True
    if "pro" in name:
        return 128, 32768, False
    return 1, 32768, True


# -- adapter -----------------------------------------------------------------------------------------------------------

class GeminiAdapter(Adapter):
    def __init__(self, conn: ConnectionConfig) -> None:
        super().__init__(conn)
        self.base_url = conn.base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **conn.headers}
        if conn.api_key:
            self.headers["x-goog-api-key"] = conn.api_key

    def translator(self, ctx: RequestContext) -> GeminiTranslator:
        return GeminiTranslator(self, ctx)

    def native_translator(self, api: str, ctx: RequestContext, native: dict[str, Any],
                          extra: dict[str, Any]) -> GeminiEmbeddingsTranslator | None:
        return GeminiEmbeddingsTranslator(self, ctx) if api == "embeddings" else None

    def model_url(self, upstream: str, stream: bool, method: str | None = None) -> str:
        model = upstream[7:] if upstream.startswith("models/") else upstream
        # One path segment, whatever the id holds: the id must never change the path or the query the gateway's
        # key is sent to (ids are checked where they enter too; this is the last line).
        model = quote(model, safe="")
        if method is not None:
            return f"{self.base_url}/models/{model}:{method}"
        if stream:
            return f"{self.base_url}/models/{model}:streamGenerateContent?alt=sse"
        return f"{self.base_url}/models/{model}:generateContent"


class GeminiTranslator:
    __slots__ = ("adapter", "ctx", "usage", "upstream_model", "upstream_id", "_role_sent", "_tool_count",
                 "_detail_count", "_text_detail", "_finished")

    def __init__(self, adapter: GeminiAdapter, ctx: RequestContext) -> None:
        self.adapter = adapter
        self.ctx = ctx
        self.usage = Usage()
        self.upstream_model: str | None = None
        self.upstream_id: str | None = None
        self._role_sent = False
        self._tool_count = 0  # function calls seen so far: the next tool call's index
        self._detail_count = 0  # reasoning_details entries handed out so far: the next entry's index
        self._text_detail: int | None = None  # index of the reasoning.text entry thought text is appended to
        self._finished = False

    # == request =======================================================================================================
    async def request(self, body: ChatRequest) -> UpstreamRequest:
        messages = body.get("messages")
        if not isinstance(messages, list):
            prompt = body.get("prompt")
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else []
        builder = _ContentsBuilder(self.ctx)
        builder.add_messages(messages)
        await builder.fetch_pending()
        builder.restore_missing_signatures(self.ctx.model.upstream)

        out: dict[str, Any] = {"contents": builder.contents}
        if builder.system_parts:
            out["systemInstruction"] = {"parts": builder.system_parts}
        config = self._generation_config(body)
        if config:
            out["generationConfig"] = config
        tools = _tools(body.get("tools"))
        if tools:
            out["tools"] = tools
            tool_config = _tool_config(body.get("tool_choice"))
            if tool_config:
                out["toolConfig"] = tool_config
        url = self.adapter.model_url(self.ctx.model.upstream, self.ctx.stream)
        return UpstreamRequest(url=url, body=orjson.dumps(out), headers=self.adapter.headers)

    def _generation_config(self, body: ChatRequest) -> dict[str, Any]:
        config: dict[str, Any] = {}
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
            config["maxOutputTokens"] = max_tokens
        for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("seed", "seed")):
            value = body.get(src)
            if isinstance(value, int | float) and not isinstance(value, bool):
                if dst in ("topK", "seed"):
                    if value != int(value):
                        continue  # int32 fields: a fractional value would be a 400
                    value = int(value)
                config[dst] = value
        stop = body.get("stop")
        if isinstance(stop, str) and stop:
            config["stopSequences"] = [stop]
        elif isinstance(stop, list):
            stops = [s for s in stop if isinstance(s, str) and s][:_MAX_STOP_SEQUENCES]
            if stops:
                config["stopSequences"] = stops
        fmt = body.get("response_format")
        if isinstance(fmt, dict):
            kind = fmt.get("type")
            if kind == "json_object":
                config["responseMimeType"] = "application/json"
            elif kind == "json_schema":
                config["responseMimeType"] = "application/json"
                spec = fmt.get("json_schema")
                schema = spec.get("schema") if isinstance(spec, dict) else None
                if isinstance(schema, dict) and schema:
                    # responseJsonSchema takes JSON Schema as is (responseSchema wants Google's OpenAPI subset).
                    config["responseJsonSchema"] = sanitise_schema(schema)
        thinking = self._thinking_config(body, config.get("maxOutputTokens"))
        if thinking is not None:
            config["thinkingConfig"] = thinking
        return config

    def _thinking_config(self, body: ChatRequest, max_output: int | None) -> dict[str, Any] | None:
        reasoning = body.get("reasoning")
        if not isinstance(reasoning, dict):
            if body.get("include_reasoning") is True:
                reasoning = {}
            elif body.get("include_reasoning") is False:
                reasoning = {"exclude": True}
            else:
                return None
        model = self.ctx.model
        version = _version(model.upstream)
        if version is not None and version < (2, 5) and not model.reasoning:
            return None  # Gemini 2.0 and older refuse thinkingConfig
        if version is None and not model.reasoning:
            return None
        effort = reasoning.get("effort")
        budget = reasoning.get("max_tokens")
        disabled = rsn.switched_off(reasoning)
        thinking: dict[str, Any] = {"includeThoughts": not (rsn.excluded(reasoning) or disabled)}
        if version is not None and version >= (3, 0) and not isinstance(budget, int):
            # Gemini 3 takes levels (the enum names, as Google's own SDK sends them); MINIMAL and MEDIUM are not
            # accepted by every 3.x model, so Pro models only get the levels all of them take.
            pro = "pro" in model.upstream.lower()
            if disabled or effort in ("minimal", "low"):
                thinking["thinkingLevel"] = "LOW"
            elif effort == "medium":
                thinking["thinkingLevel"] = "HIGH" if pro else "MEDIUM"
            elif effort in ("high", "xhigh"):
                thinking["thinkingLevel"] = "HIGH"
            return thinking
        low, high, may_disable = _budget_range(model.upstream)
        if isinstance(budget, int) and not isinstance(budget, bool):
            value = budget
        elif disabled:
            value = 0
        elif effort in _EFFORT_BUDGETS:
            value = _EFFORT_BUDGETS[effort]
            if max_output and value >= max_output:
                value = rsn.effort_budget(effort, max_output)
        else:
            return thinking  # thinking on, the model's dynamic budget
        if value <= 0 and may_disable:
            thinking["thinkingBudget"] = 0
        else:
            thinking["thinkingBudget"] = min(max(value, low), high)
        return thinking

    # == response ======================================================================================================
    def response(self, raw: bytes) -> Completion:
        data = orjson.loads(raw)
        # streamGenerateContent without alt=sse answers a JSON array of responses; treat it like a stream.
        events = data if isinstance(data, list) else [data]
        content: list[str] = []
        reasoning: list[str] = []
        details: list[ReasoningDetail] = []
        tool_calls: list[ToolCall] = []
        finish: str | None = None
        native: str | None = None
        for event in events:
            if not isinstance(event, dict):
                continue
            if "error" in event and "candidates" not in event:
                raise ValueError(_error_message(event["error"]))
            for delta, reason, raw_reason in self._event_deltas(event):
                if reason is not None or raw_reason is not None:
                    finish, native = reason, raw_reason
                text = delta.get("content")
                if text:
                    content.append(text)
                if delta.get("reasoning"):
                    reasoning.append(delta["reasoning"])
                rsn.merge_details(delta.get("reasoning_details"), details)
                for call in delta.get("tool_calls") or ():
                    tool_calls.append({"id": call["id"], "type": "function", "function": call["function"]})
        if finish == "stop" and tool_calls:
            finish = "tool_calls"
        message: Message = {"role": "assistant", "content": "".join(content) if content or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        rsn.add_to_message(message, reasoning, details)
        return {"choices": [{"index": 0, "message": message, "finish_reason": finish,
                             "native_finish_reason": native}]}

    # == stream ========================================================================================================
    def stream_event(self, event: str | None, data: bytes) -> list[Chunk]:
        if not data or data == b"[DONE]":
            return []
        chunk = orjson.loads(data)
        if isinstance(chunk, list):  # a stray array frame: handle its elements in order
            return [c for item in chunk for c in self._chunks(item)]
        return self._chunks(chunk)

    def _chunks(self, chunk: Any) -> list[Chunk]:
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk and "candidates" not in chunk:
            err = chunk["error"]
            code = err.get("code") if isinstance(err, dict) else None
            status = code if isinstance(code, int) and 400 <= code <= 599 else 502
            raise UpstreamStreamError(_error_message(err), code=status, raw=err)
        out: list[Chunk] = []
        for delta, reason, native in self._event_deltas(chunk):
            if self._finished:
                continue
            if reason is not None or native is not None:
                self._finished = True
                out.append(choice_chunk(delta, reason, native))
                continue
            if not self._role_sent:
                delta = {"role": "assistant", **delta}
                self._role_sent = True
            out.append(choice_chunk(delta))
        return out

    def finish(self) -> list[Chunk]:
        return []

    # == shared: one GenerateContentResponse -> deltas =================================================================
    def _event_deltas(self, event: dict[str, Any]) -> list[tuple[dict[str, Any], str | None, str | None]]:
        """(delta, finish_reason, native_finish_reason) per thing the event says, in order; the finish comes last."""
        if event.get("modelVersion"):
            self.upstream_model = string_or_none(event["modelVersion"])
        if event.get("responseId"):
            self.upstream_id = string_or_none(event["responseId"])
        meta = event.get("usageMetadata")
        if isinstance(meta, dict):
            read_gemini_usage(meta, self.usage)
        candidates = event.get("candidates")
        if not candidates:
            feedback = event.get("promptFeedback")
            block = feedback.get("blockReason") if isinstance(feedback, dict) else None
            if block:
                return [({"role": "assistant", "content": ""}, "content_filter", string_or_none(block))]
            return []
        if not isinstance(candidates, list) or not isinstance(candidates[0], dict):
            raise ValueError("upstream candidates are not a list of objects")
        candidate = candidates[0]
        out: list[tuple[dict[str, Any], str | None, str | None]] = []
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if parts:
            if not isinstance(parts, list):
                raise ValueError("upstream content parts are not a list")
            for part in parts:
                if isinstance(part, dict):
                    self._part_deltas(part, out)
        native = candidate.get("finishReason")
        if native:
            out.append(({}, normalise_finish_reason(native, self._tool_count > 0), string_or_none(native)))
        return out

    def _part_deltas(self, part: dict[str, Any], out: list[tuple[dict[str, Any], str | None, str | None]]) -> None:
        signature = part.get("thoughtSignature")
        call = part.get("functionCall")
        if isinstance(call, dict):
            self._text_detail = None
            name = call.get("name") or ""
            index = self._tool_count
            self._tool_count += 1
            call_id = call.get("id") or generated_tool_call_id(self.upstream_id, index, name)
            if isinstance(signature, str) and signature:
                out.append((self._encrypted(signature, call_id), None, None))
            arguments = orjson.dumps(call.get("args") or {}).decode()
            out.append(({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                         "function": {"name": name, "arguments": arguments}}]}, None, None))
            return
        text = part.get("text")
        if part.get("thought") is True:
            if isinstance(text, str) and text:
                if self._text_detail is None:
                    self._text_detail = self._detail_count
                    self._detail_count += 1
                detail = rsn.detail(rsn.TEXT, REASONING_FORMAT, self._text_detail, text=text)
                out.append(({"reasoning": text, "reasoning_details": [detail]}, None, None))
        elif isinstance(text, str):
            if text:
                self._text_detail = None
                out.append(({"content": text}, None, None))
        if isinstance(signature, str) and signature:
            self._text_detail = None
            out.append((self._encrypted(signature, None), None, None))

    def _encrypted(self, signature: str, call_id: str | None) -> dict[str, Any]:
        index = self._detail_count
        self._detail_count += 1
        return {"reasoning_details": [rsn.detail(rsn.ENCRYPTED, REASONING_FORMAT, index, data=signature, id=call_id)]}


def _error_message(err: Any) -> str:
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    return "upstream stream error"


# -- request helpers ---------------------------------------------------------------------------------------------------

class _ContentsBuilder:
    """Chat messages -> Gemini contents. Media URLs to fetch are collected and fetched together afterwards."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.contents: list[dict[str, Any]] = []
        self.system_parts: list[dict[str, Any]] = []
        self.call_names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant messages
        self.sent_ids: set[str] = set()  # tool_call_ids sent to Gemini as functionCall.id
        self.pending: list[tuple[dict[str, Any], str, str | None]] = []  # (part, url, forced mime type)
        # Where the current turn starts (after the last user message with its own content), for signature checks.
        self.turn_start = 0

    def _append(self, role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        last = self.contents[-1] if self.contents else None
        if last is not None and last["role"] == role:
            last["parts"].extend(parts)
        else:
            self.contents.append({"role": role, "parts": parts})

    def add_messages(self, messages: list[Any]) -> None:
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            role = msg.get("role")
            if role in ("system", "developer"):
                content = msg.get("content")
                # Each text part of a system message stays its own part (joined they would run together).
                texts = [text_of([p]) for p in content] if isinstance(content, list) else [text_of(content)]
                self.system_parts.extend({"text": text} for text in texts if text)
            elif role == "user":
                parts = self._user_parts(msg.get("content"), msg.get("name"))
                if parts:
                    self._append("user", parts)
                    self.turn_start = len(self.contents) - 1
            elif role == "assistant":
                self._append("model", self._assistant_parts(msg))
            elif role in ("tool", "function"):
                self._append("user", [self._function_response(msg)])

    # -- user ----------------------------------------------------------------------------------------------------------
    def _user_parts(self, content: Any, name: Any) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            if content:
                parts.append({"text": content})
        elif isinstance(content, list):
            for item in content:
                if isinstance(item, dict):
                    part = self._content_part(item)
                    if part is not None:
                        parts.append(part)
                elif isinstance(item, str) and item:
                    parts.append({"text": item})
        _prefix_name(parts, name)
        return parts

    def _content_part(self, item: dict[str, Any]) -> dict[str, Any] | None:
        kind = item.get("type")
        if kind == "text":
            text = item.get("text")
            return {"text": text} if isinstance(text, str) and text else None
        if kind == "image_url":
            image = item.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise GatewayError(400, "image_url part without a url")
            return self._media(url, None)
        if kind == "file":
            file = item.get("file")
            if not isinstance(file, dict):
                raise GatewayError(400, "file part without a file object")
            data = file.get("file_data") or file.get("url")
            if not isinstance(data, str) or not data:
                raise GatewayError(400, "file part without file_data (file ids are not supported by this provider)")
            if data.startswith(("http://", "https://", "data:")):
                return self._media(data, "application/pdf")
            # Plain base64: OpenRouter's file parts are PDFs unless a data URL says otherwise.
            return {"inlineData": {"mimeType": "application/pdf", "data": "".join(data.split())}}
        if kind == "input_audio":
            audio = item.get("input_audio")
            if isinstance(audio, dict) and isinstance(audio.get("data"), str):
                fmt = audio.get("format") or "wav"
                return {"inlineData": {"mimeType": f"audio/{fmt}", "data": audio["data"]}}
            return None
        return None  # other part types (cache_control markers, unknown kinds) carry nothing Gemini takes

    def _media(self, url: str, default_mime: str | None) -> dict[str, Any]:
        if url[:5].lower() == "data:":
            try:
                media = parse_data_url(url)
            except FetchError as exc:
                raise GatewayError(exc.status, exc.message) from None
            assert media is not None
            mime = media.mime_type
            if default_mime and mime == "application/octet-stream":
                mime = default_mime
            return {"inlineData": {"mimeType": mime, "data": base64.b64encode(media.data).decode()}}
        if not url.lower().startswith(("http://", "https://")):
            raise GatewayError(400, "media URLs must be http(s) or data: URLs")
        part: dict[str, Any] = {"inlineData": None}
        self.pending.append((part, url, default_mime))
        return part

    async def fetch_pending(self) -> None:
        if not self.pending:
            return
        fetcher = self.ctx.media
        if fetcher is None:
            raise GatewayError(400, "this provider needs media bytes, and fetching media URLs is not enabled")

        async def one(part: dict[str, Any], url: str, default_mime: str | None) -> None:
            try:
                media = await fetcher.fetch(url)
            except FetchError as exc:
                raise GatewayError(exc.status, exc.message) from None
            mime = media.mime_type
            if default_mime and mime == "application/octet-stream":
                mime = default_mime
            part["inlineData"] = {"mimeType": mime, "data": base64.b64encode(media.data).decode()}

        await asyncio.gather(*(one(*item) for item in self.pending))

    # -- assistant -----------------------------------------------------------------------------------------------------
    def _assistant_parts(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        text = text_of(msg.get("content"))
        if text:
            parts.append({"text": text})
        _prefix_name(parts, msg.get("name"))
        by_id: dict[str, dict[str, Any]] = {}
        for call in msg.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            function = call.get("function") or {}
            name = function.get("name") or ""
            call_id = call.get("id")
            fc: dict[str, Any] = {"name": name, "args": _arguments(function.get("arguments"))}
            if isinstance(call_id, str) and call_id:
                self.call_names[call_id] = name
                if _name_from_generated_id(call_id) is None:
                    # An id Gemini (3) made itself: it wants it back, and on the matching functionResponse.
                    fc["id"] = call_id
                    self.sent_ids.add(call_id)
            part = {"functionCall": fc}
            if isinstance(call_id, str):
                by_id[call_id] = part
            parts.append(part)
        details = msg.get("reasoning_details")
        if isinstance(details, list) and parts:
            for detail in details:
                if not isinstance(detail, dict) or detail.get("type") != rsn.ENCRYPTED:
                    continue
                if detail.get("format") not in (REASONING_FORMAT, None) or not isinstance(detail.get("data"), str):
                    continue  # another vendor's signature would be refused by Gemini
                target_id = detail.get("id")
                target = by_id.get(target_id) if target_id else parts[0]
                if target is not None:
                    target["thoughtSignature"] = detail["data"]
        return parts

    def _function_response(self, msg: dict[str, Any]) -> dict[str, Any]:
        call_id = msg.get("tool_call_id")
        name = self.call_names.get(call_id) if isinstance(call_id, str) else None
        if name is None and isinstance(call_id, str):
            name = _name_from_generated_id(call_id)
        if name is None:
            name = msg.get("name") if isinstance(msg.get("name"), str) else None
        if not name:
            raise GatewayError(400, f"tool message with tool_call_id {call_id!r} matches no earlier tool call")
        text = text_of(msg.get("content"))
        response: Any = None
        if text[:1] == "{":
            try:
                response = orjson.loads(text)
            except orjson.JSONDecodeError:
                response = None
            if response is not None and too_deep_text(text, response):
                response = None  # sent as text rather than as an object deeper than a request body may be
        if not isinstance(response, dict):
            response = {"content": text}
        fr: dict[str, Any] = {"name": name, "response": response}
        if call_id in self.sent_ids:
            fr["id"] = call_id
        return {"functionResponse": fr}

    def restore_missing_signatures(self, upstream: str) -> None:
        """Gemini 3 refuses the current turn's function calls without a signature on each step's first call.

        History that went through another provider (or a client that dropped reasoning_details) has none; Google
        documents a sentinel for exactly that case, so it is used rather than failing the request.
        """
        version = _version(upstream)
        if version is None or version < (3, 0):
            return
        for content in self.contents[self.turn_start:]:
            if content["role"] != "model":
                continue
            for part in content["parts"]:
                if "functionCall" in part:
                    part.setdefault("thoughtSignature", _SKIP_SIGNATURE)
                    break


def _prefix_name(parts: list[dict[str, Any]], name: Any) -> None:
    if not isinstance(name, str) or not name:
        return
    for part in parts:
        if "text" in part:
            part["text"] = f"{name}: {part['text']}"
            return


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"arguments": raw}  # Gemini wants an object; keep what the client sent rather than fail the turn
    if too_deep_text(raw, value):
        return {"arguments": raw}
    return value if isinstance(value, dict) else {"value": value}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        return []
    declarations: list[dict[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        if not isinstance(function, dict) or not function.get("name"):
            continue
        decl: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            decl["description"] = function["description"]
        params = function.get("parameters")
        if isinstance(params, dict) and params:
            # parametersJsonSchema takes JSON Schema (`parameters` wants Google's OpenAPI subset, upper-case types).
            decl["parametersJsonSchema"] = sanitise_schema(params)
        declarations.append(decl)
    return [{"functionDeclarations": declarations}] if declarations else []


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        mode = _TOOL_CHOICE_MODES.get(choice)
        return {"functionCallingConfig": {"mode": mode}} if mode else None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None


# -- embeddings --------------------------------------------------------------------------------------------------------
GEMINI_MAX_BATCH = 100  # inputs per batchEmbedContents request (the API refuses more)
# Gemini's task types for OpenRouter's free-form `input_type` (anything else is not sent).
_TASK_TYPES = {"query": "RETRIEVAL_QUERY", "search_query": "RETRIEVAL_QUERY", "document": "RETRIEVAL_DOCUMENT",
               "search_document": "RETRIEVAL_DOCUMENT", "classification": "CLASSIFICATION",
               "clustering": "CLUSTERING", "semantic_similarity": "SEMANTIC_SIMILARITY"}
_EMBED_CHARS_PER_TOKEN = 4  # Gemini reports no token count for embeddings: what is billed is estimated


class GeminiEmbeddingsTranslator:
    """OpenAI's embeddings request as one batchEmbedContents call (`dimensions` -> `outputDimensionality`); the
    vectors come back as floats in input order. Gemini embeds text only, at most GEMINI_MAX_BATCH inputs a call."""

    __slots__ = ("adapter", "ctx", "usage", "upstream_model", "upstream_id", "_estimate")

    def __init__(self, adapter: GeminiAdapter, ctx: RequestContext) -> None:
        self.adapter = adapter
        self.ctx = ctx
        self.usage = Usage()
        self.upstream_model: str | None = None
        self.upstream_id: str | None = None
        self._estimate = 0

    async def request(self, body: dict[str, Any]) -> UpstreamRequest:
        inputs = body["input"]
        if not isinstance(inputs[0], str):
            raise GatewayError(400, f"Invalid request: model {self.ctx.model.id!r} (Gemini) embeds text; token-id "
                                    "inputs cannot be sent to it", metadata={"field": "input"})
        if len(inputs) > GEMINI_MAX_BATCH:
            raise GatewayError(400, f"Invalid request: 'input' has {len(inputs)} items; Gemini embeds at most "
                                    f"{GEMINI_MAX_BATCH} per request: split them", metadata={"field": "input"})
        upstream = self.ctx.model.upstream
        name = upstream if upstream.startswith("models/") else f"models/{upstream}"
        extra: dict[str, Any] = {}
        if body.get("dimensions") is not None:
            extra["outputDimensionality"] = body["dimensions"]
        task = _TASK_TYPES.get(str(body.get("input_type") or "").lower())
        if task is not None:
            extra["taskType"] = task
        requests = [{"model": name, "content": {"parts": [{"text": text}]}, **extra} for text in inputs]
        self._estimate = sum(-(-len(text) // _EMBED_CHARS_PER_TOKEN) for text in inputs)
        return UpstreamRequest(url=self.adapter.model_url(upstream, False, "batchEmbedContents"),
                               body=orjson.dumps({"requests": requests}), headers=self.adapter.headers)

    def response(self, raw: bytes) -> dict[str, Any]:
        data = orjson.loads(raw)
        items = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("values"), list)
                                                   for i in items):
            raise ValueError("upstream response has no embeddings")
        self.usage.seen = True
        meta = data.get("usageMetadata")
        counted = meta.get("promptTokenCount") if isinstance(meta, dict) else None
        self.usage.prompt_tokens = token_count(counted) if type(counted) is int else self._estimate
        return {"data": [item["values"] for item in items], "model": self.ctx.model.upstream}

    def stream_event(self, event: str | None, data: bytes) -> list[Chunk]:
        raise ValueError("embeddings do not stream")

    def finish(self) -> list[Chunk]:
        return []
