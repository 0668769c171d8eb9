"""Workspaces, environments and members: the management API (master key, or a workspace's management key within its
workspace).

    GET|POST            /api/v1/workspaces
    GET|PATCH|DELETE    /api/v1/workspaces/{workspace}
    GET|POST            /api/v1/workspaces/{workspace}/environments
    PATCH|DELETE        /api/v1/workspaces/{workspace}/environments/{environment}
    GET|POST            /api/v1/workspaces/{workspace}/members
    PATCH|DELETE        /api/v1/workspaces/{workspace}/members/{member}

`{workspace}` and `{environment}` are ids or names, `{member}` a user id or an email. A workspace another caller may not
manage is answered 404, as one that does not exist. Budgets are `{limit, limit_reset}` (USD; null, daily, weekly,
monthly); a workspace's budget is the master key's to set (a company's allowance to a team), the levels below it are
its admins'; a budget below the workspace's may not be set above the workspace's (nor an environment's or member's
above it) by a management key.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError

from crossroads.api.asgi import Request, respond_json
from crossroads.errors import GatewayError
from crossroads.gate.auth import Principal, managed_workspace, reading_scope, require_master
from crossroads.gate.credits import Spend
from crossroads.gate.directory import DEFAULT, ROLES, slug
from crossroads.gate.passwords import MIN_LENGTH, hash_password_async
from crossroads.store.directory import DirectoryStore
from crossroads.store.rows import EnvironmentRow, MembershipRow, UserRow, WorkspaceRow

if TYPE_CHECKING:
    from crossroads.api.app import Gateway
    from crossroads.gate.directory import Directory

LIMIT_RESETS = (None, "daily", "weekly", "monthly")
NAME_MAX = 200


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


# -- bodies ----------------------------------------------------------------------------------------------------------
def _body(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise GatewayError(400, "Invalid request: the body must be a JSON object")
    return body


def parse_name(body: dict[str, Any], *, required: bool) -> str | None:
    if "name" not in body and not required:
        return None
    name = body.get("name")
    # No control characters either: the store turns a NUL into U+FFFD, and a name that is not stored as given would
    # pass the check for an existing one and then collide with it in the database.
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > NAME_MAX or "/" in name \
            or _has_control(name.strip()):
        raise GatewayError(400, f"Invalid request: 'name' must be a non-empty string of at most {NAME_MAX} characters "
                                "without '/' or control characters", metadata={"field": "name"})
    return name.strip()


@contextmanager
def _unique(message: str) -> Iterator[None]:
    """A name taken by a concurrent request between the in-memory check and the insert (the database's unique index
    decides): the same 409 as the check's, not a 500."""
    try:
        yield
    except IntegrityError:
        raise GatewayError(409, message, metadata={"field": "name"}) from None


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def parse_budget(value: Any, field: str = "budget") -> tuple[float | None, str | None]:
    """`{limit, limit_reset}` (or null: no budget) -> (limit, reset)."""
    if value is None:
        return None, None
    if not isinstance(value, dict) or set(value) - {"limit", "limit_reset"}:
        raise GatewayError(400, f"Invalid request: '{field}' must be an object {{limit, limit_reset}} or null",
                           metadata={"field": field})
    limit = value.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 <= limit < 1e15):
        raise GatewayError(400, f"Invalid request: '{field}.limit' must be a non-negative number (USD) or null",
                           metadata={"field": f"{field}.limit"})
    reset = value.get("limit_reset")
    if reset not in LIMIT_RESETS:
        raise GatewayError(400, f"Invalid request: '{field}.limit_reset' must be daily, weekly, monthly or null",
                           metadata={"field": f"{field}.limit_reset"})
    return (None if limit is None else float(limit)), reset


def budget_payload(limit: float | None, reset: str | None, spend: Spend) -> dict[str, Any]:
    used = spend.in_period(reset)
    return {"limit": limit, "limit_reset": reset, "usage": round(used, 12),
            "limit_remaining": None if limit is None else round(max(limit - used - spend.reserved, 0.0), 12)}


# -- who may see what --------------------------------------------------------------------------------------------------
def _directory(gateway: Gateway) -> Directory:
    return gateway.services.keys.directory


def _workspace(gateway: Gateway, request: Request, *, read: bool = False) -> WorkspaceRow:
    """The path's workspace, if the caller manages it, or may `read` it (gate/auth.py `reading_scope`: a viewer's or
    member's management key reads its workspace); 404 otherwise, as for one that does not exist."""
    ref = request.path_params["workspace"]
    scope = reading_scope(request.principal)[0] if read else managed_workspace(request.principal)
    found = _directory(gateway).workspace(ref)
    if found is None or (scope is not None and found.id != scope):
        raise GatewayError(404, f"Workspace {ref!r} not found")
    return found


def check_within(principal: Principal, limit: float | None, *, workspace: WorkspaceRow,
                 what: str, environment: EnvironmentRow | None = None, membership: MembershipRow | None = None) -> None:
    """A management key may not set a budget (or a key's limit) above a budget above it: 400 naming that budget.
    (The master key may: a request still has to fit every level. No limit of its own is allowed under a budget: the
    budget above still holds it.)"""
    if principal.is_master:
        return
    above = [("workspace", workspace.name, workspace.budget_limit)]
    if environment is not None:
        above.append(("environment", environment.name, environment.budget_limit))
    if membership is not None:
        above.append(("member", membership.user_id, membership.budget_limit))
    for level, name, ceiling in above:
        if ceiling is not None and limit is not None and limit > ceiling:
            raise GatewayError(400, f"Invalid request: {what} may not exceed the {level} {name!r} budget of "
                                    f"${ceiling:g} (a management key cannot raise a budget above the ones above it)",
                               metadata={"field": "limit", "level": level, "ceiling": ceiling})


async def allow_budget(gateway: Gateway, principal: Principal, limit: float | None, *, workspace: WorkspaceRow,
                       what: str) -> None:
    """A budget below the workspace (an environment's, a member's) may be set: every process can hold it
    (`check_limit_allowed`), and it is not above a budget above it (`check_within`)."""
    await gateway.services.check_limit_allowed({"limit": limit})
    check_within(principal, limit, workspace=workspace, what=what)


def with_fresh_directory(handler: Callable[[Gateway, Request], Awaitable[None]]
                         ) -> Callable[[Gateway, Request], Awaitable[None]]:
    """Every handler here starts from the database's directory, not this process's last poll: a request may reach
    another worker than the one that made a workspace a moment ago (a few small queries; not on the inference path)."""

    async def fresh(gateway: Gateway, request: Request) -> None:
        await gateway.services.keys.reload_directory()
        await handler(gateway, request)

    return fresh


async def _changed(gateway: Gateway) -> None:
    # This process applies the change at once; the others within their key poll (half a second).
    await gateway.services.keys.reload_directory()


# -- payloads ----------------------------------------------------------------------------------------------------------
async def _workspace_payload(gateway: Gateway, workspace: WorkspaceRow) -> dict[str, Any]:
    directory = _directory(gateway)
    environments = directory.environments_of(workspace.id)
    figures = await gateway.services.account_figures([f"ws:{workspace.id}", *(f"env:{e.id}" for e in environments)])
    return {
        "id": workspace.id, "name": workspace.name, "slug": slug(workspace.name),
        "budget": budget_payload(workspace.budget_limit, workspace.budget_reset, figures[f"ws:{workspace.id}"]),
        "environments": [_environment_payload(e, figures[f"env:{e.id}"]) for e in environments],
        "members": len(directory.members_of(workspace.id)),
        "created_at": _iso(workspace.created_at), "updated_at": _iso(workspace.updated_at),
        # OpenRouter's Workspace fields (its SDK's `workspaces` calls parse these); settings Crossroads has not.
        **_OPENROUTER_WORKSPACE_FIELDS,
    }


# What OpenRouter's Workspace object has beyond Crossroads' own fields, as a workspace without those settings shows them.
_OPENROUTER_WORKSPACE_FIELDS: dict[str, Any] = {
    "created_by": None, "description": None, "default_guardrail_id": "", "default_image_model": None,
    "default_provider_sort": None, "default_text_model": None, "io_logging_api_key_ids": None,
    "io_logging_sampling_rate": 0.0, "is_data_discount_logging_enabled": False,
    "is_observability_broadcast_enabled": False, "is_observability_io_logging_enabled": False,
}


def _environment_payload(environment: EnvironmentRow, spend: Spend) -> dict[str, Any]:
    return {"id": environment.id, "workspace_id": environment.workspace_id, "name": environment.name,
            "budget": budget_payload(environment.budget_limit, environment.budget_reset, spend),
            "created_at": _iso(environment.created_at), "updated_at": _iso(environment.updated_at)}


def _member_payload(gateway: Gateway, membership: MembershipRow, spend: Spend) -> dict[str, Any]:
    user = _directory(gateway).users.get(membership.user_id)
    return {"id": membership.id, "workspace_id": membership.workspace_id, "user_id": membership.user_id,
            "email": user.email if user is not None else None, "role": membership.role,
            "budget": budget_payload(membership.budget_limit, membership.budget_reset, spend),
            "created_at": _iso(membership.created_at), "updated_at": _iso(membership.updated_at)}


# -- workspaces --------------------------------------------------------------------------------------------------------
async def list_workspaces(gateway: Gateway, request: Request) -> None:
    scope = reading_scope(request.principal)[0]
    rows = [w for w in _directory(gateway).workspaces.values() if scope is None or w.id == scope]
    offset, limit = _paging(request)
    page = rows[offset:offset + limit]
    await respond_json(request, 200, {"data": [await _workspace_payload(gateway, w) for w in page],
                                      "total_count": len(rows)})


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _paging(request: Request) -> tuple[int, int]:
    """OpenRouter's `offset` and `limit` (default 50, at most 500)."""
    query = request.query()
    try:
        offset = int(query.get("offset") or 0)
        limit = int(query.get("limit") or 50)
    except ValueError:
        raise GatewayError(400, "Invalid request: 'offset' and 'limit' must be integers") from None
    if offset < 0 or not 1 <= limit <= 500:
        raise GatewayError(400, "Invalid request: 'offset' must be at least 0 and 'limit' between 1 and 500")
    return offset, limit


async def create_workspace(gateway: Gateway, request: Request) -> None:
    body = _body(request)
    workspace = await add_workspace(gateway, request.principal, parse_name(body, required=True) or "",
                                    *parse_budget(body.get("budget")))
    await respond_json(request, 201, {"data": await _workspace_payload(gateway, workspace)})


async def add_workspace(gateway: Gateway, principal: Principal, name: str, limit: float | None,
                        reset: str | None) -> WorkspaceRow:
    """A new workspace (the API, the dashboard): the master key's (or an admin user's) to make."""
    require_master(principal, "Creating a workspace")
    await gateway.services.check_limit_allowed({"limit": limit})  # held by every process, or refused
    if _directory(gateway).workspace(name) is not None:
        raise GatewayError(409, f"A workspace named {name!r} exists already", metadata={"field": "name"})
    directory = DirectoryStore(gateway.services.store)
    with _unique(f"A workspace named {name!r} exists already"):
        workspace = await directory.insert(WorkspaceRow(str(uuid.uuid4()), name, limit, reset))
    # Every workspace starts with a `default` environment: keys made without naming one go there.
    await directory.insert(EnvironmentRow(str(uuid.uuid4()), workspace.id, DEFAULT))
    await _changed(gateway)
    return workspace


async def get_workspace(gateway: Gateway, request: Request) -> None:
    await respond_json(request, 200, {"data": await _workspace_payload(gateway, _workspace(gateway, request,
                                                                                            read=True))})


async def update_workspace(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request)
    body = _body(request)
    changes: dict[str, Any] = {}
    name = parse_name(body, required=False)
    if name is not None and name != workspace.name:
        if _directory(gateway).workspace(name) is not None:
            raise GatewayError(409, f"A workspace named {name!r} exists already", metadata={"field": "name"})
        changes["name"] = name
    if "budget" in body:
        require_master(request.principal, "Setting a workspace's budget")
        changes["budget_limit"], changes["budget_reset"] = parse_budget(body["budget"])
        await gateway.services.check_limit_allowed({"limit": changes["budget_limit"]})
    with _unique(f"A workspace named {changes.get('name')!r} exists already"):
        updated = await DirectoryStore(gateway.services.store).update(WorkspaceRow, workspace.id, changes) \
            if changes else workspace
    if updated is None:
        raise GatewayError(404, f"Workspace {workspace.name!r} not found")
    await _changed(gateway)
    await respond_json(request, 200, {"data": await _workspace_payload(gateway, updated)})


async def delete_workspace(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request)
    require_master(request.principal, "Deleting a workspace")
    if workspace.id == DEFAULT:
        raise GatewayError(400, "The default workspace cannot be deleted")
    await _delete_unless_keyed(gateway, request, WorkspaceRow, workspace.id, f"Workspace {workspace.name!r} still has",
                               workspace_id=workspace.id)


async def _delete_unless_keyed(gateway: Gateway, request: Request, kind: type, id: str, holder: str,
                               **owner: str) -> None:
    """Delete a directory row unless API keys still belong to it (409: they would be left without a place)."""
    directory = DirectoryStore(gateway.services.store)
    keys = await directory.key_count(**owner)
    if keys:
        raise GatewayError(409, f"{holder} {keys} API key(s); delete them first")
    await directory.delete(kind, id)
    await _changed(gateway)
    await respond_json(request, 200, {"deleted": True})


# -- environments ------------------------------------------------------------------------------------------------------
def _environment(gateway: Gateway, workspace: WorkspaceRow, ref: str) -> EnvironmentRow:
    found = _directory(gateway).environment(workspace.id, ref)
    if found is None:
        raise GatewayError(404, f"Environment {ref!r} not found in workspace {workspace.name!r}")
    return found


async def list_environments(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request, read=True)
    environments = _directory(gateway).environments_of(workspace.id)
    figures = await gateway.services.account_figures([f"env:{e.id}" for e in environments])
    await respond_json(request, 200, {"data": [_environment_payload(e, figures[f"env:{e.id}"])
                                               for e in environments]})


async def create_environment(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request)
    body = _body(request)
    environment = await add_environment(gateway, request.principal, workspace, parse_name(body, required=True) or "",
                                        *parse_budget(body.get("budget")))
    figures = await gateway.services.account_figures([f"env:{environment.id}"])
    await respond_json(request, 201, {"data": _environment_payload(environment, figures[f"env:{environment.id}"])})


async def add_environment(gateway: Gateway, principal: Principal, workspace: WorkspaceRow, name: str,
                          limit: float | None, reset: str | None) -> EnvironmentRow:
    """A new environment of a workspace the caller manages (the API, the dashboard)."""
    await allow_budget(gateway, principal, limit, workspace=workspace, what="an environment's budget")
    if _directory(gateway).environment(workspace.id, name) is not None:
        raise GatewayError(409, f"Workspace {workspace.name!r} has an environment named {name!r} already",
                           metadata={"field": "name"})
    with _unique(f"Workspace {workspace.name!r} has an environment named {name!r} already"):
        environment = await DirectoryStore(gateway.services.store).insert(
            EnvironmentRow(str(uuid.uuid4()), workspace.id, name, limit, reset))
    await _changed(gateway)
    return environment


async def update_environment(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request)
    environment = _environment(gateway, workspace, request.path_params["environment"])
    body = _body(request)
    changes: dict[str, Any] = {}
    name = parse_name(body, required=False)
    if name is not None and name != environment.name:
        if _directory(gateway).environment(workspace.id, name) is not None:
            raise GatewayError(409, f"Workspace {workspace.name!r} has an environment named {name!r} already",
                               metadata={"field": "name"})
        changes["name"] = name
    if "budget" in body:
        limit, reset = parse_budget(body["budget"])
        await allow_budget(gateway, request.principal, limit, workspace=workspace, what="an environment's budget")
        changes["budget_limit"], changes["budget_reset"] = limit, reset
    with _unique(f"Workspace {workspace.name!r} has an environment named {changes.get('name')!r} already"):
        updated = await DirectoryStore(gateway.services.store).update(EnvironmentRow, environment.id, changes) \
            if changes else environment
    if updated is None:
        raise GatewayError(404, f"Environment {environment.name!r} not found")
    await _changed(gateway)
    figures = await gateway.services.account_figures([f"env:{updated.id}"])
    await respond_json(request, 200, {"data": _environment_payload(updated, figures[f"env:{updated.id}"])})


async def delete_environment(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request)
    environment = _environment(gateway, workspace, request.path_params["environment"])
    if environment.name == DEFAULT:
        raise GatewayError(400, "A workspace's default environment cannot be deleted")
    await _delete_unless_keyed(gateway, request, EnvironmentRow, environment.id,
                               f"Environment {environment.name!r} still has", environment_id=environment.id)


# -- members -----------------------------------------------------------------------------------------------------------
def _member(gateway: Gateway, workspace: WorkspaceRow, ref: str) -> MembershipRow:
    directory = _directory(gateway)
    user = directory.users.get(ref) or next((u for u in directory.users.values() if u.email == ref.strip().lower()),
                                            None)
    membership = directory.memberships.get((workspace.id, user.id)) if user is not None else None
    if membership is None:
        raise GatewayError(404, f"Member {ref!r} not found in workspace {workspace.name!r}")
    return membership


def _role(body: dict[str, Any], *, required: bool) -> str | None:
    if "role" not in body and not required:
        return None
    role = body.get("role", "member")
    if role not in ROLES:
        raise GatewayError(400, f"Invalid request: 'role' must be one of {', '.join(ROLES)}", metadata={"field": "role"})
    return role


def check_role_grant(principal: Principal, role: str) -> None:
    # An admin (or an admin's management key) manages members but cannot make owners: only the master key, an owner
    # or the workspace's own management key can.
    if role == "owner" and principal.role not in (None, "owner"):
        raise GatewayError(403, "Only an owner or the master key can make an owner")


def normal_email(value: Any) -> str:
    if not isinstance(value, str) or "@" not in value or len(value) > 320 or any(c.isspace() for c in value.strip()) \
            or _has_control(value.strip()):
        raise GatewayError(400, "Invalid request: 'email' must be an email address", metadata={"field": "email"})
    return value.strip().lower()


async def list_members(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request, read=True)
    offset, limit = _paging(request)
    every = sorted(_directory(gateway).members_of(workspace.id), key=lambda m: (m.created_at or _EPOCH, m.id))
    members = every[offset:offset + limit]
    figures = await gateway.services.account_figures([f"mem:{m.workspace_id}:{m.user_id}" for m in members])
    await respond_json(request, 200, {"data": [
        _member_payload(gateway, m, figures[f"mem:{m.workspace_id}:{m.user_id}"]) for m in members],
        "total_count": len(every)})


def _user_ids(body: dict[str, Any]) -> list[str]:
    ids = body.get("user_ids")
    if not isinstance(ids, list) or not ids or len(ids) > 500 or not all(isinstance(i, str) and i for i in ids):
        raise GatewayError(400, "Invalid request: 'user_ids' must be a list of 1 to 500 user ids",
                           metadata={"field": "user_ids"})
    return list(dict.fromkeys(ids))


async def add_members(gateway: Gateway, request: Request) -> None:
    """OpenRouter's bulk add (`{user_ids}`): existing people join as `member` (Crossroads has no organisation-wide
    role to copy); those already in the workspace are left as they are. All or nothing: an unknown id adds nobody."""
    workspace = _workspace(gateway, request)
    directory = _directory(gateway)
    ids = _user_ids(_body(request))
    unknown = [i for i in ids if i not in directory.users]
    if unknown:
        raise GatewayError(404, f"User {unknown[0]!r} not found (people are made with POST .../members or "
                                "`crossroads users create`)", metadata={"field": "user_ids"})
    store = DirectoryStore(gateway.services.store)
    added = [await store.insert(MembershipRow(secrets.token_hex(8), workspace.id, user_id, "member"))
             for user_id in ids if (workspace.id, user_id) not in directory.memberships]
    await _changed(gateway)
    figures = await gateway.services.account_figures([f"mem:{workspace.id}:{m.user_id}" for m in added])
    await respond_json(request, 200, {"added_count": len(added), "data": [
        _member_payload(gateway, m, figures[f"mem:{workspace.id}:{m.user_id}"]) for m in added]})


async def remove_members(gateway: Gateway, request: Request) -> None:
    """OpenRouter's bulk remove (`{user_ids}`). All or nothing: a member who still owns keys here removes nobody
    (409), as DELETE .../members/{member} refuses; ids that are not members are not counted."""
    workspace = _workspace(gateway, request)
    directory = _directory(gateway)
    members = [m for i in _user_ids(_body(request)) if (m := directory.memberships.get((workspace.id, i)))]
    store = DirectoryStore(gateway.services.store)
    for m in members:
        keys = await store.key_count(workspace_id=workspace.id, user_id=m.user_id)
        if keys:
            raise GatewayError(409, f"Member {m.user_id!r} still owns {keys} API key(s) in workspace "
                                    f"{workspace.name!r}; delete them first (nobody was removed)")
    removed = sum([await store.delete(MembershipRow, m.id) for m in members])
    await _changed(gateway)
    await respond_json(request, 200, {"removed_count": removed})


# -- OpenRouter's per-interval workspace budgets -----------------------------------------------------------------------
# OpenRouter keeps up to one budget per interval; a Crossroads workspace has one budget, whose reset is its interval
# ("lifetime": it never resets). These endpoints show it that way and refuse, rather than silently replace, a second.
def _interval(request: Request) -> str:
    interval = request.path_params["interval"]
    if interval not in ("daily", "weekly", "monthly", "lifetime"):
        raise GatewayError(400, "Invalid request: the interval must be daily, weekly, monthly or lifetime",
                           metadata={"field": "interval"})
    return interval


def _budget_object(workspace: WorkspaceRow) -> dict[str, Any]:
    return {"id": f"{workspace.id}-{workspace.budget_reset or 'lifetime'}", "workspace_id": workspace.id,
            "limit_usd": workspace.budget_limit, "reset_interval": workspace.budget_reset,
            "created_at": _iso(workspace.updated_at), "updated_at": _iso(workspace.updated_at)}


def _budget_at(workspace: WorkspaceRow, interval: str) -> dict[str, Any]:
    if workspace.budget_limit is None or (workspace.budget_reset or "lifetime") != interval:
        raise GatewayError(404, f"Workspace {workspace.name!r} has no {interval} budget")
    return _budget_object(workspace)


async def list_budgets(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request, read=True)
    data = [_budget_object(workspace)] if workspace.budget_limit is not None else []
    await respond_json(request, 200, {"data": data, "include_byok_in_budgets": True})


async def get_budget(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request, read=True)
    await respond_json(request, 200, {"data": _budget_at(workspace, _interval(request)),
                                      "include_byok_in_budgets": True})


async def set_budget(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request)
    require_master(request.principal, "Setting a workspace's budget")
    interval = _interval(request)
    limit = _body(request).get("limit_usd")
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit < 1e15:
        raise GatewayError(400, "Invalid request: 'limit_usd' must be a number greater than 0",
                           metadata={"field": "limit_usd"})
    if workspace.budget_limit is not None and (workspace.budget_reset or "lifetime") != interval:
        raise GatewayError(409, f"Workspace {workspace.name!r} has a {workspace.budget_reset or 'lifetime'} budget; "
                                "Crossroads keeps one budget per workspace: delete that one first, or set it at its "
                                "interval", metadata={"field": "interval"})
    await gateway.services.check_limit_allowed({"limit": float(limit)})  # held by every process, or refused
    updated = await DirectoryStore(gateway.services.store).update(WorkspaceRow, workspace.id, {
        "budget_limit": float(limit), "budget_reset": None if interval == "lifetime" else interval})
    if updated is None:
        raise GatewayError(404, f"Workspace {workspace.name!r} not found")
    await _changed(gateway)
    await respond_json(request, 200, {"data": _budget_object(updated), "include_byok_in_budgets": True})


async def delete_budget(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request)
    require_master(request.principal, "Deleting a workspace's budget")
    _budget_at(workspace, _interval(request))
    await DirectoryStore(gateway.services.store).update(WorkspaceRow, workspace.id,
                                                        {"budget_limit": None, "budget_reset": None})
    await _changed(gateway)
    await respond_json(request, 200, {"deleted": True})


async def create_member(gateway: Gateway, request: Request) -> None:
    """Add a person to the workspace (`{email, role, budget?, password?}`); the user is created when new."""
    workspace = _workspace(gateway, request)
    body = _body(request)
    email = normal_email(body.get("email"))
    role = _role(body, required=True)
    assert role is not None
    check_role_grant(request.principal, role)
    limit, reset = parse_budget(body.get("budget"))
    await allow_budget(gateway, request.principal, limit, workspace=workspace, what="a member's budget")
    password = body.get("password")
    if password is not None and (not isinstance(password, str) or len(password) < MIN_LENGTH):
        raise GatewayError(400, f"Invalid request: 'password' must be a string of at least {MIN_LENGTH} characters",
                           metadata={"field": "password"})
    directory = DirectoryStore(gateway.services.store)
    user = next((u for u in _directory(gateway).users.values() if u.email == email), None)
    if user is None:
        password_hash = await hash_password_async(password) if password else None
        user = await directory.insert(UserRow(secrets.token_hex(8), email, password_hash))
    elif (workspace.id, user.id) in _directory(gateway).memberships:
        raise GatewayError(409, f"{email} is a member of workspace {workspace.name!r} already",
                           metadata={"field": "email"})
    membership = await directory.insert(MembershipRow(secrets.token_hex(8), workspace.id, user.id, role, limit, reset))
    await _changed(gateway)
    account = f"mem:{workspace.id}:{user.id}"
    figures = await gateway.services.account_figures([account])
    await respond_json(request, 201, {"data": _member_payload(gateway, membership, figures[account])})


async def update_member(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request)
    membership = _member(gateway, workspace, request.path_params["member"])
    body = _body(request)
    changes: dict[str, Any] = {}
    role = _role(body, required=False)
    if role is not None:
        check_role_grant(request.principal, role)
        changes["role"] = role
    if "budget" in body:
        limit, reset = parse_budget(body["budget"])
        await allow_budget(gateway, request.principal, limit, workspace=workspace, what="a member's budget")
        changes["budget_limit"], changes["budget_reset"] = limit, reset
    updated = await DirectoryStore(gateway.services.store).update(MembershipRow, membership.id, changes) \
        if changes else membership
    if updated is None:
        raise GatewayError(404, "Member not found")
    await _changed(gateway)
    account = f"mem:{workspace.id}:{updated.user_id}"
    figures = await gateway.services.account_figures([account])
    await respond_json(request, 200, {"data": _member_payload(gateway, updated, figures[account])})


async def delete_member(gateway: Gateway, request: Request) -> None:
    workspace = _workspace(gateway, request)
    membership = _member(gateway, workspace, request.path_params["member"])
    await _delete_unless_keyed(gateway, request, MembershipRow, membership.id,
                               f"In workspace {workspace.name!r} this member still owns", workspace_id=workspace.id,
                               user_id=membership.user_id)
