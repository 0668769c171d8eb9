"""Who is looking at the dashboard, in which workspace, and what their role there lets them see and do.

Three kinds of session: the master key, a management key, and a person (email and password, or single sign-on).
The master key and people marked admin (`crossroads users create --admin`) are super-admins: every workspace, and
"All workspaces" at once. A management key sees its own workspace as its admin (or, made for a member, as that
member's role allows). A person sees the workspaces they are a member of, with their role in the one they look at:

- owner, admin: every key, record and member of the workspace; they manage keys, members and budgets;
- member: their own keys (made within their member budget) and their own activity;
- viewer: the workspace's keys, records, members and budgets, read only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crossroads.gate.auth import MANAGING_ROLES, MASTER, Principal

if TYPE_CHECKING:
    from crossroads.dashboard.sessions import Session
    from crossroads.gate.directory import Directory
    from crossroads.store.rows import KeyRow, UserRow, WorkspaceRow


@dataclass(slots=True)
class Access:
    session: Session
    principal: Principal  # what the API's helpers check (place_key, check_within, ...)
    who: str  # shown in the header: an email, a key's name, "master key"
    super_admin: bool
    workspaces: list[WorkspaceRow]  # those the switcher offers
    workspace: WorkspaceRow | None  # the one the pages show; None: all of them (super-admins only)
    role: str  # owner | admin | member | viewer, in `workspace` (a super-admin is an owner everywhere)
    user_id: str | None = None  # the person signed in

    @property
    def manages(self) -> bool:
        """Manages the workspace's keys, members and budgets."""
        return self.role in MANAGING_ROLES

    @property
    def writes(self) -> bool:
        """May make and change (their own) keys."""
        return self.role != "viewer"

    @property
    def workspace_id(self) -> str | None:
        return self.workspace.id if self.workspace is not None else None

    @property
    def own_only(self) -> str | None:
        """The person whose keys and records are all a member sees (None: the whole workspace)."""
        return self.user_id if self.role == "member" else None

    def sees_key(self, key: KeyRow) -> bool:
        if self.workspace is not None and key.workspace_id != self.workspace.id:
            return False
        return self.own_only is None or key.user_id == self.own_only

    def changes_key(self, key: KeyRow) -> bool:
        return self.sees_key(key) and (self.manages or (self.role == "member" and key.user_id == self.user_id))

    def sees_record(self, workspace_id: str | None, user_id: str | None) -> bool:
        if self.workspace is not None and workspace_id != self.workspace.id:
            return False
        return self.own_only is None or user_id == self.own_only


def resolve(session: Session, directory: Directory, *, key: KeyRow | None, user: UserRow | None) -> Access | None:
    """The session's access, or None when it has none left (a person in no workspace any more, not admin)."""
    every = sorted(directory.workspaces.values(), key=lambda w: w.name)
    if session.kind == "master" or (user is not None and user.is_admin):
        current = directory.workspaces.get(session.workspace_id) if session.workspace_id else None
        principal = MASTER if user is None else Principal(kind="master", user_id=user.id,
                                                          workspace_id=current.id if current else None)
        return Access(session, principal, user.email if user is not None else "master key", True, every, current,
                      "owner", user.id if user is not None else None)
    if key is not None:
        workspace = directory.workspaces.get(key.workspace_id)
        if workspace is None:
            return None
        role = "admin" if key.user_id is None else (directory.role(workspace.id, key.user_id) or "removed")
        if role == "removed":
            return None
        principal = Principal(kind="key", key=key, role=None if key.user_id is None else role)
        return Access(session, principal, key.name, False, [workspace], workspace, role, key.user_id)
    if user is None:
        return None
    mine = [w for w in every if (w.id, user.id) in directory.memberships]
    if not mine:
        return None
    current = next((w for w in mine if w.id == session.workspace_id), mine[0])
    role = directory.memberships[(current.id, user.id)].role
    principal = Principal(kind="user", workspace_id=current.id, role=role, user_id=user.id)
    return Access(session, principal, user.email, False, mine, current, role, user.id)


def local_path(value: str | None) -> str:
    """Where to go next (after signing in, switching workspace): a path on this site only (never another site, not
    even by `//host`), without control characters."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value \
            or any(ord(c) < 32 for c in value):
        return "/"
    return value
