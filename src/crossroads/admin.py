"""`crossroads keys ...`: manage API keys straight in the configured store, whether or not a server is running
(running servers pick the change up within a second through the key cache's version poll)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from crossroads.errors import GatewayError


def add_key_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage API keys")
    keys.add_argument("--config", help="YAML configuration file (default: $CROSSROADS_CONFIG, else the environment)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; prints the plaintext key as the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--limit", type=float, help="credit limit in USD")
    create.add_argument("--limit-reset", choices=["daily", "weekly", "monthly"])
    create.add_argument("--expires", help="expiry as ISO-8601, e.g. 2027-01-31T00:00:00Z")
    create.add_argument("--models", help="comma-separated model ids or glob patterns the key may use")
    create.add_argument("--management", action="store_true", help="a management key (may not call inference)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--priority", choices=["high", "normal", "low"], default="normal")
    actions.add_parser("list", help="list keys")
    for action in ("disable", "enable", "delete"):
        one = actions.add_parser(action, help=f"{action} a key")
        one.add_argument("hash")


def run_keys(args: argparse.Namespace) -> int:
    from crossroads.config import ConfigError, load_config
    from crossroads.store import database_url, migrate

    try:
        config = load_config(args.config or None)
    except ConfigError as exc:
        print(f"crossroads: {exc}", file=sys.stderr)
        return 2
    url = database_url(config.server)
    migrate(url)
    try:
        return asyncio.run(_run(args, url))
    except GatewayError as exc:
        print(f"crossroads: {exc.message}", file=sys.stderr)
        return 1


async def _check_serving(store: Any, changes: dict[str, Any]) -> None:
    """The rule the running gateway's API applies to a new or changed key (a limit it cannot hold is refused)."""
    from crossroads.gate.keys import SERVE_SHARED_COUNTERS, SERVE_WORKERS, multiprocess_policy_problem

    workers = await store.get_meta(SERVE_WORKERS) or 1
    problem = multiprocess_policy_problem(changes, workers=workers,
                                          shared_counters=bool(await store.get_meta(SERVE_SHARED_COUNTERS)))
    if problem is not None:
        raise GatewayError(400, f"{problem} (the gateway serving this store was started with --workers {workers}; "
                                "the count is cleared when it stops)")


async def _run(args: argparse.Namespace, url: str) -> int:
    from crossroads.api.account import key_changes, new_key_row
    from crossroads.store import Store

    store = await Store.open(url)
    try:
        if args.action == "create":
            body: dict[str, Any] = {"name": args.name, "limit": args.limit, "limit_reset": args.limit_reset,
                                    "expires_at": args.expires, "management": args.management,
                                    "rpm": args.rpm, "tpm": args.tpm, "priority": args.priority}
            if args.models:
                body["allowed_models"] = [m.strip() for m in args.models.split(",") if m.strip()]
            changes = key_changes(body, creating=True)
            await _check_serving(store, changes)
            plaintext, row = new_key_row(changes)
            await store.insert_key(row)
            print(f"created key {row.name!r}  hash={row.hash}")
            print(plaintext)
            return 0
        if args.action == "list":
            rows = await store.list_keys()
            print(f"{'HASH':64}  {'NAME':20}  {'LABEL':22}  {'LIMIT':>10}  {'RESET':8}  STATE")
            for row in rows:
                limit = "-" if row.limit is None else f"{row.limit:g}"
                state = "disabled" if row.disabled else ("management" if row.is_management else "active")
                print(f"{row.hash:64}  {row.name[:20]:20}  {row.label:22}  {limit:>10}  {row.limit_reset or '-':8}  "
                      f"{state}")
            return 0
        if args.action in ("disable", "enable"):
            row = await store.update_key(args.hash, {"disabled": args.action == "disable"})
            if row is None:
                print(f"crossroads: no key with hash {args.hash}", file=sys.stderr)
                return 1
            print(f"{args.action}d key {row.name!r}")
            return 0
        if args.action == "delete":
            if not await store.delete_key(args.hash):
                print(f"crossroads: no key with hash {args.hash}", file=sys.stderr)
                return 1
            print(f"deleted key {args.hash}")
            return 0
        return 2
    finally:
        await store.close()
