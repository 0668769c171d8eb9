"""The dashboard's workspace pages: the switcher, Members (invitations by one-time link, roles, removal), Budgets
(each level's usage against its limit), and the page where an invited person accepts.

The rules are the management API's (api/workspaces.py): an owner or admin manages members and the budgets of
environments and members, only an owner (or a super-admin) makes owners, only a super-admin sets a workspace's own
budget, and no budget goes above the ones above it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from crossroads.api.workspaces import (
    add_environment,
    add_workspace,
    allow_budget,
    check_role_grant,
    check_within,
    normal_email,
    parse_budget,
    parse_name,
)
from crossroads.dashboard.access import local_path
from crossroads.errors import GatewayError
from crossroads.gate.directory import ROLES
from crossroads.gate.passwords import MIN_LENGTH, hash_password_async, verify_password_async
from crossroads.store.directory import DirectoryStore
from crossroads.store.rows import EnvironmentRow, MembershipRow, UserRow, WorkspaceRow
from crossroads.store.signins import InvitationRow

if TYPE_CHECKING:
    from crossroads.api.asgi import Request
    from crossroads.dashboard.access import Access
    from crossroads.dashboard.app import Dashboard
    from crossroads.dashboard.oidc import SignedIn

INVITATION_LIFETIME = timedelta(days=7)


def _invitation_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _share(used: float, limit: float | None) -> int | None:
    return min(100, round(100 * used / limit)) if limit else None


class PeoplePages:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.gateway = dashboard.gateway

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/workspace", self.switch), ("GET", "/members", self.members_page),
                ("POST", "/members/invite", self.invite), ("POST", "/members/update", self.update_member),
                ("GET", "/budgets", self.budgets_page), ("POST", "/budgets", self.set_budget),
                ("POST", "/budgets/environment", self.new_environment), ("POST", "/workspaces/new", self.new_workspace),
                ("GET", "/invite", self.invitation_page), ("POST", "/invite", self.accept)]

    async def _changed(self) -> None:
        await self.gateway.services.keys.reload_directory()

    # -- the switcher ------------------------------------------------------------------------------------------------
    async def switch(self, request: Request) -> None:
        if (access := await self.dashboard._signed_in(request)) is None:
            return
        fields = self.dashboard._form(request, access.session)
        chosen = fields.get("workspace", "")
        if chosen == "" and access.super_admin:
            workspace_id = None
        elif any(w.id == chosen for w in access.workspaces):
            workspace_id = chosen
        else:  # not one of theirs: as for one that does not exist
            raise GatewayError(404, "Workspace not found")
        await self.dashboard.sessions.look_at(access.session, workspace_id)
        await self.dashboard._redirect(request, local_path(fields.get("next")))

    # -- members -----------------------------------------------------------------------------------------------------
    async def members_page(self, request: Request) -> None:
        if (access := await self.dashboard._signed_in(request)) is None:
            return
        link = await self.dashboard.sessions.take_flash(self.dashboard._token(request) or "", access.session,
                                                        "invitation")
        await self._members(request, access, link=link, error=None)

    async def _members(self, request: Request, access: Access, *, link: str | None, error: str | None,
                       status: int = 200) -> None:
        workspace = access.workspace
        members: list[dict[str, Any]] = []
        invitations: list[InvitationRow] = []
        if workspace is not None:
            directory = self.gateway.services.keys.directory
            memberships = sorted(directory.members_of(workspace.id),
                                 key=lambda m: (ROLES.index(m.role) if m.role in ROLES else 9, m.user_id))
            figures = await self.gateway.services.account_figures(
                [f"mem:{workspace.id}:{m.user_id}" for m in memberships])
            for m in memberships:
                user = directory.users.get(m.user_id)
                used = figures[f"mem:{workspace.id}:{m.user_id}"].in_period(m.budget_reset)
                members.append({"m": m, "email": user.email if user is not None else m.user_id, "used": used,
                                "share": _share(used, m.budget_limit), "you": m.user_id == access.user_id})
            if access.manages:
                invitations = await self.dashboard.sessions.db.invitations_of(workspace.id)
        await self.dashboard._page(request, "members.html", access, status=status, members=members,
                                   invitations=invitations, link=link, error=error, roles=ROLES)

    def _managed(self, access: Access) -> WorkspaceRow:
        if access.workspace is None:
            raise GatewayError(400, "Choose a workspace first (the switcher at the top)")
        if not access.manages:
            raise GatewayError(403, "Only a workspace's owners and admins manage its members, environments and "
                                    f"budgets; you are a {access.role}")
        return access.workspace

    async def invite(self, request: Request) -> None:
        """A one-time link for `email` to join the workspace with `role` (and a member budget): shown once."""
        if (access := await self.dashboard._signed_in(request)) is None:
            return
        fields = self.dashboard._form(request, access.session)
        workspace = self._managed(access)
        try:
            email = normal_email(fields.get("email"))
            role = fields.get("role", "member")
            if role not in ROLES:
                raise GatewayError(400, f"The role must be one of {', '.join(ROLES)}")
            check_role_grant(access.principal, role)
            limit, reset = _budget_fields(fields)
            await allow_budget(self.gateway, access.principal, limit, workspace=workspace, what="a member's budget")
            user = next((u for u in self.gateway.services.keys.directory.users.values() if u.email == email), None)
            if user is not None and (workspace.id, user.id) in self.gateway.services.keys.directory.memberships:
                raise GatewayError(409, f"{email} is a member of this workspace already")
        except GatewayError as error:
            await self._members(request, access, link=None, error=error.message, status=error.status)
            return
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        await self.dashboard.sessions.db.add_invitation(InvitationRow(
            _invitation_id(token), workspace.id, email, role, limit, reset, now + INVITATION_LIFETIME, now))
        link = f"{people_origin(request)}/invite?{urlencode({'token': token})}"
        await self.dashboard.sessions.set_flash(self.dashboard._token(request) or "", access.session, "invitation",
                                                link)
        await self.dashboard._redirect(request, "/members")

    async def update_member(self, request: Request) -> None:
        """Change a member's role or budget, remove them, or withdraw an invitation."""
        if (access := await self.dashboard._signed_in(request)) is None:
            return
        fields = self.dashboard._form(request, access.session)
        workspace = self._managed(access)
        action = fields.get("action")
        store = DirectoryStore(self.gateway.services.store)
        if action == "withdraw":
            await self.dashboard.sessions.db.delete_invitation(fields.get("invitation", ""), workspace.id)
            await self.dashboard._redirect(request, "/members")
            return
        membership = self.gateway.services.keys.directory.memberships.get((workspace.id, fields.get("user", "")))
        if membership is None:
            raise GatewayError(404, "Member not found")
        try:
            if action == "role":
                role = fields.get("role", "")
                if role not in ROLES:
                    raise GatewayError(400, f"The role must be one of {', '.join(ROLES)}")
                check_role_grant(access.principal, role)
                if membership.role == "owner" and role != "owner":
                    check_role_grant(access.principal, "owner")  # only an owner unmakes an owner
                    self._keep_an_owner(workspace, membership)
                await store.update(MembershipRow, membership.id, {"role": role})
            elif action == "remove":
                if membership.role == "owner":
                    check_role_grant(access.principal, "owner")
                    self._keep_an_owner(workspace, membership)
                keys = await store.key_count(workspace_id=workspace.id, user_id=membership.user_id)
                if keys:
                    raise GatewayError(409, f"This member still owns {keys} API key(s) in the workspace; delete "
                                            "them first")
                await store.delete(MembershipRow, membership.id)
            else:
                raise GatewayError(400, "Unknown member action")
        except GatewayError as error:
            await self._members(request, access, link=None, error=error.message, status=error.status)
            return
        await self._changed()
        await self.dashboard._redirect(request, "/members")

    def _keep_an_owner(self, workspace: WorkspaceRow, leaving: MembershipRow) -> None:
        owners = [m for m in self.gateway.services.keys.directory.members_of(workspace.id) if m.role == "owner"]
        if owners == [leaving]:
            raise GatewayError(409, "A workspace keeps at least one owner: make someone else owner first")

    # -- budgets -----------------------------------------------------------------------------------------------------
    async def budgets_page(self, request: Request) -> None:
        if (access := await self.dashboard._signed_in(request)) is None:
            return
        await self._budgets(request, access, error=None)

    async def _budgets(self, request: Request, access: Access, *, error: str | None, status: int = 200) -> None:
        workspace = access.workspace
        levels: list[dict[str, Any]] = []
        if workspace is not None:
            directory = self.gateway.services.keys.directory
            environments = sorted(directory.environments_of(workspace.id), key=lambda e: e.name)
            members = [m for m in directory.members_of(workspace.id)
                       if access.own_only is None or m.user_id == access.own_only]
            keys = [k for k in self.gateway.services.keys.keys.values() if access.sees_key(k) and k.limit is not None]
            accounts = [f"ws:{workspace.id}", *(f"env:{e.id}" for e in environments),
                        *(f"mem:{workspace.id}:{m.user_id}" for m in members), *(k.hash for k in keys)]
            figures = await self.gateway.services.account_figures(accounts)

            def level(kind: str, name: str, account: str, limit: float | None, reset: str | None,
                      target: str | None) -> dict[str, Any]:
                used = figures[account].in_period(reset)
                return {"kind": kind, "name": name, "limit": limit, "reset": reset, "used": used,
                        "share": _share(used, limit), "target": target}

            can_set = access.manages
            levels.append(level("workspace", workspace.name, f"ws:{workspace.id}", workspace.budget_limit,
                                workspace.budget_reset, workspace.id if access.super_admin else None))
            levels += [level("environment", e.name, f"env:{e.id}", e.budget_limit, e.budget_reset,
                             e.id if can_set else None) for e in environments]
            for m in members:
                user = directory.users.get(m.user_id)
                levels.append(level("member", user.email if user is not None else m.user_id,
                                    f"mem:{workspace.id}:{m.user_id}", m.budget_limit, m.budget_reset,
                                    m.user_id if can_set else None))
            levels += [level("key", k.name, k.hash, k.limit, k.limit_reset, None) for k in keys]
        await self.dashboard._page(request, "budgets.html", access, status=status, levels=levels, error=error)

    async def set_budget(self, request: Request) -> None:
        """Set (or clear) the budget of the workspace (super-admins), an environment or a member (owners, admins)."""
        if (access := await self.dashboard._signed_in(request)) is None:
            return
        fields = self.dashboard._form(request, access.session)
        workspace = self._managed(access)
        directory = self.gateway.services.keys.directory
        store = DirectoryStore(self.gateway.services.store)
        level, target = fields.get("level"), fields.get("target", "")
        try:
            limit, reset = _budget_fields(fields)
            await self.gateway.services.check_limit_allowed({"limit": limit})
            changes = {"budget_limit": limit, "budget_reset": reset}
            if level == "workspace" and target == workspace.id:
                if not access.super_admin:
                    raise GatewayError(403, "A workspace's own budget is set by the master key or an admin user")
                await store.update(WorkspaceRow, workspace.id, changes)
            elif level == "environment":
                environment = directory.environments.get(target)
                if environment is None or environment.workspace_id != workspace.id:
                    raise GatewayError(404, "Environment not found")
                check_within(access.principal, limit, workspace=workspace, what="an environment's budget")
                await store.update(EnvironmentRow, environment.id, changes)
            elif level == "member":
                membership = directory.memberships.get((workspace.id, target))
                if membership is None:
                    raise GatewayError(404, "Member not found")
                check_within(access.principal, limit, workspace=workspace, what="a member's budget")
                await store.update(MembershipRow, membership.id, changes)
            else:
                raise GatewayError(400, "Unknown budget")
        except GatewayError as error:
            await self._budgets(request, access, error=error.message, status=error.status)
            return
        await self._changed()
        await self.dashboard._redirect(request, "/budgets")

    async def new_environment(self, request: Request) -> None:
        if (access := await self.dashboard._signed_in(request)) is None:
            return
        fields = self.dashboard._form(request, access.session)
        workspace = self._managed(access)
        try:
            await add_environment(self.gateway, access.principal, workspace, parse_name(fields, required=True) or "",
                                  *_budget_fields(fields))
        except GatewayError as error:
            await self._budgets(request, access, error=error.message, status=error.status)
            return
        await self.dashboard._redirect(request, "/budgets")

    async def new_workspace(self, request: Request) -> None:
        """A super-admin makes a workspace (with its `default` environment) and looks at it next."""
        if (access := await self.dashboard._signed_in(request)) is None:
            return
        fields = self.dashboard._form(request, access.session)
        try:
            workspace = await add_workspace(self.gateway, access.principal, parse_name(fields, required=True) or "",
                                            *_budget_fields(fields))
        except GatewayError as error:
            await self._budgets(request, access, error=error.message, status=error.status)
            return
        await self.dashboard.sessions.look_at(access.session, workspace.id)
        await self.dashboard._redirect(request, "/budgets")

    # -- accepting an invitation -------------------------------------------------------------------------------------
    async def invitation_page(self, request: Request) -> None:
        token = request.query().get("token", "")
        invitation = await self.dashboard.sessions.db.invitation(_invitation_id(token)) if token else None
        await self._invitation(request, token, invitation, error=None)

    async def _invitation(self, request: Request, token: str, invitation: InvitationRow | None, *,
                          error: str | None, status: int = 200) -> None:
        if invitation is None:
            raise GatewayError(404, "This invitation link is not valid: it was used, withdrawn or has expired. "
                                    "Ask for a new one.")
        _, mode = await self._invitee(request, invitation)
        await self.dashboard._page(
            request, "invite.html", None, status=status, token=token, invitation=invitation, error=error,
            workspace=self.gateway.services.workspace_name(invitation.workspace_id), mode=mode, min_length=MIN_LENGTH)

    async def _invitee(self, request: Request, invitation: InvitationRow) -> tuple[UserRow | None, str]:
        """The invited person, if they have an account, and how they confirm it is them: "signed-in" (this browser
        is signed in as them), "password" (they have one), "sso" (an account without a password: they sign in
        with single sign-on first; the link never sets a password on an existing account), "new"."""
        await self.gateway.services.keys.reload_directory()
        users = self.gateway.services.keys.directory.users.values()
        user = next((u for u in users if u.email == invitation.email), None)
        if user is None:
            return None, "new"
        session = await self.dashboard._session(request)
        if session is not None and session.user_id == user.id:
            return user, "signed-in"
        return user, "password" if user.password_hash is not None else "sso"

    async def accept(self, request: Request) -> None:
        """Join with the link; it works once."""
        fields = self.dashboard._form(request, None)
        token = fields.get("token", "")
        db = self.dashboard.sessions.db
        invitation = await db.invitation(_invitation_id(token)) if token else None
        if invitation is None:
            await self._invitation(request, token, None, error=None)
            return
        address = (request.scope.get("client") or ("unknown",))[0]
        if self.dashboard.throttle.retry_after(address) > 0:
            await self._invitation(request, token, invitation, status=429,
                                   error="Too many failed attempts from this address; try again in a minute.")
            return
        user, mode = await self._invitee(request, invitation)
        password = fields.get("password", "")
        if mode == "password" and not await verify_password_async(user.password_hash, password):  # type: ignore[union-attr]
            self.dashboard.throttle.failed(address)
            await self._invitation(request, token, invitation, status=401, error="Wrong password.")
            return
        if mode == "sso":
            await self._invitation(request, token, invitation, status=401,
                                   error="Sign in with single sign-on first, then open this link again.")
            return
        if mode == "new" and (len(password) < MIN_LENGTH or password != fields.get("confirm", "")):
            await self._invitation(request, token, invitation, status=400,
                                   error=f"Choose a password of at least {MIN_LENGTH} characters, the same twice.")
            return
        if await db.take_invitation(invitation.id) is None:  # used a moment ago (the link works once)
            await self._invitation(request, token, None, error=None)
            return
        store = DirectoryStore(self.gateway.services.store)
        if user is None:
            user = await store.insert(UserRow(secrets.token_hex(8), invitation.email,
                                              await hash_password_async(password)))
        if (invitation.workspace_id, user.id) not in self.gateway.services.keys.directory.memberships:
            await store.insert(MembershipRow(secrets.token_hex(8), invitation.workspace_id, user.id, invitation.role,
                                             invitation.budget_limit, invitation.budget_reset))
        await self._changed()
        self.dashboard.throttle.succeeded(address)
        if mode == "signed-in":
            session = await self.dashboard._session(request)
            if session is not None:
                await self.dashboard.sessions.look_at(session, invitation.workspace_id)
            await self.dashboard._redirect(request, "/")
            return
        cookie, _ = await self.dashboard.sessions.create("user", None, user_id=user.id,
                                                         workspace_id=invitation.workspace_id)
        await self.dashboard._redirect(request, "/", [self.dashboard._cookie(request, cookie)])


    async def sso_user(self, signed: SignedIn) -> UserRow | None:
        """The account the identity provider vouches for: the one it signed in before (its subject), else the one
        with its verified email (which then remembers the subject). A person with no account yet who came from an
        invitation link for that email gets one, with no password (they accept the invitation next)."""
        await self.gateway.services.keys.reload_directory()
        users = self.gateway.services.keys.directory.users.values()
        email = signed.email.strip().lower()
        user = next((u for u in users if u.oidc_subject == signed.subject), None)
        if user is not None:
            return user
        if not signed.email_verified:
            return None
        store = DirectoryStore(self.gateway.services.store)
        user = next((u for u in users if u.email == email), None)
        if user is not None:
            if user.oidc_subject is None:
                user = await store.update(UserRow, user.id, {"oidc_subject": signed.subject}) or user
            return user if user.oidc_subject == signed.subject else None  # another subject claims this account
        token = parse_qs(urlsplit(signed.next_page).query).get("token", [""])[0] \
            if signed.next_page.startswith("/invite?") else ""
        invitation = await self.dashboard.sessions.db.invitation(_invitation_id(token)) if token else None
        if invitation is None or invitation.email != email:
            return None
        user = await store.insert(UserRow(secrets.token_hex(8), email, None, oidc_subject=signed.subject))
        await self._changed()
        return user


def _budget_fields(fields: dict[str, str]) -> tuple[float | None, str | None]:
    """The form's budget (`limit`, `limit_reset`), checked as the API checks `{limit, limit_reset}`."""
    raw = fields.get("limit", "").strip()
    try:
        limit: Any = float(raw) if raw else None
    except ValueError:
        raise GatewayError(400, "The budget must be a number of USD (empty: no budget)") from None
    return parse_budget({"limit": limit, "limit_reset": fields.get("limit_reset") or None})


def over_https(request: Request) -> bool:
    """Whether the browser reached the dashboard over TLS (directly, or through a proxy that says so)."""
    return request.scope.get("scheme") == "https" or request.header("x-forwarded-proto") == "https"


def people_origin(request: Request) -> str:
    """This dashboard's origin as the browser sees it (invitation links, the single sign-on redirect URI)."""
    return f"{'https' if over_https(request) else 'http'}://{request.header('host') or 'localhost'}"


