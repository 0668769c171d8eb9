"""The gateway's API as an OpenAPI 3.1 document, served at GET /api/v1/openapi.json (and /v1/openapi.json).

Written from what the handlers really answer (api/app.py's route tables, api/account.py, api/workspaces.py,
api/stored.py, api/models.py and the formats/ renderers), and checked against live answers by tests/api/test_openapi.py:
every path and method here is served, every API route the gateway registers is here, and the bodies of the test
suite's requests validate against these schemas. Response schemas require the fields every answer has and leave
`additionalProperties` open (fields are added over time, and pass-through answers carry the upstream's own).

The document is built once, at import, and serialised once: the endpoint answers the same bytes every time.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import orjson

from crossroads import __version__
from crossroads.api.asgi import Request, respond
from crossroads.api.models import MAX_PAGE, SORTS

Schema = dict[str, Any]
# Property schemas spread into obj(**...): typed Any, as to mypy a dict[str, Schema] spread could fill obj's
# `required` or `doc`.
Properties = dict[str, Any]
# A path item: its methods' operations, and "parameters" (a list).
PathItem = dict[str, Any]

PREFIX = "/api/v1"
# Paths served under /api/v1 only (api/app.py registers the workspaces API under that prefix alone); every other
# /api/v1 path is served under /v1 too.
API_V1_ONLY = (f"{PREFIX}/workspaces",)
JSON = "application/json"
SSE = "text/event-stream"


# -- schema helpers ----------------------------------------------------------------------------------------------------
def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple[str, ...] | list[str] = (), doc: str | None = None, **properties: Any) -> Schema:
    """An object with these properties (others allowed), `required` of them always present."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if doc:
        schema["description"] = doc
    return schema


def arr(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def null(schema: Schema) -> Schema:
    """`schema` or null (OpenAPI 3.1: a JSON Schema type list, or anyOf for a $ref)."""
    if "$ref" in schema or "type" not in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    out = {**schema, "type": [*kinds, "null"]}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def s(description: str | None = None, **extra: Any) -> Schema:
    return {"type": "string", **extra, **({"description": description} if description else {})}


def i(description: str | None = None, **extra: Any) -> Schema:
    return {"type": "integer", **extra, **({"description": description} if description else {})}


def n(description: str | None = None, **extra: Any) -> Schema:
    return {"type": "number", **extra, **({"description": description} if description else {})}


def b(description: str | None = None) -> Schema:
    return {"type": "boolean", **({"description": description} if description else {})}


ANY_OBJECT: Schema = {"type": "object"}
RESET = null(s("When the limit resets (null: never)", enum=["daily", "weekly", "monthly"]))


# -- components: errors ------------------------------------------------------------------------------------------------
ERRORS: dict[str, Schema] = {
    "Error": obj(["error"], "OpenRouter's error shape: `error.code` is the HTTP status; `error.metadata.code` (when "
                            "present) names the cause, `error.metadata.field` the request field at fault.",
                 error=obj(["code", "message"], code=i("The HTTP status"), message=s(), metadata=ANY_OBJECT)),
    "AnthropicError": obj(["type", "error"], "Anthropic's error shape (the Messages endpoints)",
                          type=s(const="error"), error=obj(["type", "message"], type=s(), message=s())),
    "OpenAIError": obj(["error"], "The Responses endpoints' errors: OpenRouter's shape (`error.code` the HTTP status, as "
                                  "both OpenRouter SDKs require) with OpenAI's `type` and `param` beside it",
                       error=obj(["code", "message", "type"], code=i("The HTTP status"), message=s(), type=s(),
                                 param=null(s()), metadata=ANY_OBJECT)),
}


# -- components: inference -----------------------------------------------------------------------------------------
ROUTING_FIELDS: dict[str, Schema] = {
    "models": arr(s(minLength=1), description="Fallback models, tried in order"),
    "provider": obj(doc="Provider preferences over connection names: order, only, ignore, allow_fallbacks, "
                        "require_parameters, data_collection, sort, max_price"),
    "transforms": arr(s(), description='["middle-out"] compresses an over-long prompt; [] turns it off'),
    "plugins": arr(ANY_OBJECT),
    "user": s(),
    "metadata": ANY_OBJECT,
}
SAMPLING: dict[str, Schema] = {
    "temperature": n(), "top_p": n(), "top_k": n(), "min_p": n(), "top_a": n(), "frequency_penalty": n(),
    "presence_penalty": n(), "repetition_penalty": n(), "seed": i(), "logit_bias": ANY_OBJECT,
    "stop": {"anyOf": [s(), arr(s())]},
}
CONTENT_PART = obj(["type"], type=s(), text=s())
CHAT_MESSAGE = obj(["role"], role=s(enum=["system", "developer", "user", "assistant", "tool"]),
                   content=null({"anyOf": [s(), arr(CONTENT_PART)]}), name=s(), tool_call_id=s(),
                   tool_calls=arr(obj(["function"], id=s(), type=s(), function=obj(name=s(), arguments=s()))))
EXAMPLE_MODEL = "openai/gpt-4o-mini"

CHAT_USAGE = obj(
    ["prompt_tokens", "completion_tokens", "total_tokens", "cost"],
    prompt_tokens=i(), completion_tokens=i(), total_tokens=i(), cost=n("What the request cost, in USD"),
    is_byok=b(), prompt_tokens_details=obj(cached_tokens=i(), cache_write_tokens=i()),
    completion_tokens_details=obj(reasoning_tokens=i()),
    cost_details=obj(upstream_inference_cost=n(), upstream_inference_prompt_cost=n(),
                     upstream_inference_completions_cost=n()))

INFERENCE: dict[str, Schema] = {
    "ChatCompletionRequest": {
        **obj(["model"], "OpenAI's chat completions request as OpenRouter extends it. `model` (or `models`) and "
                         "`messages` (or a bare `prompt`) are required; other fields pass through to the upstream.",
              model=s("A model id from /api/v1/models, a route, or <connection>/<upstream model>", minLength=1,
                      maxLength=256),
              messages=arr(CHAT_MESSAGE, minItems=1), prompt=s(), stream=b(),
              stream_options=obj(include_usage=b()), max_tokens=i(minimum=1), max_completion_tokens=i(minimum=1),
              tools=arr(obj(["function"], type=s(), function=obj(["name"], name=s(), description=s(),
                                                                   parameters=ANY_OBJECT))),
              tool_choice={"anyOf": [s(), ANY_OBJECT]}, parallel_tool_calls=b(),
              response_format=obj(["type"], type=s(enum=["text", "json_object", "json_schema"]),
                                  json_schema=ANY_OBJECT),
              reasoning=obj(effort=s(), max_tokens=i(), enabled=b(), exclude=b()), reasoning_effort=s(),
              include_reasoning=b(), **SAMPLING, **ROUTING_FIELDS),
        "examples": [{"model": EXAMPLE_MODEL, "messages": [{"role": "user", "content": "Hello"}]}],
    },
    "ChatCompletion": obj(
        ["id", "object", "created", "model", "choices", "usage"],
        id=s(), object=s(const="chat.completion"), created=i(), model=s(), provider=s("The connection that answered"),
        system_fingerprint=null(s()), service_tier=null(s()),
        choices=arr(obj(["message", "finish_reason"], index=i(), finish_reason=null(s()),
                        native_finish_reason=null(s()), logprobs=null(ANY_OBJECT),
                        message=obj(["role"], role=s(), content=null(s()), refusal=null(s()), reasoning=null(s()),
                                    reasoning_details=arr(ANY_OBJECT), tool_calls=arr(ANY_OBJECT)))),
        usage=CHAT_USAGE),
    "CompletionRequest": {
        **obj(["model", "prompt"], "OpenAI's legacy completions request: one prompt, one choice.",
              model=s(minLength=1, maxLength=256),
              prompt={"anyOf": [s(), arr(s(), minItems=1, maxItems=1)]}, stream=b(), max_tokens=i(minimum=1),
              echo=b(), best_of=i(), n=i(), suffix=null(s()), logprobs=null(i()), **SAMPLING, **ROUTING_FIELDS),
        "examples": [{"model": EXAMPLE_MODEL, "prompt": "Once upon a time"}],
    },
    "Completion": obj(
        ["id", "object", "created", "model", "choices", "usage"],
        id=s(), object=s(const="text_completion"), created=i(), model=s(),
        choices=arr(obj(["text", "index", "finish_reason"], text=s(), index=i(), logprobs=null(ANY_OBJECT),
                        finish_reason=null(s(enum=["stop", "length", "content_filter"])))),
        usage=obj(["prompt_tokens", "completion_tokens", "total_tokens", "cost"], prompt_tokens=i(),
                  completion_tokens=i(), total_tokens=i(), cost=n())),
    "MessagesRequest": {
        **obj(["model", "max_tokens", "messages"], "Anthropic's Messages request.",
              model=s(minLength=1, maxLength=256), max_tokens=i(minimum=1),
              messages=arr(obj(["role", "content"], role=s(enum=["user", "assistant"]),
                               content={"anyOf": [s(), arr(CONTENT_PART)]}), minItems=1),
              system={"anyOf": [s(), arr(CONTENT_PART)]}, stream=b(), temperature=n(), top_p=n(), top_k=n(),
              stop_sequences=arr(s()), tools=arr(ANY_OBJECT), tool_choice=ANY_OBJECT, thinking=ANY_OBJECT,
              metadata=ANY_OBJECT, cache_control=ANY_OBJECT),
        "examples": [{"model": EXAMPLE_MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}],
    },
    "Message": obj(
        ["id", "type", "role", "model", "content", "stop_reason", "usage"], "Anthropic's Message",
        id=s(), type=s(const="message"), role=s(const="assistant"), model=s(),
        content=arr(obj(["type"], type=s(), text=s(), id=s(), name=s(), input=ANY_OBJECT, thinking=s())),
        stop_reason=null(s()), stop_sequence=null(s()),
        usage=obj(["input_tokens", "output_tokens"], input_tokens=i(), output_tokens=i(),
                  cache_read_input_tokens=null(i()), cache_creation_input_tokens=null(i()))),
    "CountTokensRequest": {
        **obj(["model", "messages"], "Anthropic's count_tokens request (a Messages request without max_tokens)",
              model=s(minLength=1, maxLength=256),
              messages=arr(obj(["role", "content"], role=s(enum=["user", "assistant"]),
                               content={"anyOf": [s(), arr(CONTENT_PART)]}), minItems=1),
              system={"anyOf": [s(), arr(CONTENT_PART)]}, tools=arr(ANY_OBJECT)),
        "examples": [{"model": EXAMPLE_MODEL, "messages": [{"role": "user", "content": "Hello"}]}],
    },
    "TokenCount": obj(["input_tokens"], "The gateway's own estimate (no upstream call): the number credit checks use",
                      input_tokens=i(minimum=0)),
    "ResponsesRequest": {
        **obj(["model"], "OpenAI's Responses request. `store` (default true) keeps the response for "
                         "`previous_response_id`, scoped to the key.",
              model=s(minLength=1, maxLength=256), input={"anyOf": [s(), arr(ANY_OBJECT)]}, instructions=s(),
              previous_response_id=s(), store=b(), stream=b(), max_output_tokens=i(minimum=1), temperature=n(),
              top_p=n(), tools=arr(ANY_OBJECT), tool_choice={"anyOf": [s(), ANY_OBJECT]}, parallel_tool_calls=b(),
              text=ANY_OBJECT, reasoning=ANY_OBJECT, metadata=ANY_OBJECT, user=s(),
              models=ROUTING_FIELDS["models"], provider=ROUTING_FIELDS["provider"]),
        "examples": [{"model": EXAMPLE_MODEL, "input": "Hello"}],
    },
    "Response": obj(
        ["id", "object", "created_at", "status", "model", "output"], "OpenAI's Response",
        id=s(), object=s(const="response"), created_at=n(), model=s(), error=null(ANY_OBJECT),
        status=s(enum=["completed", "incomplete", "failed", "in_progress", "queued", "cancelled"]),
        incomplete_details=null(ANY_OBJECT), output=arr(obj(["type"], type=s(), id=s(), status=s())),
        usage=null(obj(["input_tokens", "output_tokens", "total_tokens"], input_tokens=i(), output_tokens=i(),
                       total_tokens=i(), input_tokens_details=ANY_OBJECT, output_tokens_details=ANY_OBJECT))),
    "ResponseDeleted": obj(["id", "object", "deleted"], id=s(), object=s(const="response"), deleted=b()),
    "EmbeddingsRequest": {
        **obj(["model", "input"], "OpenAI's embeddings request",
              model=s(minLength=1, maxLength=256),
              input={"anyOf": [s(), arr(s()), arr(i()), arr(arr(i()))]},
              dimensions=i(minimum=1), encoding_format=s(enum=["float", "base64"]), user=s(), input_type=s(),
              models=ROUTING_FIELDS["models"], provider=ROUTING_FIELDS["provider"]),
        "examples": [{"model": "openai/text-embedding-3-small", "input": "Hello"}],
    },
    "Embeddings": obj(
        ["object", "data", "model", "usage"],
        id=s(), object=s(const="list"), model=s(), provider=s(),
        data=arr(obj(["object", "index", "embedding"], object=s(const="embedding"), index=i(),
                     embedding={"anyOf": [arr(n()), s("base64 of little-endian float32s")]})),
        usage=obj(["prompt_tokens", "total_tokens"], prompt_tokens=i(), total_tokens=i(), cost=n())),
}


# -- components: models and providers ----------------------------------------------------------------------------------
PRICING = obj(["prompt", "completion"], "USD per token (per request, per image) as decimal strings; \"-1\": varies",
              prompt=s(), completion=s(), request=s(), image=s(), input_cache_read=s(), input_cache_write=s())
ARCHITECTURE = obj(["modality", "input_modalities", "output_modalities"], modality=s(),
                   input_modalities=arr(s()), output_modalities=arr(s()), tokenizer=null(s()),
                   instruct_type=null(s()))
PERCENTILES = null(ANY_OBJECT)
MODELS: dict[str, Schema] = {
    "Model": obj(
        ["id", "canonical_slug", "name", "created", "description", "context_length", "architecture", "pricing",
         "top_provider", "supported_parameters"],
        id=s(), canonical_slug=s(), hugging_face_id=null(s()), name=s(), created=i(), description=null(s()),
        context_length=null(i()), architecture=ARCHITECTURE, pricing=PRICING,
        top_provider=obj(context_length=null(i()), max_completion_tokens=null(i()), is_moderated=b()),
        per_request_limits=null(ANY_OBJECT), supported_parameters=arr(s()), default_parameters=null(ANY_OBJECT),
        supported_voices=null(arr(s())), links=obj(details=s()),
        dimensions=i("An embedding model's default vector size")),
    "ModelList": obj(["data", "total_count", "links"], data=arr(ref("Model")), total_count=i(),
                     links=obj(["next"], next=null(s("The next page's URL, null on the last page")))),
    "ModelCount": obj(["data"], data=obj(["count"], count=i())),
    "ModelEndpoints": obj(["data"], data=obj(
        ["id", "name", "architecture", "endpoints"], id=s(), name=s(), created=i(), description=null(s()),
        architecture=ARCHITECTURE,
        endpoints=arr(obj(
            ["name", "model_id", "provider_name", "pricing", "status"],
            name=s("<connection> | <upstream model>"), model_id=s(), model_name=s(), context_length=null(i()),
            pricing=PRICING, provider_name=s(), provider_type=s(), tag=s(), quantization=null(s()),
            max_completion_tokens=null(i()), max_prompt_tokens=null(i()), supported_parameters=arr(s()),
            status=i("0 ok, -5 probing, -10 ejected by a circuit breaker"),
            uptime_last_5m=null(n()), uptime_last_30m=null(n()), uptime_last_1d=null(n()),
            latency_last_30m=PERCENTILES, throughput_last_30m=PERCENTILES, data_collection=null(s()),
            supports_implicit_caching=b())))),
    "ProviderList": obj(["data"], data=arr(obj(
        ["name", "slug", "type", "models"], name=s(), slug=s(), type=s("The connection's provider type"),
        models=i("How many models it serves"), privacy_policy_url=null(s()), terms_of_service_url=null(s()),
        status_page_url=null(s())))),
}


# -- components: keys, credits, generations, activity ------------------------------------------------------------------
USAGE_FIELDS: Properties = {name: n() for name in ("usage", "usage_daily", "usage_weekly", "usage_monthly",
                                                   "byok_usage", "byok_usage_daily", "byok_usage_weekly",
                                                   "byok_usage_monthly")}
KEY_BODY_FIELDS: Properties = {
    "limit": null(n("Credit limit in USD", minimum=0)), "limit_reset": RESET,
    "expires_at": null(s("ISO-8601 date-time", format="date-time")),
    "allowed_models": null(arr(s(), description="Model ids or patterns this key may use (null: all)")),
    "disabled": b(), "rpm": null(i(minimum=1)), "tpm": null(i(minimum=1)),
    "priority": s(enum=["high", "normal", "low"]),
}
ACCOUNT: dict[str, Schema] = {
    "Key": obj(
        ["hash", "name", "label", "disabled", "limit", "limit_remaining", "limit_reset", "usage", "created_at",
         "is_management_key", "workspace_id", "environment_id"],
        hash=s(), name=s(), label=s(), disabled=b(), limit=null(n()), limit_remaining=null(n()), limit_reset=RESET,
        include_byok_in_limit=b(), **USAGE_FIELDS, created_at=null(s()), updated_at=null(s()),
        last_used_at=null(s()), expires_at=null(s()), allowed_models=null(arr(s())), is_management_key=b(),
        rpm=null(i()), tpm=null(i()), priority=s(), creator_user_id=null(s()), external_user=null(s()),
        workspace_id=null(s()), environment_id=null(s())),
    "KeyData": obj(["data"], data=ref("Key")),
    "KeyList": obj(["data"], data=arr(ref("Key"))),
    "KeyCreated": obj(["data", "key"], data=ref("Key"), key=s("The key itself: shown this once")),
    "KeyCreate": {
        **obj(["name"], name=s(minLength=1, pattern=r"\S"), **KEY_BODY_FIELDS,
              management=b("A management key (manages keys and workspaces; no inference)"), is_management_key=b(),
              workspace=s("Workspace id or name (default: the caller's)", minLength=1),
              environment=s("Environment id or name (default: default)", minLength=1),
              member=s("The member (user id or email) the key belongs to", minLength=1)),
        "examples": [{"name": "ci", "limit": 5, "limit_reset": "monthly"}],
    },
    "KeyUpdate": obj(name=s(minLength=1, pattern=r"\S"), **KEY_BODY_FIELDS),
    "CurrentKey": obj(["data"], data=obj(
        ["label", "limit", "limit_remaining", "usage", "is_management_key", "rate_limit", "budgets"],
        label=s(), limit=null(n()), limit_remaining=null(n()), limit_reset=RESET, **USAGE_FIELDS,
        include_byok_in_limit=b(), expires_at=null(s()), creator_user_id=null(s()), workspace_id=null(s()),
        environment_id=null(s()), is_management_key=b(), is_free_tier=b(), is_provisioning_key=b(),
        rate_limit=obj(["requests", "interval"], requests=i("-1: no limit"), interval=s(), note=s()),
        allowed_data_regions=arr(s()),
        budgets=arr(ref("KeyBudget"), description="Every budget above the key with this period's spend"),
        effective_budget=null(ref("KeyBudget")), free_model_daily_requests=ANY_OBJECT,
        organization_id=null(s()))),
    "KeyBudget": obj(
        ["scope", "name", "limit_usd", "spend_usd", "remaining_usd", "reset_interval"],
        scope=s(enum=["key_limit", "environment", "member", "workspace"]), name=null(s()), budget_id=null(s()),
        guardrail_id=null(s()), include_byok=b(), limit_usd=n(), spend_usd=n(), remaining_usd=n(),
        reset_interval=RESET, resets_at=null(s())),
    "Deleted": obj(["deleted"], deleted={"const": True}),
    "Credits": obj(["data"], data=obj(["total_credits", "total_usage"], total_credits=n(), total_usage=n())),
    "Generation": obj(["data"], data=obj(
        ["id", "model", "total_cost", "tokens_prompt", "tokens_completion", "streamed", "created_at", "status"],
        id=s(), model=s(), provider_name=null(s()), total_cost=n(), usage=n(), upstream_inference_cost=n(),
        tokens_prompt=null(i()), tokens_completion=null(i()), native_tokens_reasoning=null(i()),
        native_tokens_cached=null(i()), latency=null(i("milliseconds")), generation_time=null(i()),
        time_to_first_token=null(i()), streamed=b(), cancelled=null(b()), finish_reason=null(s()),
        native_finish_reason=null(s()), api_type=s(), endpoint=null(s("The API the client spoke")),
        events=null(arr({})), created_at=null(s()), workspace_id=null(s()), environment_id=null(s()),
        user_id=null(s()), status=i("The HTTP status the client got"), error=null(s()), key_hash=null(s()),
        provider_responses=arr(ANY_OBJECT, description="Every upstream attempt"))),
    "Activity": obj(["data"], data=arr(obj(
        ["date", "model", "usage", "requests", "prompt_tokens", "completion_tokens"],
        date=s(), model=s(), model_permaslug=s(), endpoint_id=s(), provider_name=null(s()), key_hash=null(s()),
        usage=n(), byok_usage_inference=n(), requests=i(), prompt_tokens=i(), completion_tokens=i(),
        reasoning_tokens=i(), cached_tokens=i()))),
    "AuthKeysRequest": obj(["code"], code=s(minLength=1), code_verifier=s(),
                           code_challenge_method=s(enum=["S256", "plain"])),
    "AuthKeysResponse": obj(["key", "user_id"], key=s(), user_id=null(s())),
}


# -- components: workspaces --------------------------------------------------------------------------------------------
PAGED: Properties = {"total_count": i()}
WORKSPACES: dict[str, Schema] = {
    "Budget": obj(["limit", "limit_reset", "usage", "limit_remaining"], limit=null(n()), limit_reset=RESET,
                  usage=n("This period's spend"), limit_remaining=null(n())),
    # {limit, limit_reset} and no other field (the gateway refuses others), or null.
    "BudgetInput": {"anyOf": [{**obj(limit=null(n(minimum=0, exclusiveMaximum=1e15)), limit_reset=RESET),
                               "additionalProperties": False}, {"type": "null"}],
                    "description": "{limit (USD), limit_reset}, or null: no budget"},
    "Workspace": obj(["id", "name", "slug", "budget", "environments", "members", "created_at"],
                     id=s(), name=s(), slug=s(), budget=ref("Budget"), environments=arr(ref("Environment")),
                     members=i("How many members"), created_at=null(s()), updated_at=null(s()),
                     description=null(s()), created_by=null(s())),
    "WorkspaceData": obj(["data"], data=ref("Workspace")),
    "WorkspaceList": obj(["data", "total_count"], data=arr(ref("Workspace")), **PAGED),
    "WorkspaceCreate": {**obj(["name"], name=s(minLength=1, maxLength=200, pattern="^[^/]*\\S[^/]*$"),
                              budget=ref("BudgetInput")),
                        "examples": [{"name": "research", "budget": {"limit": 100, "limit_reset": "monthly"}}]},
    "WorkspaceUpdate": obj(name=s(minLength=1, maxLength=200, pattern="^[^/]*\\S[^/]*$"), budget=ref("BudgetInput")),
    "Environment": obj(["id", "workspace_id", "name", "budget"], id=s(), workspace_id=s(), name=s(),
                       budget=ref("Budget"), created_at=null(s()), updated_at=null(s())),
    "EnvironmentData": obj(["data"], data=ref("Environment")),
    "EnvironmentList": obj(["data"], data=arr(ref("Environment"))),
    "EnvironmentCreate": obj(["name"], name=s(minLength=1, maxLength=200, pattern="^[^/]*\\S[^/]*$"),
                             budget=ref("BudgetInput")),
    "EnvironmentUpdate": obj(name=s(minLength=1, maxLength=200, pattern="^[^/]*\\S[^/]*$"),
                             budget=ref("BudgetInput")),
    "Member": obj(["id", "workspace_id", "user_id", "email", "role", "budget"], id=s(), workspace_id=s(),
                  user_id=s(), email=null(s()), role=s(enum=["owner", "admin", "member", "viewer"]),
                  budget=ref("Budget"), created_at=null(s()), updated_at=null(s())),
    "MemberData": obj(["data"], data=ref("Member")),
    "MemberList": obj(["data", "total_count"], data=arr(ref("Member")), **PAGED),
    "MemberCreate": {**obj(["email"], "The person is created when new",
                           email=s(format="email", maxLength=320), role=s(enum=["owner", "admin", "member", "viewer"]),
                           budget=ref("BudgetInput"), password=s("For the dashboard", minLength=8)),
                     "examples": [{"email": "ann@example.com", "role": "member"}]},
    "MemberUpdate": obj(role=s(enum=["owner", "admin", "member", "viewer"]), budget=ref("BudgetInput")),
    "UserIds": obj(["user_ids"], user_ids=arr(s(minLength=1), minItems=1, maxItems=500)),
    "MembersAdded": obj(["added_count", "data"], added_count=i(), data=arr(ref("Member"))),
    "MembersRemoved": obj(["removed_count"], removed_count=i()),
    "WorkspaceBudget": obj(["id", "workspace_id", "limit_usd", "reset_interval"], id=s(), workspace_id=s(),
                           limit_usd=n(), reset_interval=RESET, created_at=null(s()), updated_at=null(s())),
    "WorkspaceBudgetData": obj(["data", "include_byok_in_budgets"], data=ref("WorkspaceBudget"),
                               include_byok_in_budgets=b()),
    "WorkspaceBudgetList": obj(["data", "include_byok_in_budgets"], data=arr(ref("WorkspaceBudget")),
                               include_byok_in_budgets=b()),
    "WorkspaceBudgetSet": obj(["limit_usd"], limit_usd=n(exclusiveMinimum=0, exclusiveMaximum=1e15)),
}

OPERATIONS_SCHEMAS: dict[str, Schema] = {
    "Health": obj(["status"], status=s()),
    "Readiness": obj(["status", "checks"], status=s(enum=["ready", "not_ready", "starting"]),
                     checks={"type": "object", "additionalProperties": obj(["ok"], ok=b(), error=s())}),
}


# -- paths -------------------------------------------------------------------------------------------------------------
# The error shape of each client API family: OpenRouter's, Anthropic Messages', OpenAI Responses'.
ERROR_REFS = {"openrouter": "Error", "messages": "AnthropicError", "responses": "OpenAIError"}


def _body(schema: str) -> Schema:
    return {"required": True, "content": {JSON: {"schema": ref(schema)}}}


def op(summary: str, tag: str, ok: str | None, *, status: str = "200", body: str | None = None,
       errors: str = "openrouter", stream: bool = False, public: bool = False, params: list[Schema] | None = None,
       description: str | None = None, ok_description: str = "OK") -> Schema:
    """One operation: its success answer (`ok`, a schema name), its error shape for every other status."""
    content: Schema = {JSON: {"schema": ref(ok)}} if ok else {JSON: {"schema": {}}}
    if stream:
        content[SSE] = {}  # the format's own events; no schema (each is a JSON `data:` line, or a comment)
        ok_description += "; with `stream: true`, server-sent events in the format's own stream shape"
    error = {"description": "An error, in this endpoint's error shape",
             "content": {JSON: {"schema": ref(ERROR_REFS[errors])}}}
    out: Schema = {"summary": summary, "tags": [tag], "responses": {status: {"description": ok_description,
                                                                             "content": content}}}
    if not public:
        out["responses"]["401"] = {**error, "description": "No key, or an invalid, disabled or expired one"}
    out["responses"]["default"] = error
    if description:
        out["description"] = description
    if body:
        out["requestBody"] = _body(body)
    if params:
        out["parameters"] = params
    if public:
        out["security"] = []
    return out


def path_param(name: str, description: str, **extra: Any) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": s(minLength=1, **extra)}


def query(name: str, schema: Schema, description: str, required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


WORKSPACE = path_param("workspace", "Workspace id, name or slug")
ENVIRONMENT = path_param("environment", "Environment id or name")
MEMBER = path_param("member", "A member's user id or email")
INTERVAL = {"name": "interval", "in": "path", "required": True, "description": "The budget's interval",
            "schema": s(enum=["daily", "weekly", "monthly", "lifetime"])}
PAGING = [query("offset", i(minimum=0), "Skip this many"), query("limit", i(minimum=1, maximum=500), "At most this many "
                                                                                                   "(default 50)")]

MODEL_QUERY = [
    query("output_modalities", s(), "Comma-separated output modalities a listed model has any of, or `all` "
          "(default: text)"),
    query("input_modalities", s(), "Comma-separated input modalities a listed model has all of"),
    query("supported_parameters", s(), "Comma-separated parameters a listed model supports all of"),
    query("q", s(), "Text in the model's id or name"),
    query("context", i(minimum=0), "Minimum context length"),
    query("min_price", n(minimum=0), "Minimum prompt price, USD per million tokens"),
    query("max_price", n(minimum=0), "Maximum prompt price, USD per million tokens"),
    query("min_output_price", n(minimum=0), "Minimum completion price, USD per million tokens"),
    query("max_output_price", n(minimum=0), "Maximum completion price, USD per million tokens"),
    query("arch", s(), "The model family (its tokenizer: GPT, Claude, Gemini, ...)"),
    query("model_authors", s(), "Comma-separated authors (the id's first part)"),
    query("providers", s(), "Comma-separated connection names or provider types serving the model"),
    query("zdr", s(enum=["true", "false"]), "true: only models with a connection that keeps no prompts"),
    query("min_age_days", i(minimum=0), "Listed at least this many days ago (`created`)"),
    query("max_age_days", i(minimum=0), "Listed at most this many days ago (`created`)"),
]
W = f"{PREFIX}/workspaces/{{workspace}}"
PATHS: dict[str, PathItem] = {
    f"{PREFIX}/chat/completions": {"post": op("Chat completions", "inference", "ChatCompletion", stream=True,
                                              body="ChatCompletionRequest")},
    f"{PREFIX}/completions": {"post": op("Legacy completions", "inference", "Completion", stream=True,
                                         body="CompletionRequest")},
    f"{PREFIX}/messages": {"post": op("Anthropic Messages", "inference", "Message", stream=True,
                                      body="MessagesRequest", errors="messages")},
    f"{PREFIX}/messages/count_tokens": {"post": op("Count a Messages request's input tokens", "inference",
                                                   "TokenCount", body="CountTokensRequest", errors="messages")},
    f"{PREFIX}/responses": {"post": op("OpenAI Responses", "inference", "Response", stream=True,
                                       body="ResponsesRequest", errors="responses")},
    f"{PREFIX}/responses/{{id}}": {
        "parameters": [path_param("id", "A stored response's id")],
        "get": op("A stored response (the calling key's)", "inference", "Response", errors="responses"),
        "delete": op("Delete a stored response", "inference", "ResponseDeleted", errors="responses"),
    },
    f"{PREFIX}/embeddings": {"post": op("Embeddings", "inference", "Embeddings", body="EmbeddingsRequest")},
    f"{PREFIX}/models": {"get": op("The models this key may use, in OpenRouter's shape", "models", "ModelList",
                                   params=MODEL_QUERY + [
                                       query("sort", s(enum=sorted(SORTS)), "Order (default: by id); sorts without "
                                             "figures here keep the default order"),
                                       query("offset", i(minimum=0), "Skip this many"),
                                       query("limit", i(minimum=1, maximum=MAX_PAGE), "At most this many (default: "
                                             "all, when offset is absent too)")])},
    f"{PREFIX}/models/count": {"get": op("How many models the same query lists", "models", "ModelCount",
                                         params=MODEL_QUERY)},
    f"{PREFIX}/models/{{author}}/{{slug}}/endpoints": {"get": op(
        "The connections serving a model, with their live status", "models", "ModelEndpoints",
        params=[path_param("author", "The model id's first part"), path_param("slug", "The rest of the model id")])},
    f"{PREFIX}/providers": {"get": op("The configured connections", "models", "ProviderList")},
    f"{PREFIX}/key": {"get": op("The calling key", "account", "CurrentKey")},
    f"{PREFIX}/auth/key": {"get": op("The calling key (OpenRouter's older path)", "account", "CurrentKey")},
    f"{PREFIX}/keys": {
        "get": op("API keys (master or management key)", "keys", "KeyList", params=[
            query("include_disabled", s(enum=["true", "false"]), "Default true"),
            query("offset", i(minimum=0), "Skip this many"),
            query("workspace", s(), "Only this workspace's (id or name; master key)")]),
        "post": op("Create an API key", "keys", "KeyCreated", status="201", body="KeyCreate", ok_description="Created"),
    },
    f"{PREFIX}/keys/{{hash}}": {
        "parameters": [path_param("hash", "The key's hash")],
        "get": op("One API key", "keys", "KeyData"),
        "patch": op("Change an API key", "keys", "KeyData", body="KeyUpdate"),
        "delete": op("Delete an API key", "keys", "Deleted"),
    },
    f"{PREFIX}/auth/keys": {"post": op(
        "OAuth PKCE: trade a code approved in the dashboard for a new key", "keys", "AuthKeysResponse",
        body="AuthKeysRequest", public=True, description="The code is the credential: no API key is needed.")},
    f"{PREFIX}/credits": {"get": op("Credits and their use (master or management key; 403 for another key)",
                                    "account", "Credits")},
    f"{PREFIX}/generation": {"get": op("One generation record", "account", "Generation", params=[
        query("id", s(minLength=1), "The generation id (gen-...)", required=True)])},
    f"{PREFIX}/activity": {"get": op("Usage by day, model and key", "account", "Activity", params=[
        query("date", s(format="date"), "One day (YYYY-MM-DD)"),
        query("date_from", s(format="date"), "First day (default: 29 days before date_to)"),
        query("date_to", s(format="date"), "Last day (default: today)"),
        query("api_key_hash", s(), "Only this key's (master or management key)")])},
    f"{PREFIX}/workspaces": {
        "get": op("Workspaces", "workspaces", "WorkspaceList", params=PAGING),
        "post": op("Create a workspace (master key)", "workspaces", "WorkspaceData", status="201",
                   body="WorkspaceCreate", ok_description="Created"),
    },
    W: {
        "parameters": [WORKSPACE],
        "get": op("A workspace", "workspaces", "WorkspaceData"),
        "patch": op("Rename a workspace or set its budget", "workspaces", "WorkspaceData", body="WorkspaceUpdate"),
        "delete": op("Delete a workspace (master key; none of its keys may be left)", "workspaces", "Deleted"),
    },
    f"{W}/environments": {
        "parameters": [WORKSPACE],
        "get": op("A workspace's environments", "workspaces", "EnvironmentList"),
        "post": op("Create an environment", "workspaces", "EnvironmentData", status="201", body="EnvironmentCreate",
                   ok_description="Created"),
    },
    f"{W}/environments/{{environment}}": {
        "parameters": [WORKSPACE, ENVIRONMENT],
        "patch": op("Rename an environment or set its budget", "workspaces", "EnvironmentData",
                    body="EnvironmentUpdate"),
        "delete": op("Delete an environment (none of its keys may be left)", "workspaces", "Deleted"),
    },
    f"{W}/members": {
        "parameters": [WORKSPACE],
        "get": op("A workspace's members", "workspaces", "MemberList", params=PAGING),
        "post": op("Add a person to a workspace", "workspaces", "MemberData", status="201", body="MemberCreate",
                   ok_description="Created"),
    },
    f"{W}/members/{{member}}": {
        "parameters": [WORKSPACE, MEMBER],
        "patch": op("Change a member's role or budget", "workspaces", "MemberData", body="MemberUpdate"),
        "delete": op("Remove a member (who may own no key here)", "workspaces", "Deleted"),
    },
    f"{W}/members/add": {"parameters": [WORKSPACE], "post": op(
        "Add existing people as members (all or none)", "workspaces", "MembersAdded", body="UserIds")},
    f"{W}/members/remove": {"parameters": [WORKSPACE], "post": op(
        "Remove members (all or none)", "workspaces", "MembersRemoved", body="UserIds")},
    f"{W}/budgets": {"parameters": [WORKSPACE], "get": op(
        "A workspace's budget per interval (Crossroads keeps one)", "workspaces", "WorkspaceBudgetList")},
    f"{W}/budgets/{{interval}}": {
        "parameters": [WORKSPACE, INTERVAL],
        "get": op("A workspace's budget at an interval", "workspaces", "WorkspaceBudgetData"),
        "put": op("Set a workspace's budget at an interval (master key)", "workspaces", "WorkspaceBudgetData",
                  body="WorkspaceBudgetSet"),
        "delete": op("Delete a workspace's budget (master key)", "workspaces", "Deleted"),
    },
    f"{PREFIX}/openapi.json": {"get": op("This document", "meta", None, public=True)},
    "/health": {"get": op("200 once started (503 while starting)", "health", "Health", public=True)},
    "/health/live": {"get": op("Liveness: the process answers", "health", "Health", public=True)},
    "/health/ready": {"get": op("Readiness: every check passes (503 naming those that fail)", "health", "Readiness",
                                public=True)},
}
PATHS["/health/ready"]["get"]["responses"]["503"] = {"description": "Not ready", "content": {
    JSON: {"schema": ref("Readiness")}}}
PATHS["/health"]["get"]["responses"]["503"] = {"description": "Starting", "content": {JSON: {"schema": ref("Health")}}}

# VM-X's workspace paths: the same requests and answers as their /api/v1 counterparts, for a key of that workspace
# and environment (403 otherwise).
VMX = "/v1/completion/{workspace}/{environment}"
for suffix, (source, summary) in {
    "chat/completions": ("/chat/completions", "Chat completions on a workspace path"),
    "anthropic/messages": ("/messages", "Anthropic Messages on a workspace path"),
    "anthropic/v1/messages": ("/messages", "Anthropic Messages on a workspace path (the Anthropic SDK's spelling)"),
    "responses": ("/responses", "OpenAI Responses on a workspace path"),
}.items():
    counterpart = PATHS[PREFIX + source]["post"]
    PATHS[f"{VMX}/{suffix}"] = {"parameters": [path_param("workspace", "Workspace id or name"),
                                               path_param("environment", "Environment id or name")],
                                "post": {**counterpart, "summary": summary, "tags": ["workspace paths"],
                                         "description": "VM-X's path: the key must belong to this workspace and "
                                                        "environment (403 otherwise)."}}


def _with_operation_ids(paths: dict[str, PathItem]) -> dict[str, PathItem]:
    """Each operation with its id, from its method and path (post_api_v1_chat_completions): unique, for clients
    generated from the document."""
    def operation_id(method: str, path: str) -> str:
        return "_".join([method, *(part.strip("{}").replace(".", "_") for part in path.strip("/").split("/"))])

    return {path: {method: value if method == "parameters" else {**value, "operationId": operation_id(method, path)}
                   for method, value in item.items()} for path, item in paths.items()}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Crossroads",
        "version": __version__,
        "summary": "A self-hosted, OpenRouter-compatible LLM gateway",
        "description": "Every `/api/v1/...` path but the workspaces API (`/api/v1/workspaces...`) is served under "
                       "`/v1/...` too, identically. Authenticate with "
                       "`Authorization: Bearer <key>` or `x-api-key: <key>`: the master key or an API key. Errors "
                       "come in each endpoint's own shape: OpenRouter's `{error: {code, message, metadata?}}`, "
                       "Anthropic's on the Messages endpoints, OpenAI's on the Responses endpoints. Streamed answers "
                       "(`stream: true`) are `text/event-stream`.",
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    },
    "servers": [{"url": "/", "description": "This gateway (/v1 serves what /api/v1 does, but the workspaces API)"}],
    "security": [{"bearer": []}, {"apiKey": []}],
    "tags": [{"name": name} for name in ("inference", "models", "account", "keys", "workspaces", "workspace paths",
                                         "health", "meta")],
    "paths": _with_operation_ids(PATHS),
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "The master key or an API key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "The same, as "
                                                                                            "Anthropic's SDK sends it"},
        },
        "schemas": {**ERRORS, **INFERENCE, **MODELS, **ACCOUNT, **WORKSPACES, **OPERATIONS_SCHEMAS},
    },
}
BODY = orjson.dumps(DOCUMENT)


def serve(request: Request) -> Awaitable[None]:
    """GET /api/v1/openapi.json: the prebuilt bytes, as application/json, to anyone (no key needed)."""
    return respond(request, 200, BODY)
