"""The directory in memory: workspaces, their environments, users and memberships, and the budget chain of a request.

A key belongs to one workspace and one environment of it, and maybe to a member (the user who owns it). A request
must fit every budget above it: the key's limit, its environment's budget, its member's and its workspace's. Each
level is an account of the credit ledger (gate/credits.py), named so that the generation records can be folded into
the same accounts (`accounts_of`):

- a key: its hash (the master key: None);
- an environment: "env:<id>"; a workspace: "ws:<id>";
- a member: "mem:<workspace id>:<user id>" (a person's budget is per workspace).

The cache is loaded with the keys (gate/keys.py `KeyCache`) and follows other processes' writes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crossroads.gate.credits import Budget
from crossroads.store.rows import EnvironmentRow, KeyRow, MembershipRow, UserRow, WorkspaceRow

DEFAULT = "default"  # the workspace and environment every key made before workspaces (migration 0006) belongs to
ROLES = ("owner", "admin", "member", "viewer")
MANAGING_ROLES = ("owner", "admin")  # keys, members and budgets of their workspace


def accounts_of(key_hash: str | None, workspace_id: str | None, environment_id: str | None,
                user_id: str | None) -> tuple[str | None, ...]:
    """The ledger accounts a request (or its record) counts against, key first."""
    accounts: list[str | None] = [key_hash]
    if environment_id is not None:
        accounts.append(f"env:{environment_id}")
    if user_id is not None and workspace_id is not None:
        accounts.append(f"mem:{workspace_id}:{user_id}")
    if workspace_id is not None:
        accounts.append(f"ws:{workspace_id}")
    return tuple(accounts)


def chain_limited(chain: tuple[Budget, ...]) -> bool:
    """Whether any level of the chain has a limit (the request must then reserve its worst case)."""
    for budget in chain:
        if budget.limit is not None:
            return True
    return False


@dataclass(slots=True)
class Directory:
    workspaces: dict[str, WorkspaceRow] = field(default_factory=dict)
    environments: dict[str, EnvironmentRow] = field(default_factory=dict)
    users: dict[str, UserRow] = field(default_factory=dict)
    memberships: dict[tuple[str, str], MembershipRow] = field(default_factory=dict)  # (workspace, user) ->
    # By name: VM-X's paths name them on every request.
    workspace_names: dict[str, WorkspaceRow] = field(default_factory=dict)
    environment_names: dict[tuple[str, str], EnvironmentRow] = field(default_factory=dict)  # (workspace id, name)
    # Budget chains already worked out, per (key hash, workspace, environment); emptied whenever anything changes.
    _chains: dict[tuple[str | None, str | None, str | None], tuple[Budget, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, workspaces: list[WorkspaceRow], environments: list[EnvironmentRow], users: list[UserRow],
           memberships: list[MembershipRow]) -> Directory:
        return cls({w.id: w for w in workspaces}, {e.id: e for e in environments}, {u.id: u for u in users},
                   {(m.workspace_id, m.user_id): m for m in memberships}, {w.name: w for w in workspaces},
                   {(e.workspace_id, e.name): e for e in environments})

    def forget_chains(self) -> None:
        self._chains.clear()

    # -- look-ups ----------------------------------------------------------------------------------------------------
    def workspace(self, ref: str) -> WorkspaceRow | None:
        """A workspace by id, else by name, else by its name's slug (how OpenRouter's SDK names one)."""
        found = self.workspaces.get(ref) or self.workspace_names.get(ref)
        if found is None:
            found = next((w for w in self.workspaces.values() if slug(w.name) == ref), None)
        return found

    def environment(self, workspace_id: str, ref: str) -> EnvironmentRow | None:
        """An environment of the workspace by id, else by name."""
        found = self.environments.get(ref)
        if found is not None and found.workspace_id == workspace_id:
            return found
        return self.environment_names.get((workspace_id, ref))

    def environments_of(self, workspace_id: str) -> list[EnvironmentRow]:
        return [e for e in self.environments.values() if e.workspace_id == workspace_id]

    def members_of(self, workspace_id: str) -> list[MembershipRow]:
        return [m for m in self.memberships.values() if m.workspace_id == workspace_id]

    def role(self, workspace_id: str, user_id: str | None) -> str | None:
        if user_id is None:
            return None
        membership = self.memberships.get((workspace_id, user_id))
        return membership.role if membership is not None else None

    # -- budgets -----------------------------------------------------------------------------------------------------
    def chain(self, key: KeyRow | None, workspace_id: str | None = None,
              environment_id: str | None = None) -> tuple[Budget, ...]:
        """Every budget a request must fit, key first then environment, member and workspace: those of `key`'s place,
        or (the master key, `key` None) of the workspace path it was sent on. Levels without a budget are in the
        chain too (limit None): the ledger tracks their spend."""
        cache_key: tuple[str | None, str | None, str | None]
        if key is not None:
            cache_key = (key.hash, key.workspace_id, key.environment_id)
        else:
            cache_key = (None, workspace_id, environment_id)
        chain = self._chains.get(cache_key)
        if chain is None:
            chain = self._chains[cache_key] = self._build_chain(key, workspace_id, environment_id)
        return chain

    def _build_chain(self, key: KeyRow | None, workspace_id: str | None,
                     environment_id: str | None) -> tuple[Budget, ...]:
        user_id = None
        if key is not None:
            workspace_id, environment_id, user_id = key.workspace_id, key.environment_id, key.user_id
        chain = [Budget("key", key.hash, key.limit, key.limit_reset, key.name) if key is not None
                 else Budget("key", None, None, None, "master")]
        environment = self.environments.get(environment_id) if environment_id is not None else None
        if environment is not None:
            chain.append(Budget("environment", f"env:{environment.id}", environment.budget_limit,
                                environment.budget_reset, environment.name))
        if workspace_id is not None and user_id is not None:
            membership = self.memberships.get((workspace_id, user_id))
            user = self.users.get(user_id)
            if membership is not None:
                chain.append(Budget("member", f"mem:{workspace_id}:{user_id}", membership.budget_limit,
                                    membership.budget_reset, user.email if user is not None else user_id))
        workspace = self.workspaces.get(workspace_id) if workspace_id is not None else None
        if workspace is not None:
            chain.append(Budget("workspace", f"ws:{workspace.id}", workspace.budget_limit, workspace.budget_reset,
                                workspace.name))
        return tuple(chain)

    def limited_accounts(self, keys: list[KeyRow]) -> list[str]:
        """Every account with a limit: the keys with one and every budget set anywhere (what a shared ledger holds)."""
        accounts = [key.hash for key in keys if key.limit is not None]
        accounts += [f"env:{e.id}" for e in self.environments.values() if e.budget_limit is not None]
        accounts += [f"mem:{m.workspace_id}:{m.user_id}" for m in self.memberships.values()
                     if m.budget_limit is not None]
        accounts += [f"ws:{w.id}" for w in self.workspaces.values() if w.budget_limit is not None]
        return accounts


def slug(name: str) -> str:
    """A workspace name as OpenRouter's slug: lower-case words joined by "-"."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split()) or "workspace"
