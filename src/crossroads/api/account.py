"""OpenRouter's account API: the calling key, key management, credits, generations and activity."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crossroads.api.asgi import Request, respond_json
from crossroads.api.workspaces import check_within
from crossroads.errors import GatewayError
from crossroads.gate.auth import Principal, managed_workspace, reading_scope, writing_scope
from crossroads.gate.credits import Spend, next_reset
from crossroads.gate.directory import DEFAULT
from crossroads.gate.keys import display_label, generate_key, hash_key
from crossroads.gate.oauth import METHODS as OAUTH_METHODS
from crossroads.store.rows import GenerationRow, KeyRow

if TYPE_CHECKING:
    from crossroads.api.app import Gateway

LIMIT_RESETS = (None, "daily", "weekly", "monthly")
PRIORITIES = ("high", "normal", "low")


MAX_OFFSET = 2**31 - 1  # a page offset every database binds (beyond it, there is nothing to page to anyway)
MAX_RATE = 2**31 - 1  # a key's rpm and tpm are 32-bit integer columns


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def key_payload(key: KeyRow, spend: Spend) -> dict[str, Any]:
    """A key as OpenRouter's key endpoints show it, with its figures (Services.key_figures)."""
    usage = {"usage": round(spend.total, 12), "usage_daily": round(spend.daily, 12),
             "usage_weekly": round(spend.weekly, 12), "usage_monthly": round(spend.monthly, 12)}
    remaining = None if key.limit is None else key.limit - spend.in_period(key.limit_reset) - spend.reserved
    return {
        "hash": key.hash, "name": key.name, "label": key.label, "disabled": key.disabled,
        "limit": key.limit, "limit_remaining": None if remaining is None else round(max(remaining, 0.0), 12),
        "limit_reset": key.limit_reset, "include_byok_in_limit": False, **usage,
        "byok_usage": 0.0, "byok_usage_daily": 0.0, "byok_usage_weekly": 0.0, "byok_usage_monthly": 0.0,
        "created_at": _iso(key.created_at), "updated_at": _iso(key.updated_at), "last_used_at": None,
        "expires_at": _iso(key.expires_at), "allowed_models": key.allowed_models,
        "is_management_key": key.is_management, "rpm": key.rpm, "tpm": key.tpm, "priority": key.priority,
        "creator_user_id": key.user_id, "external_user": None,
        "workspace_id": key.workspace_id, "environment_id": key.environment_id,
    }


async def _current_key_payload(gateway: Gateway, request: Request) -> dict[str, Any]:
    principal = request.principal
    if principal.key is None:  # the master key: unlimited, may do everything
        total = await gateway.services.total_figures()
        base: dict[str, Any] = {
            "label": "master", "limit": None, "limit_remaining": None, "limit_reset": None,
            "usage": round(total.total, 12), "usage_daily": round(total.daily, 12),
            "usage_weekly": round(total.weekly, 12), "usage_monthly": round(total.monthly, 12),
            "byok_usage": 0.0, "byok_usage_daily": 0.0, "byok_usage_weekly": 0.0, "byok_usage_monthly": 0.0,
            "include_byok_in_limit": False, "expires_at": None, "creator_user_id": None, "workspace_id": None,
            "environment_id": None, "is_management_key": True,
        }
    else:
        base = await _payload(gateway, principal.key)
    budgets = await _budgets_of(gateway, principal.key) if principal.key is not None else []
    base.update({
        "is_free_tier": False, "is_provisioning_key": base["is_management_key"],
        "rate_limit": _rate_limit(principal.key),
        "allowed_data_regions": [], "budgets": budgets,
        # The layer with the least left: the one that refuses first.
        "effective_budget": min(budgets, key=lambda b: b["remaining_usd"]) if budgets else None,
        "free_model_daily_requests": {"limit": 0, "remaining": 0, "used": 0}, "organization_id": None,
    })
    return base


_SCOPES = {"key": "key_limit", "environment": "environment", "member": "member", "workspace": "workspace"}


async def _budgets_of(gateway: Gateway, key: KeyRow) -> list[dict[str, Any]]:
    """Every budget a request of `key` must fit (its chain: gate/directory.py), as OpenRouter's KeyBudget objects:
    the spend of the current period as the whole fleet knows it (open reservations included)."""
    limited = [b for b in gateway.services.keys.directory.chain(key) if b.limit is not None and b.account is not None]
    figures = await gateway.services.account_figures([b.account for b in limited])  # type: ignore[misc]
    now = datetime.now(UTC)
    out = []
    for budget in limited:
        spend = figures[budget.account]  # type: ignore[index]
        used = spend.in_period(budget.limit_reset) + spend.reserved
        resets = next_reset(budget.limit_reset, now)
        out.append({
            "scope": _SCOPES[budget.level], "name": budget.name,
            "budget_id": (f"{budget.account[3:]}-{budget.limit_reset or 'lifetime'}"  # type: ignore[index]
                          if budget.level == "workspace" else None),
            "guardrail_id": None, "include_byok": True, "limit_usd": budget.limit,
            "spend_usd": round(used, 12), "remaining_usd": round(budget.limit - used, 12),  # type: ignore[operator]
            "reset_interval": budget.limit_reset, "resets_at": _iso(resets)})
    return out


def _rate_limit(key: KeyRow | None) -> dict[str, Any]:
    if key is None or key.rpm is None:
        return {"requests": -1, "interval": "1m", "note": "no request rate limit is set for this key"}
    return {"requests": key.rpm, "interval": "1m", "note": "requests per minute (tokens per minute: "
            f"{'none' if key.tpm is None else key.tpm})"}


async def current_key(gateway: Gateway, request: Request) -> None:
    await respond_json(request, 200, {"data": await _current_key_payload(gateway, request)})


# -- key management ------------------------------------------------------------------------------------------------
def _parse_expiry(value: Any, field: str = "expires_at") -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise GatewayError(400, f"Invalid request: '{field}' must be an ISO-8601 date-time string",
                           metadata={"field": field})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # Stored and shown in UTC: a time whose offset moves it past year 1 or 9999 there is no date-time at all.
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise GatewayError(400, f"Invalid request: '{field}' is not an ISO-8601 date-time within years 1 to 9999 "
                                f"in UTC: {value[:100]!r}", metadata={"field": field}) from None


# Every key is kept in each process's memory and listed by GET /keys: its name and allow-list are bounded.
KEY_NAME_MAX = 256
ALLOWED_MODELS_MAX = 1000


def key_changes(body: Any, *, creating: bool) -> dict[str, Any]:
    """Validate a create/update body into KeyRow field changes (OpenRouter's names, plus allowed_models)."""
    if not isinstance(body, dict):
        raise GatewayError(400, "Invalid request: the body must be a JSON object")
    changes: dict[str, Any] = {}
    if "name" in body or creating:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > KEY_NAME_MAX:
            raise GatewayError(400, f"Invalid request: 'name' must be a non-empty string of at most {KEY_NAME_MAX} "
                                    "characters", metadata={"field": "name"})
        changes["name"] = name.strip()
    if "limit" in body:
        limit = body["limit"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0):
            raise GatewayError(400, "Invalid request: 'limit' must be a non-negative number or null",
                               metadata={"field": "limit"})
        changes["limit"] = None if limit is None else float(limit)
    if "limit_reset" in body:
        if body["limit_reset"] not in LIMIT_RESETS:
            raise GatewayError(400, "Invalid request: 'limit_reset' must be daily, weekly, monthly or null",
                               metadata={"field": "limit_reset"})
        changes["limit_reset"] = body["limit_reset"]
    if "expires_at" in body:
        changes["expires_at"] = _parse_expiry(body["expires_at"])
    if "allowed_models" in body:
        models = body["allowed_models"]
        if models is not None and (not isinstance(models, list) or len(models) > ALLOWED_MODELS_MAX
                                   or not all(isinstance(m, str) and 0 < len(m) <= 256 for m in models)):
            raise GatewayError(400, "Invalid request: 'allowed_models' must be a list of at most "
                                    f"{ALLOWED_MODELS_MAX} model ids/patterns (each 1 to 256 characters) or null",
                               metadata={"field": "allowed_models"})
        changes["allowed_models"] = models
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise GatewayError(400, "Invalid request: 'disabled' must be a boolean", metadata={"field": "disabled"})
        changes["disabled"] = body["disabled"]
    for field in ("rpm", "tpm"):
        if field in body:
            value = body[field]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 < value <= MAX_RATE):
                raise GatewayError(400, f"Invalid request: '{field}' must be a positive integer up to {MAX_RATE} "
                                        "or null", metadata={"field": field})
            changes[field] = value
    if "priority" in body:
        if body["priority"] not in PRIORITIES:
            raise GatewayError(400, "Invalid request: 'priority' must be high, normal or low",
                               metadata={"field": "priority"})
        changes["priority"] = body["priority"]
    for field in ("management", "is_management_key"):
        if field in body:
            if not creating:
                raise GatewayError(400, f"Invalid request: '{field}' can only be set when a key is created",
                                   metadata={"field": field})
            if not isinstance(body[field], bool):
                raise GatewayError(400, f"Invalid request: '{field}' must be a boolean", metadata={"field": field})
            changes["is_management"] = body[field]
    for field in ("workspace", "environment", "member"):
        if field in body:
            if not creating:
                raise GatewayError(400, f"Invalid request: '{field}' can only be set when a key is created",
                                   metadata={"field": field})
            if not isinstance(body[field], str) or not body[field].strip():
                raise GatewayError(400, f"Invalid request: '{field}' must be an id or a name",
                                   metadata={"field": field})
            changes[field] = body[field].strip()
    return changes


def new_key_row(changes: dict[str, Any]) -> tuple[str, KeyRow]:
    plaintext = generate_key()
    now = datetime.now(UTC)
    row = KeyRow(hash=hash_key(plaintext), name=changes["name"], label=display_label(plaintext),
                 limit=changes.get("limit"), limit_reset=changes.get("limit_reset"),
                 expires_at=changes.get("expires_at"), allowed_models=changes.get("allowed_models"),
                 disabled=changes.get("disabled", False), is_management=changes.get("is_management", False),
                 created_at=now, updated_at=now, rpm=changes.get("rpm"), tpm=changes.get("tpm"),
                 priority=changes.get("priority", "normal"), workspace_id=changes.get("workspace_id", DEFAULT),
                 environment_id=changes.get("environment_id", DEFAULT), user_id=changes.get("user_id"))
    return plaintext, row


async def add_key(gateway: Gateway, changes: dict[str, Any]) -> tuple[str, KeyRow]:
    """Create a key from validated `changes` (the API, the dashboard, OAuth): the plaintext (shown once) and its row,
    stored and already in the key cache."""
    await gateway.services.check_limit_allowed(changes)
    plaintext, row = new_key_row(changes)
    await gateway.services.store.insert_key(row)
    gateway.services.keys.put(row)
    return plaintext, row


async def change_key(gateway: Gateway, key_hash: str, changes: dict[str, Any]) -> KeyRow | None:
    """Apply validated `changes` to a key (None when there is no such key); the key cache follows at once."""
    await gateway.services.check_limit_allowed(changes)
    row = await gateway.services.store.update_key(key_hash, changes)
    if row is not None:
        gateway.services.keys.put(row)
    return row


def place_key(gateway: Gateway, principal: Principal, changes: dict[str, Any]) -> dict[str, Any]:
    """Resolve a new key's `workspace`, `environment` and `member` (ids, names or an email) into its row's ids: by
    default the caller's workspace (the `default` one for the master key) and that workspace's `default`
    environment. A management key places keys in its own workspace only (403 otherwise), never with a limit above a
    budget above the key (400). A person (the dashboard) makes keys in the workspace they act in, as their own; a
    member may do nothing else."""
    directory = gateway.services.keys.directory
    # A person in the dashboard, or a member's management key, makes keys of its own (its member's) only.
    person = principal.kind == "user" or (principal.key is not None and principal.role == "member")
    if person and principal.role not in ("owner", "admin", "member"):
        raise GatewayError(403, "A viewer cannot create keys")
    if principal.kind == "user":
        scope, acting = principal.workspace_id, principal.user_id
    elif person:
        scope, acting = principal.key.workspace_id, principal.key.user_id  # type: ignore[union-attr]
    else:
        scope, acting = managed_workspace(principal), None
    workspace_ref = changes.pop("workspace", None) or scope or DEFAULT
    workspace = directory.workspace(workspace_ref)
    if workspace is None:
        raise GatewayError(404, f"Workspace {workspace_ref!r} not found", metadata={"field": "workspace"})
    if scope is not None and workspace.id != scope:
        raise GatewayError(403, "A management key can only create keys in its own workspace",
                           metadata={"field": "workspace"})
    environment_ref = changes.pop("environment", None) or DEFAULT
    environment = directory.environment(workspace.id, environment_ref)
    if environment is None:
        raise GatewayError(404, f"Environment {environment_ref!r} not found in workspace {workspace.name!r}",
                           metadata={"field": "environment"})
    membership = None
    member_ref = changes.pop("member", None)
    if person:
        membership = directory.memberships.get((workspace.id, acting or ""))
    elif member_ref is not None:
        user = directory.users.get(member_ref) or next(
            (u for u in directory.users.values() if u.email == member_ref.lower()), None)
        membership = directory.memberships.get((workspace.id, user.id)) if user is not None else None
        if membership is None:
            raise GatewayError(404, f"Member {member_ref!r} not found in workspace {workspace.name!r}",
                               metadata={"field": "member"})
    if principal.role == "member" and changes.get("is_management"):
        raise GatewayError(403, "A member cannot create management keys")
    if changes.get("limit") is not None:
        check_within(principal, changes.get("limit"), workspace=workspace, environment=environment,
                     membership=membership, what="a key's limit")
    changes.update(workspace_id=workspace.id, environment_id=environment.id,
                   user_id=membership.user_id if membership is not None else None)
    return changes


async def create_key(gateway: Gateway, request: Request) -> None:
    writing_scope(request.principal)
    await gateway.services.keys.reload_directory()  # a workspace made through another worker a moment ago is found
    changes = place_key(gateway, request.principal, key_changes(request.json(), creating=True))
    plaintext, row = await add_key(gateway, changes)
    await respond_json(request, 201, {"data": await _payload(gateway, row), "key": plaintext})


async def exchange_auth_code(gateway: Gateway, request: Request) -> None:
    """POST /auth/keys: the app's half of OAuth PKCE, a code approved in the dashboard traded for a new key."""
    body = request.json()
    if not isinstance(body, dict) or not isinstance(body.get("code"), str) or not body["code"]:
        raise GatewayError(400, "Invalid request: 'code' is required", metadata={"field": "code"})
    method = body.get("code_challenge_method")
    if method is not None and method not in OAUTH_METHODS:
        raise GatewayError(400, "Invalid code_challenge_method: it must be S256 or plain")
    verifier = body.get("code_verifier")
    grant = await gateway.dashboard.grants.redeem(body["code"], verifier if isinstance(verifier, str) else None, method)
    changes: dict[str, Any] = {"name": grant.name, "limit": grant.limit, "user_id": grant.owner_id}
    if grant.workspace_id is not None:  # approved in a workspace (else the default one, as before workspaces)
        changes.update(workspace_id=grant.workspace_id, environment_id=grant.environment_id or DEFAULT)
    plaintext, _ = await add_key(gateway, changes)
    await respond_json(request, 200, {"key": plaintext, "user_id": grant.user_id})


async def list_keys(gateway: Gateway, request: Request) -> None:
    scope, member = reading_scope(request.principal)
    query = request.query()
    include_disabled = query.get("include_disabled", "true").lower() != "false"
    try:
        offset = int(query.get("offset", "0"))
        if not 0 <= offset <= MAX_OFFSET:
            raise ValueError
    except ValueError:
        raise GatewayError(400, f"Invalid request: 'offset' must be an integer from 0 to {MAX_OFFSET}",
                           metadata={"field": "offset"}) from None
    if scope is None and query.get("workspace"):
        workspace = gateway.services.keys.directory.workspace(query["workspace"])
        if workspace is None:
            raise GatewayError(404, f"Workspace {query['workspace']!r} not found", metadata={"field": "workspace"})
        scope = workspace.id
    rows = await gateway.services.store.list_keys(offset=offset)
    rows = [r for r in rows if (include_disabled or not r.disabled) and (scope is None or r.workspace_id == scope)
            and (member is None or r.user_id == member)]
    figures = await gateway.services.key_figures(rows)
    data = [key_payload(r, figures[r.hash]) for r in rows]
    await respond_json(request, 200, {"data": data})


async def _known_key(gateway: Gateway, request: Request, *, write: bool = True) -> KeyRow:
    """The path's key, if the caller may read (or `write`) it: another workspace's key (or, for a member, another
    person's) is not found, as a missing one."""
    scope, member = (writing_scope if write else reading_scope)(request.principal)
    key_hash = request.path_params["hash"]
    row = await gateway.services.store.get_key(key_hash)
    if row is None or (scope is not None and row.workspace_id != scope) or (member is not None
                                                                           and row.user_id != member):
        raise GatewayError(404, f"API key {key_hash!r} not found")
    return row


async def get_key(gateway: Gateway, request: Request) -> None:
    row = await _known_key(gateway, request, write=False)
    await respond_json(request, 200, {"data": await _payload(gateway, row)})


def check_key_limit(gateway: Gateway, principal: Principal, key: KeyRow, limit: float | None) -> None:
    """A new limit for `key` within the budgets above it (`check_within`)."""
    directory = gateway.services.keys.directory
    workspace = directory.workspaces.get(key.workspace_id)
    if workspace is not None:
        membership = directory.memberships.get((workspace.id, key.user_id)) if key.user_id else None
        check_within(principal, limit, workspace=workspace, what="a key's limit",
                     environment=directory.environments.get(key.environment_id), membership=membership)


async def update_key(gateway: Gateway, request: Request) -> None:
    current = await _known_key(gateway, request)
    changes = key_changes(request.json(), creating=False)
    if "limit" in changes:
        await gateway.services.keys.reload_directory()
        check_key_limit(gateway, request.principal, current, changes["limit"])
    row = await change_key(gateway, current.hash, changes)
    if row is None:
        raise GatewayError(404, f"API key {current.hash!r} not found")
    await respond_json(request, 200, {"data": await _payload(gateway, row)})


async def delete_key(gateway: Gateway, request: Request) -> None:
    key_hash = (await _known_key(gateway, request)).hash
    if not await gateway.services.store.delete_key(key_hash):
        raise GatewayError(404, f"API key {key_hash!r} not found")
    gateway.services.keys.drop(key_hash)
    await respond_json(request, 200, {"deleted": True})


async def _payload(gateway: Gateway, key: KeyRow) -> dict[str, Any]:
    return key_payload(key, (await gateway.services.key_figures([key]))[key.hash])


# -- credits, generations, activity --------------------------------------------------------------------------------
async def credits(gateway: Gateway, request: Request) -> None:
    """OpenRouter's account credits, which need a management key there: the master key sees the gateway's budget and
    spend, a workspace's management key its workspace's; any other key is refused (403), as on OpenRouter (a key's
    own limit and use are on GET /key)."""
    scope = managed_workspace(request.principal)  # 403 for a caller that manages nothing
    if scope is not None:
        # A workspace's management key sees its workspace's budget and spend, not the whole gateway's.
        await gateway.services.keys.reload_directory()
        workspace = gateway.services.keys.directory.workspaces.get(scope)
        total_credits = workspace.budget_limit or 0.0 if workspace is not None else 0.0
        figures = await gateway.services.account_figures([f"ws:{scope}"])
        usage = figures[f"ws:{scope}"].in_period(workspace.budget_reset if workspace is not None else None)
    else:
        total_credits = gateway.config.accounting.budget or 0.0
        usage = (await gateway.services.total_figures()).total
    await respond_json(request, 200, {"data": {"total_credits": total_credits, "total_usage": round(usage, 12)}})


def generation_payload(row: GenerationRow) -> dict[str, Any]:
    def seconds(ms: int | None) -> float | None:
        return None if ms is None else ms / 1000

    return {
        "id": row.id, "model": row.model, "provider_name": row.provider_name, "total_cost": row.cost,
        "usage": row.cost, "upstream_inference_cost": row.cost, "cache_discount": None, "is_byok": False,
        "tokens_prompt": row.tokens_prompt, "tokens_completion": row.tokens_completion,
        "native_tokens_prompt": row.tokens_prompt, "native_tokens_completion": row.tokens_completion,
        "native_tokens_reasoning": row.tokens_reasoning, "native_tokens_cached": row.tokens_cached,
        "native_tokens_completion_images": 0,
        "latency": row.latency_ms, "generation_time": row.generation_time_ms,
        "moderation_latency": None, "time_to_first_token": row.ttft_ms,
        "streamed": row.streamed, "cancelled": row.cancelled,
        "finish_reason": row.finish_reason, "native_finish_reason": row.native_finish_reason,
        "origin": row.http_referer or "", "http_referer": row.http_referer, "app_id": None, "app_title": row.app_title,
        # OpenRouter's api_type names the API family ("embeddings", or "completions" for every chat-like endpoint);
        # which endpoint the client spoke (chat, messages, responses, completions, embeddings) is `endpoint`.
        "api_type": "embeddings" if row.api_type == "embeddings" else "completions", "endpoint": row.api_type, "events": row.events, "created_at": _iso(row.created_at), "data_region": "global",
        "external_user": row.user, "user": row.user, "user_agent": row.user_agent,
        "num_fetches": 0, "num_input_audio_prompt": 0, "num_media_completion": 0, "num_media_prompt": 0,
        "num_search_results": 0, "preset_id": None, "router": None, "service_tier": None,
        "upstream_id": row.upstream_id, "upstream_model": row.upstream_model, "provider_type": row.provider_type,
        "web_search_engine": None, "workspace_id": row.workspace_id,
        "environment_id": row.environment_id, "user_id": row.user_id, "status": row.status, "error": row.error,
        "key_hash": row.key_hash, "tokens_cache_write": row.tokens_cache_write,
        "provider_responses": [
            {k: v for k, v in attempt.items() if v is not None or k == "status"}
            for attempt in row.provider_responses],
        "seconds": {"latency": seconds(row.latency_ms)},
    }


async def generation(gateway: Gateway, request: Request) -> None:
    generation_id = request.query().get("id")
    if not generation_id:
        raise GatewayError(400, "Invalid request: the 'id' query parameter is required", metadata={"field": "id"})
    row = gateway.services.recorder.pending(generation_id) or await gateway.services.store.get_generation(generation_id)
    # A key sees only its own generations, a management key those it may read (reading_scope); not-found and
    # not-yours look the same.
    key = request.principal.key
    if row is not None and key is not None and row.key_hash != key.hash:
        scope, member = reading_scope(request.principal) if key.is_management else ("", "")
        if row.workspace_id != scope or (member is not None and row.user_id != member):
            row = None
    if row is None:
        raise GatewayError(404, f"Generation {generation_id!r} not found")
    await respond_json(request, 200, {"data": generation_payload(row)})


# The days /activity can be asked about: the default range (29 days back) and the store's end of day (one day on) are
# computed from them, and neither may leave the calendar (year 1 to 9999); no generation predates 1970.
ACTIVITY_DAYS = (date(1970, 1, 1), date.max - timedelta(days=1))


def _date_param(query: dict[str, str], name: str, default: date) -> date:
    value = query.get(name)
    if not value:
        return default
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        day = None
    if day is None or not ACTIVITY_DAYS[0] <= day <= ACTIVITY_DAYS[1]:
        raise GatewayError(400, f"Invalid request: '{name}' must be a date (YYYY-MM-DD) from "
                                f"{ACTIVITY_DAYS[0]} to {ACTIVITY_DAYS[1]}", metadata={"field": name})
    return day


async def activity(gateway: Gateway, request: Request) -> None:
    query = request.query()
    today = datetime.now(UTC).date()
    if query.get("date"):
        date_from = date_to = _date_param(query, "date", today)
    else:
        date_to = _date_param(query, "date_to", today)
        date_from = _date_param(query, "date_from", date_to - timedelta(days=29))
    principal = request.principal
    # A key sees its own usage; a management key what it may read (its workspace's, a member's key its member's), or
    # one key of it (`api_key_hash`).
    if principal.is_master or (principal.key is not None and principal.key.is_management):
        workspace_id, member = reading_scope(principal)
        key_hash = query.get("api_key_hash") or query.get("key_hash") or None
    else:
        workspace_id, member, key_hash = None, None, principal.key_hash
    rows = await gateway.services.store.activity(date_from, date_to, key_hash, workspace_id=workspace_id,
                                                 user_id=member)
    data = [{
        "date": r["date"], "model": r["model"], "model_permaslug": r["model"], "endpoint_id": r["model"],
        "provider_name": r["provider_name"], "key_hash": r["key_hash"], "usage": round(r["cost"], 12),
        "byok_usage_inference": 0.0, "requests": r["requests"], "prompt_tokens": r["prompt_tokens"],
        "completion_tokens": r["completion_tokens"], "reasoning_tokens": r["reasoning_tokens"],
        "cached_tokens": r["cached_tokens"]} for r in rows]
    await respond_json(request, 200, {"data": data})
