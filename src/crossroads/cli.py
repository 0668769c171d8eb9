"""The `crossroads` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from crossroads import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossroads", description="Self-hosted, OpenRouter-compatible LLM gateway")
    parser.add_argument("--version", action="version", version=f"crossroads {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML configuration file (default: $CROSSROADS_CONFIG, else the environment)")
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    from crossroads.admin import add_key_commands

    add_key_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "keys":
        from crossroads.admin import run_keys

        return run_keys(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    from crossroads.config import ConfigError, ensure_master_key, load_config

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: "
                                                                                "%(message)s")
    if args.workers < 1:
        print("crossroads: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.config:
        os.environ["CROSSROADS_CONFIG"] = os.path.abspath(args.config)
    try:
        config = load_config(os.environ.get("CROSSROADS_CONFIG") or None)
        key, generated = ensure_master_key(config)
    except ConfigError as exc:
        print(f"crossroads: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"crossroads: cannot prepare data_dir {config.server.data_dir!r}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    problem = prepare_store(config, args.workers)
    if problem:
        print(f"crossroads: {problem}", file=sys.stderr)
        return 2
    os.environ["CROSSROADS_WORKERS"] = str(args.workers)
    if generated:
        # Shown once; afterwards it is only in data_dir/master_key (mode 0600).
        print(f"crossroads: generated a master key (stored in {os.path.join(config.server.data_dir, 'master_key')}):"
              f"\n\n    {key}\n", file=sys.stderr, flush=True)
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    if not config.providers:
        print("crossroads: warning: no provider connections configured (set OPENAI_API_KEY, ANTHROPIC_API_KEY, ... or "
              "use --config)", file=sys.stderr)

    import uvicorn

    options = {
        "host": host, "port": port, "workers": args.workers, "lifespan": "on", "access_log": False,
        "log_level": args.log_level, "timeout_graceful_shutdown": config.server.shutdown_grace,
        "http": "httptools", "server_header": False, "date_header": False,
        # The gateway reads neither the client's address nor the scheme: no X-Forwarded-* rewriting per request.
        "proxy_headers": False,
    }
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        options["loop"] = "asyncio"
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die of it (exit status -15/143);
    # a requested stop is a clean exit (0). Until uvicorn installs its own handler, SIGTERM exits at once.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    print(f"crossroads {__version__}: {len(config.providers)} connection(s) from {config.source}; "
          f"listening on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        if args.workers == 1:
            from crossroads.api.app import Gateway

            uvicorn.run(Gateway(config), **options)
        else:
            uvicorn.run("crossroads.api.app:create_app", factory=True, **options)
    finally:
        _record_serving(config, 0, only_if=args.workers)
    return 0


def prepare_store(config: object, workers: int) -> str | None:
    """Migrate the database once, before any worker starts; refuse a setup whose limits could not hold."""
    import asyncio

    from crossroads.store import Store, StoreUnavailable, database_url, migrate

    url = database_url(config.server)  # type: ignore[attr-defined]
    try:
        migrate(url)
        if workers > 1:
            credit, rate = asyncio.run(_limited_keys(Store, url))
            if credit:
                return (f"{credit} API key(s) have credit limits, which are enforced within one process; "
                        f"--workers {workers} would let each worker spend the full limit. Run one worker, or remove "
                        "the limits (crossroads keys list).")
            if not os.environ.get("CROSSROADS_REDIS_URL"):
                config_limited = [f"connection {c.name}" for c in config.providers if c.rpm or c.tpm]  # type: ignore[attr-defined]
                config_limited += [f"route {r.name}" for r in config.routes if r.rpm or r.tpm]  # type: ignore[attr-defined]
                if rate:
                    config_limited.append(f"{rate} API key(s)")
                if config_limited:
                    return (f"rate limits ({', '.join(config_limited)}) are counted per process unless "
                            f"CROSSROADS_REDIS_URL points at a shared Redis; --workers {workers} would multiply "
                            "them. Set CROSSROADS_REDIS_URL or run one worker.")
    except StoreUnavailable as exc:
        return f"the database is unavailable: {exc}"
    except OSError as exc:
        return f"cannot open the database: {exc.strerror or exc}"
    _record_serving(config, workers)
    return None


def _record_serving(config: object, workers: int, *, only_if: int | None = None) -> None:
    """Tell the key CLI (another process) how many workers serve this store, so it applies the rule the running
    gateway's API applies (gate/keys.multiprocess_policy_problem). 0 when the gateway stops. Advisory: each worker
    also refuses requests of a key whose limit it cannot hold (gate/credits.CreditLedger.refuse_limits)."""
    import asyncio

    from crossroads.gate.keys import SERVE_SHARED_COUNTERS, SERVE_WORKERS
    from crossroads.store import Store, StoreUnavailable, database_url

    async def write() -> None:
        store = await Store.open(database_url(config.server))  # type: ignore[attr-defined]
        try:
            if only_if is not None and await store.get_meta(SERVE_WORKERS) != only_if:
                return  # another gateway started on this store since: its value stands
            await store.set_meta(SERVE_WORKERS, workers)
            await store.set_meta(SERVE_SHARED_COUNTERS, 1 if os.environ.get("CROSSROADS_REDIS_URL") else 0)
        finally:
            await store.close()

    try:
        # Bounded: a stop must not wait on a database that went away.
        asyncio.run(asyncio.wait_for(write(), 3.0))
    except (StoreUnavailable, OSError, TimeoutError) as exc:
        print(f"crossroads: warning: could not record the worker count in the store: {exc}", file=sys.stderr)


async def _limited_keys(store_cls: type, url: str) -> tuple[int, int]:
    """How many keys have a credit limit, and how many a rate limit."""
    store = await store_cls.open(url)  # type: ignore[attr-defined]
    try:
        rows = await store.list_keys()
        return (sum(1 for row in rows if row.limit is not None),
                sum(1 for row in rows if row.rpm is not None or row.tpm is not None))
    finally:
        await store.close()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
