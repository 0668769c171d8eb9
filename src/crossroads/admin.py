"""`crossroads keys ...`: manage API keys straight in the configured store, whether or not a server is running
(running servers pick the change up within a second through the key cache's version poll).

Every command first prints the store it works on (``store: sqlite:///...``, to stderr) and refuses a store that does
not exist yet: only `crossroads serve` creates one, so a command run from the wrong directory cannot quietly make an
empty store of its own. A key is named by its hash or by a unique prefix of at least 8 of its characters."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any

from crossroads.errors import GatewayError

MIN_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]+")


class _Clear:
    """The value `none` given to an option: clear the setting (no limit, all models, no expiry...)."""

    def __repr__(self) -> str:
        return "none"


CLEAR = _Clear()


def _or_none(kind: type, what: str) -> Any:
    def parse(text: str) -> Any:
        if text.strip().lower() == "none":
            return CLEAR
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} or none, got {text!r}") from None

    return parse


def _text_or_none(text: str) -> Any:
    return CLEAR if text.strip().lower() == "none" else text


def add_key_commands(sub: Any) -> None:
    from crossroads.cli import add_config_option

    keys = sub.add_parser("keys", help="manage API keys")
    add_config_option(keys)
    actions = keys.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help)
        add_config_option(parser)
        return parser

    def policy(parser: argparse.ArgumentParser, *, creating: bool) -> None:
        clear = "" if creating else "; none removes it"
        parser.add_argument("--limit", type=_or_none(float, "a number"), help=f"credit limit in USD{clear}")
        parser.add_argument("--limit-reset", choices=["daily", "weekly", "monthly"] + ([] if creating else ["none"]),
                            help="the period the limit applies to (midnight UTC; weeks start on Monday)")
        parser.add_argument("--expires", type=_text_or_none,
                            help=f"expiry as ISO-8601, e.g. 2027-01-31T00:00:00Z (must be in the future){clear}")
        parser.add_argument("--models", type=_text_or_none,
                            help=f"comma-separated model ids, glob patterns or route names the key may use{clear}")
        parser.add_argument("--rpm", type=_or_none(int, "an integer"), help=f"requests per minute{clear}")
        parser.add_argument("--tpm", type=_or_none(int, "an integer"), help=f"tokens per minute{clear}")
        parser.add_argument("--priority", choices=["high", "normal", "low"], default="normal" if creating else None)

    create = action("create", "create a key; prints the plaintext key as the last line")
    create.add_argument("--name", required=True)
    policy(create, creating=True)
    create.add_argument("--management", action="store_true", help="a management key (may not call inference)")
    listing = action("list", "list keys with their limits, usage and state")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    hash_help = f"the key's hash, or a unique prefix of at least {MIN_PREFIX} characters"
    update = action("update", "change a key's name or policy (only what is given changes)")
    update.add_argument("hash", help=hash_help)
    update.add_argument("--name")
    policy(update, creating=False)
    state = update.add_mutually_exclusive_group()
    state.add_argument("--disabled", dest="disabled", action="store_const", const=True, help="disable the key")
    state.add_argument("--enabled", dest="disabled", action="store_const", const=False, help="enable the key")
    for name in ("disable", "enable", "delete"):
        one = action(name, f"{name} a key")
        one.add_argument("hash", help=hash_help)


def add_user_commands(sub: Any) -> None:
    """`crossroads users`: the people who sign in to the dashboard (members of workspaces)."""
    from crossroads.cli import add_config_option

    users = sub.add_parser("users", help="manage the people who sign in to the dashboard")
    add_config_option(users)
    actions = users.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a user (the first one: with --admin); the password is read "
                                               "from standard input, or asked for on a terminal")
    add_config_option(create)
    create.add_argument("--email", required=True)
    create.add_argument("--admin", action="store_true",
                        help="a gateway administrator: every workspace, as the master key")
    create.add_argument("--workspace", help="also make the user a member of this workspace (id or name)")
    create.add_argument("--role", choices=["owner", "admin", "member", "viewer"], default="member",
                        help="the role in --workspace (default: member)")
    listing = actions.add_parser("list", help="list users and their memberships")
    add_config_option(listing)
    listing.add_argument("--json", action="store_true")
    for action, help_text in (
            ("set-password", "set a user's password (read from standard input, or asked for on a terminal)"),
            ("disable", "stop a user from signing in (their sessions end at once; their keys keep working)"),
            ("enable", "let a disabled user sign in again")):
        change = actions.add_parser(action, help=help_text)
        add_config_option(change)
        change.add_argument("--email", required=True)


def _read_password() -> str:
    from crossroads.gate.passwords import MIN_LENGTH

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise GatewayError(400, "the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_LENGTH:
        raise GatewayError(400, f"the password must have at least {MIN_LENGTH} characters")
    return password


async def _run_users(args: argparse.Namespace, url: str) -> int:
    import secrets

    from crossroads.api.workspaces import normal_email
    from crossroads.gate.passwords import hash_password_async
    from crossroads.store import Store
    from crossroads.store.directory import DirectoryStore
    from crossroads.store.rows import MembershipRow, UserRow

    store = await Store.open(url)
    directory = DirectoryStore(store)
    try:
        if args.action == "create":
            email = normal_email(args.email)
            if await directory.user_by_email(email) is not None:
                raise GatewayError(409, f"a user {email} exists already")
            workspace = None
            if args.workspace:
                workspace = next((w for w in await directory.workspaces()
                                  if args.workspace in (w.id, w.name)), None)
                if workspace is None:
                    raise GatewayError(404, f"no workspace {args.workspace!r}")
            password_hash = await hash_password_async(_read_password())
            user = await directory.insert(UserRow(secrets.token_hex(8), email, password_hash, is_admin=args.admin))
            if workspace is not None:
                await directory.insert(MembershipRow(secrets.token_hex(8), workspace.id, user.id, args.role))
            print(f"created user {email}  id={user.id}{'  (administrator)' if args.admin else ''}"
                  f"{f'  {args.role} of {workspace.name}' if workspace is not None else ''}")
            return 0
        if args.action == "list":
            workspaces = {w.id: w.name for w in await directory.workspaces()}
            memberships = await directory.memberships()
            rows: list[dict[str, Any]] = [
                {"id": u.id, "email": u.email, "admin": u.is_admin, "disabled": u.disabled,
                 "workspaces": {workspaces.get(m.workspace_id, m.workspace_id): m.role
                                for m in memberships if m.user_id == u.id}}
                for u in await directory.users()]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    roles = ", ".join(f"{name}: {role}" for name, role in row["workspaces"].items()) or "-"
                    print(f"{row['email']:<40} {'admin' if row['admin'] else '':<6} {row['id']}  {roles}")
            return 0
        if args.action in ("set-password", "disable", "enable"):
            found = await directory.user_by_email(normal_email(args.email))
            if found is None:
                raise GatewayError(404, f"no user {args.email}")
            if args.action == "set-password":
                changes: dict[str, object] = {"password_hash": await hash_password_async(_read_password())}
            else:
                changes = {"disabled": args.action == "disable"}
            await directory.update(UserRow, found.id, changes)
            if args.action != "enable":  # a new password or a disabled account ends the sessions signed in before
                from crossroads.store.signins import SignInStore

                await SignInStore(store).end_sessions_of_user(found.id)
            print(f"{found.email}: {'password set' if args.action == 'set-password' else args.action + 'd'}")
            return 0
        return 2
    finally:
        await store.close()


def shown_url(url: str) -> str:
    """A database URL as it may be printed: without its password."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported elsewhere; show nothing of it here
        return "(invalid database URL)"
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def run_keys(args: argparse.Namespace) -> int:
    from crossroads.config import ConfigError, load_config
    from crossroads.store import StoreUnavailable, database_url, migrate

    try:
        config = load_config(getattr(args, "config", None) or None)
    except ConfigError as exc:
        print(f"crossroads: {exc}", file=sys.stderr)
        return 2
    url = database_url(config.server)
    print(f"store: {shown_url(url)}", file=sys.stderr)
    try:
        problem = asyncio.run(_missing_store(url))
        if problem is not None:
            print(f"crossroads: {problem}", file=sys.stderr)
            return 2
        migrate(url)  # an older schema is brought up to date
        return asyncio.run((_run_users if args.command == "users" else _run)(args, url))
    except GatewayError as exc:
        print(f"crossroads: {exc.message}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"crossroads: the database is unavailable: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # an unusable database URL
        print(f"crossroads: {exc}", file=sys.stderr)
        return 2


async def _missing_store(url: str) -> str | None:
    """Why the store at `url` cannot be used by the key commands (it does not exist yet), or None."""
    import sqlalchemy as sa

    from crossroads.store.engine import async_url, create_engine, sqlite_path, translate_errors

    target = async_url(url)
    hint = ("`crossroads serve` creates it; run this command where the gateway runs (the default store is "
            "./data/crossroads.db), or name the gateway's configuration with --config")
    path = sqlite_path(target)
    if path is not None:
        return None if path.exists() else f"no store at {shown_url(url)}: {hint}"
    engine = create_engine(target, pool=False)
    try:
        with translate_errors():
            async with engine.connect() as conn:
                exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table("api_keys"))
    finally:
        await engine.dispose()
    return None if exists else f"the database {shown_url(url)} holds no Crossroads store: {hint}"


async def _check_serving(store: Any, changes: dict[str, Any]) -> None:
    """The rule the running gateway's API applies to a new or changed key (a limit it cannot hold is refused)."""
    from crossroads.gate.keys import SERVE_SHARED_COUNTERS, SERVE_WORKERS, multiprocess_policy_problem
    from crossroads.instances import LIVE_AFTER

    # Every worker of every live instance (crossroads/instances.py); the last recorded --workers when none is live.
    workers = sum(row.workers for row in await store.live_instances(LIVE_AFTER)) \
        or await store.get_meta(SERVE_WORKERS) or 1
    shared_counters = bool(await store.get_meta(SERVE_SHARED_COUNTERS))
    problem = multiprocess_policy_problem(changes, workers=workers, shared_counters=shared_counters,
                                          shared_credits=shared_counters or store._dialect == "postgresql")
    if problem is not None:
        raise GatewayError(400, f"{problem} (as many as `crossroads serve --workers {workers}`, over every live "
                                "instance; the count is cleared when they stop)")


_FLAGS = {"name": "--name", "limit": "--limit", "limit_reset": "--limit-reset", "expires_at": "--expires",
          "allowed_models": "--models", "rpm": "--rpm", "tpm": "--tpm", "priority": "--priority"}


def _changes(args: argparse.Namespace, *, creating: bool) -> dict[str, Any]:
    """The options given, validated as the API validates a body (api/account.key_changes)."""
    from crossroads.api.account import key_changes

    body: dict[str, Any] = {}
    for attr, field in (("name", "name"), ("limit", "limit"), ("limit_reset", "limit_reset"),
                        ("expires", "expires_at"), ("rpm", "rpm"), ("tpm", "tpm"), ("priority", "priority")):
        value = getattr(args, attr, None)
        if value is not None:
            body[field] = None if value is CLEAR or (field == "limit_reset" and value == "none") else value
    if args.models is not None:
        if args.models is CLEAR:
            body["allowed_models"] = None
        else:
            models = [m.strip() for m in args.models.split(",") if m.strip()]
            if not models:
                raise GatewayError(400, "--models needs at least one model id or pattern (or none: every model)")
            body["allowed_models"] = models
    if creating and args.management:
        body["management"] = True
    if getattr(args, "disabled", None) is not None:
        body["disabled"] = args.disabled
    try:
        changes = key_changes(body, creating=creating)
    except GatewayError as exc:
        refused = (exc.metadata or {}).get("field")
        message = exc.message.removeprefix("Invalid request: ").replace(" or null", " or none")
        raise GatewayError(exc.status, f"{_FLAGS[refused]}: {message}" if refused in _FLAGS else message) from None
    expires = changes.get("expires_at")
    if expires is not None and expires <= datetime.now(UTC):
        raise GatewayError(400, f"--expires: {args.expires} is in the past")
    return changes


async def _resolve(store: Any, given: str) -> Any:
    """The key whose hash is `given` or starts with it (at least MIN_PREFIX characters, and only one key's)."""
    prefix = given.strip().lower()
    if not _HEX.fullmatch(prefix) or len(prefix) > 64:
        raise GatewayError(400, f"{given!r} is not a key hash (64 hexadecimal characters, or a prefix of one)")
    if len(prefix) == 64:
        row = await store.get_key(prefix)
        if row is None:
            raise GatewayError(404, f"no key with hash {prefix}")
        return row
    if len(prefix) < MIN_PREFIX:
        raise GatewayError(400, f"a hash prefix needs at least {MIN_PREFIX} characters, got {len(prefix)} ({prefix})")
    matches = [row for row in await store.list_keys() if row.hash.startswith(prefix)]
    if not matches:
        raise GatewayError(404, f"no key with hash {prefix}...")
    if len(matches) > 1:
        listed = ", ".join(f"{row.hash[:16]}... ({row.name})" for row in matches[:5])
        raise GatewayError(400, f"hash prefix {prefix} is ambiguous: it matches {len(matches)} keys ({listed}"
                                f"{', ...' if len(matches) > 5 else ''}); give more characters")
    return matches[0]


async def _warn_same_name(store: Any, name: str, own_hash: str | None) -> None:
    same = [row for row in await store.list_keys() if row.name == name and row.hash != own_hash]
    if same:
        hashes = ", ".join(row.hash[:16] + "..." for row in same)
        print(f"crossroads: warning: {len(same)} other key(s) already named {name!r} ({hashes}); names need not be "
              "unique, but lists will be hard to read", file=sys.stderr)


async def _run(args: argparse.Namespace, url: str) -> int:
    from crossroads.api.account import new_key_row
    from crossroads.store import Store

    store = await Store.open(url)
    try:
        if args.action == "create":
            changes = _changes(args, creating=True)
            await _check_serving(store, changes)
            await _warn_same_name(store, changes["name"], None)
            plaintext, row = new_key_row(changes)
            await store.insert_key(row)
            print(f"created key {row.name!r}  hash={row.hash}")
            print(plaintext)
            return 0
        if args.action == "list":
            await _list(store, as_json=args.json)
            return 0
        row = await _resolve(store, args.hash)
        if args.action == "update":
            changes = _changes(args, creating=False)
            if not changes:
                raise GatewayError(400, "nothing to update: give at least one option (see crossroads keys update -h)")
            await _check_serving(store, changes)
            if "name" in changes:
                await _warn_same_name(store, changes["name"], row.hash)
            updated = await store.update_key(row.hash, changes)
            if updated is None:
                raise GatewayError(404, f"no key with hash {row.hash}")
            print(f"updated key {updated.name!r}  hash={updated.hash}")
            return 0
        if args.action in ("disable", "enable"):
            updated = await store.update_key(row.hash, {"disabled": args.action == "disable"})
            if updated is None:
                raise GatewayError(404, f"no key with hash {row.hash}")
            print(f"{args.action}d key {updated.name!r}  hash={updated.hash}")
            return 0
        if args.action == "delete":
            if not await store.delete_key(row.hash):
                raise GatewayError(404, f"no key with hash {row.hash}")
            print(f"deleted key {row.name!r}  hash={row.hash}")
            return 0
        return 2
    finally:
        await store.close()


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def _usd(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


async def _list(store: Any, *, as_json: bool) -> None:
    from crossroads.gate.credits import period_starts
    from crossroads.gate.keys import is_expired

    now = datetime.now(UTC)
    rows = await store.list_keys()
    spend = await store.key_spend(period_starts(now))
    items = []
    for row in rows:
        spent = spend.get(row.hash, {})
        # "usage" is what the limit is measured against: the current period's spend when the limit resets, else all.
        usage = spent.get(row.limit_reset or "total", 0.0)
        state = "disabled" if row.disabled else "expired" if is_expired(row, now) else "active"
        items.append({
            "hash": row.hash, "name": row.name, "label": row.label, "limit": row.limit,
            "limit_remaining": None if row.limit is None else round(max(row.limit - usage, 0.0), 12),
            "usage": round(usage, 12), "usage_total": round(spent.get("total", 0.0), 12),
            "limit_reset": row.limit_reset, "expires_at": _iso(row.expires_at), "allowed_models": row.allowed_models,
            "rpm": row.rpm, "tpm": row.tpm, "priority": row.priority, "is_management_key": row.is_management,
            "disabled": row.disabled, "state": state, "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
        })
    if as_json:
        print(json.dumps(items, indent=2))
        return
    header = ("HASH", "NAME", "LABEL", "LIMIT", "USAGE", "RESET", "EXPIRES", "MODELS", "RPM", "TPM", "PRIORITY",
              "MANAGEMENT", "STATE")
    table = [header]
    for item in items:
        table.append((
            item["hash"], item["name"], item["label"], "-" if item["limit"] is None else f"{item['limit']:g}",
            _usd(item["usage"]), item["limit_reset"] or "-", item["expires_at"] or "-",
            "all" if item["allowed_models"] is None else ",".join(item["allowed_models"]) or "(none)",
            "-" if item["rpm"] is None else str(item["rpm"]), "-" if item["tpm"] is None else str(item["tpm"]),
            item["priority"], "yes" if item["is_management_key"] else "no", item["state"],
        ))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = {3, 4, 8, 9}  # numbers
    for line in table:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(line)]
        print("  ".join(cells).rstrip())
