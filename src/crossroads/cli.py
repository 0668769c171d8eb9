"""The `crossroads` command."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from crossroads import __version__
from crossroads.workers import WORKER_TIMEOUT  # the standard library only: cheap for every subcommand

if TYPE_CHECKING:  # imported lazily at run time: `crossroads --help` and the subcommands load only what they use
    from crossroads.config import Config
    from crossroads.store import Store

CONFIG_HELP = "YAML configuration file (default: $CROSSROADS_CONFIG, else the environment)"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """--config, accepted before and after a subcommand (the innermost one given wins)."""
    parser.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)


def _port(text: str) -> int:
    """--port, checked as server.port is."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _seconds(text: str) -> float:
    """--worker-timeout: seconds, at least 1 (workers beat every half second)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 1 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be at least 1 second, got {text}")
    return seconds


def _workers(text: str) -> int:
    """--workers: a positive number, or "auto" for one per core this process may run on."""
    if text == "auto":
        available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return max(1, len(available) if available else os.cpu_count() or 1)
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or auto, got {text!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {workers}")
    return workers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossroads", description="Self-hosted, OpenRouter-compatible LLM gateway")
    parser.add_argument("--version", action="version", version=f"crossroads {__version__}")
    add_config_option(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    add_config_option(serve)
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: server.port, 8080; 0: any free port, "
                                                  "printed)")
    serve.add_argument("--workers", type=_workers, default=1,
                       help="worker processes, or auto: one per core (default: 1)")
    serve.add_argument("--worker-timeout", type=_seconds, default=None, metavar="SECONDS",
                       help="with --workers above 1: a worker whose event loop has not run for this long (blocked, "
                            f"or its process stopped) is killed and replaced (default: {WORKER_TIMEOUT:g})")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["json", "text"], default=None,
                       help="json: one JSON object per line; text: key=value for people (default: text on a "
                            "terminal, json otherwise)")
    from crossroads.admin import add_key_commands, add_user_commands

    add_key_commands(sub)
    add_user_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command in ("keys", "users"):
        from crossroads.admin import run_keys

        return run_keys(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    from crossroads.admin import shown_url
    from crossroads.config import ConfigError, ensure_master_key, load_config
    from crossroads.observability import logs
    from crossroads.store import database_url

    log_format = args.log_format or logs.default_format()
    logs.configure(args.log_level, log_format)
    # Worker processes (--workers N) start with no logging set up: create_app reads these.
    os.environ["CROSSROADS_LOG_LEVEL"], os.environ["CROSSROADS_LOG_FORMAT"] = args.log_level, log_format
    if args.workers < 1:
        print("crossroads: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.worker_timeout is not None and args.workers == 1:
        # Said, not refused: the option does nothing here, and a user who set it expects a watch.
        print("crossroads: note: --worker-timeout watches the workers of --workers above 1; a single process is "
              "watched by what runs it (e.g. a liveness probe on /health)", file=sys.stderr)
    config_path = getattr(args, "config", None)
    if config_path:
        os.environ["CROSSROADS_CONFIG"] = os.path.abspath(config_path)
    try:
        config = load_config(os.environ.get("CROSSROADS_CONFIG") or None)
        configured_key = config.server.master_key is not None
        key, generated = ensure_master_key(config)
    except ConfigError as exc:
        print(f"crossroads: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"crossroads: cannot prepare data_dir {config.server.data_dir!r}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    from crossroads.workers import STARTUP_FAILURE, Supervisor, bind_shared

    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    # The socket is bound here, before anything else starts: a port that cannot be had fails at once, and port 0 is
    # known (and printed) before serving. One worker serves on it; several each bind their own beside it
    # (crossroads/workers.py), which it holds for them without listening.
    try:
        sock = bind_shared(host, port, reuse_port=args.workers > 1)
        port = sock.getsockname()[1]
    except OSError as exc:
        print(f"crossroads: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"store: {shown_url(database_url(config.server))}", file=sys.stderr)
    problem = prepare_store(config, args.workers)
    if problem:
        sock.close()
        print(f"crossroads: {problem}", file=sys.stderr)
        return 2
    os.environ["CROSSROADS_WORKERS"] = str(args.workers)
    instance_id = os.environ.get(INSTANCE_ID_VARIABLE)  # set by prepare_store
    try:
        _share_metrics(config, args.workers)
    except OSError as exc:
        print(f"crossroads: cannot prepare the metrics directory in {config.server.data_dir!r}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        _record_serving(config, 0, only_if=args.workers, instance_id=instance_id)
        return 2
    key_file = os.path.join(config.server.data_dir, "master_key")
    if generated:
        # Shown once; afterwards it is only in data_dir/master_key (mode 0600).
        print(f"crossroads: generated a master key (stored in {key_file}):\n\n    {key}\n", file=sys.stderr, flush=True)
    elif not configured_key:
        print(f"master key: {key_file}", file=sys.stderr)
    elif config.source == "environment":
        print("master key: $CROSSROADS_MASTER_KEY", file=sys.stderr)
    else:
        print(f"master key: server.master_key in {config.source}", file=sys.stderr)
    if not config.providers:
        print("crossroads: warning: no provider connections configured (set OPENAI_API_KEY, ANTHROPIC_API_KEY, ... or "
              "use --config)", file=sys.stderr)

    import uvicorn

    options = uvicorn_options(config, host=host, port=port, workers=args.workers, log_level=args.log_level)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die of it (exit status -15/143);
    # a requested stop is a clean exit (0). Until uvicorn installs its own handler, SIGTERM exits at once.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"crossroads {__version__}: {len(config.providers)} connection(s) from {config.source}; "
          f"listening on http://{shown_host}:{port}", file=sys.stderr, flush=True)
    probe_connections(config, config.server.discovery_timeout)
    try:
        if args.workers == 1:
            from crossroads.api.app import Gateway

            server = uvicorn.Server(uvicorn.Config(Gateway(config), **options))
            try:
                server.run(sockets=[sock])
            except KeyboardInterrupt:  # uvicorn re-raises a captured Ctrl-C once it has stopped
                pass
            if not server.started:
                return STARTUP_FAILURE
        else:
            with sock:
                return Supervisor(options, host, port, args.workers, config.server.shutdown_grace,
                                  worker_timeout=args.worker_timeout or WORKER_TIMEOUT).run()
    finally:
        _record_serving(config, 0, only_if=args.workers, instance_id=instance_id)
    return 0


def uvicorn_options(config: Config, *, host: str, port: int, workers: int, log_level: str) -> dict[str, Any]:
    """uvicorn's settings for `serve` (tests/harness.py serves its in-process gateways with them too)."""
    import functools

    from crossroads.api.protocol import SlowClientProtocol

    options: dict[str, Any] = {
        "host": host, "port": port, "workers": workers, "lifespan": "on", "access_log": False,
        "log_config": None,  # uvicorn's lines go through the gateway's own format (observability/logs.py)
        "log_level": log_level, "timeout_graceful_shutdown": config.server.shutdown_grace,
        # httptools with a deadline for request heads (slowloris); a partial pickles, so workers get it too.
        "http": functools.partial(SlowClientProtocol, header_timeout=config.server.header_timeout,
                                  body_timeout=config.server.body_timeout),
        "server_header": False, "date_header": False,
        # The gateway reads neither the client's address nor the scheme: no X-Forwarded-* rewriting per request.
        "proxy_headers": False,
    }
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        options["loop"] = "asyncio"
    return options


MULTIPROC_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
INSTANCE_ID_VARIABLE = "CROSSROADS_INSTANCE_ID"  # as crossroads.instances names it (not imported: start-up cost)
CLAIM_TIMEOUT = 10.0  # seconds the database may take to register this instance


def _share_metrics(config: Any, workers: int) -> None:
    """With several workers, /metrics must report their sum: each keeps its values in files of one directory that
    prometheus_client finds in PROMETHEUS_MULTIPROC_DIR (read when a worker imports it; workers inherit this
    environment), and a scrape merges them (observability/metrics.py). The directory is this instance's own and starts
    empty: counts start at zero with each start, and another instance on the same data_dir keeps its own
    (observability/multiproc.py). One worker keeps its values in memory, so the variables are cleared (an inherited
    one would make it write files). Nothing here imports prometheus_client, which must see these variables first."""
    for name in MULTIPROC_VARIABLES:
        os.environ.pop(name, None)
    if workers == 1 or not config.server.metrics.enabled:
        return
    from crossroads.observability.multiproc import claim_metrics_dir

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = claim_metrics_dir(config.server.data_dir)


def probe_connections(config: Any, timeout: float) -> threading.Thread | None:
    """Start-up check, in the background: one TCP connect to each connection whose models are listed (a connection
    that discovers its models asks its GET /models anyway, and warns when that fails), bounded by `timeout`; one
    warning per connection that cannot be reached. It names the connection, host and port only: never a credential
    (a base URL's user-info, a key). Serving does not wait for it."""
    from urllib.parse import urlsplit

    targets: list[tuple[str, str, int]] = []
    for conn in config.providers:
        if conn.discover:
            continue
        try:
            parts = urlsplit(conn.base_url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        if host:
            targets.append((conn.name, host, port))
    if not targets:
        return None
    results: dict[str, str | None] = {}

    def connect(name: str, host: str, port: int) -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                results[name] = None
        except TimeoutError:
            results[name] = f"no answer within {timeout:g} s"
        except OSError as exc:
            results[name] = exc.strerror or type(exc).__name__

    def run() -> None:
        threads = [threading.Thread(target=connect, args=target, daemon=True, name="crossroads-probe")
                   for target in targets]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for name, host, port in targets:
            problem = results.get(name, f"no answer within {timeout:g} s")
            if problem is not None:
                print(f"crossroads: warning: connection {name} is unreachable ({host}:{port}: {problem}); requests "
                      "for its models will fail over to other connections or fail", file=sys.stderr, flush=True)

    thread = threading.Thread(target=run, daemon=True, name="crossroads-probe")
    thread.start()
    return thread


def prepare_store(config: Config, workers: int) -> str | None:
    """Migrate the database once, before any worker starts; refuse a setup whose limits could not hold: several
    workers keeping limits in process memory, or a second live instance on this database where either instance keeps
    them there (crossroads/instances.py). Registers this instance and passes its id to the workers in
    CROSSROADS_INSTANCE_ID; `serve` unregisters it when it stops."""
    import asyncio

    from crossroads.gate.credits import shared_credit_store
    from crossroads.store import Store, StoreUnavailable, database_url, migrate

    url = database_url(config.server)
    redis = bool(os.environ.get("CROSSROADS_REDIS_URL"))  # rate-limit counters (and credits) in a shared Redis
    shared_credits = shared_credit_store(os.environ.get("CROSSROADS_REDIS_URL"), url) is not None
    try:
        migrate(url)
        credit, rate = asyncio.run(_limited_keys(Store, url))
        rate_limited = [f"connection {c.name}" for c in config.providers if c.rpm or c.tpm]
        rate_limited += [f"route {r.name}" for r in config.routes if r.rpm or r.tpm]
        if rate:
            rate_limited.append(f"{rate} API key(s)")
        if workers > 1:
            if credit and not shared_credits:
                return (f"{credit} API key(s) have credit limits, which are enforced within one process unless "
                        f"CROSSROADS_REDIS_URL points at a shared Redis (or the database is PostgreSQL); --workers "
                        f"{workers} would let each worker spend the full limit. Set CROSSROADS_REDIS_URL, run one "
                        "worker, or remove the limits (crossroads keys list).")
            if not redis and rate_limited:
                return (f"rate limits ({', '.join(rate_limited)}) are counted per process unless "
                        f"CROSSROADS_REDIS_URL points at a shared Redis; --workers {workers} would multiply "
                        "them. Set CROSSROADS_REDIS_URL or run one worker.")
        # Whether this instance keeps nothing in its own memory that other instances would need to count with it:
        # credits in Redis or PostgreSQL, and rate limits in Redis (or none configured).
        shared = shared_credits and (redis or not rate_limited)
        instance_id, problem = asyncio.run(asyncio.wait_for(_claim_instance(Store, url, workers, shared),
                                                            CLAIM_TIMEOUT))
        if problem:
            return problem
    except StoreUnavailable as exc:
        return f"the database is unavailable: {exc}"
    except TimeoutError:
        return f"the database did not answer within {CLAIM_TIMEOUT:g} s when registering this instance"
    except OSError as exc:
        return f"cannot open the database: {exc.strerror or exc}"
    os.environ[INSTANCE_ID_VARIABLE] = instance_id
    _record_serving(config, workers)
    return None


async def _claim_instance(store_cls: type[Store], url: str, workers: int, shared: bool) -> tuple[str, str | None]:
    """crossroads.instances.claim on a store of its own."""
    from crossroads.instances import claim

    store = await store_cls.open(url)
    try:
        return await claim(store, workers=workers, shared=shared)
    finally:
        await store.close()


def _record_serving(config: Config, workers: int, *, only_if: int | None = None, instance_id: str | None = None
                    ) -> None:
    """Tell the key CLI (another process) how many workers serve this store, so it applies the rule the running
    gateway's API applies (gate/keys.multiprocess_policy_problem). 0 when the gateway stops. Advisory: each worker
    also refuses requests of a key whose limit it cannot hold (gate/credits.CreditLedger.refuse_limits). With
    `instance_id` (when the gateway stops), that instance's registration is removed first, in the same bounded
    attempt."""
    import asyncio

    from crossroads.gate.keys import SERVE_SHARED_COUNTERS, SERVE_WORKERS
    from crossroads.store import Store, StoreUnavailable, database_url

    async def write() -> None:
        store = await Store.open(database_url(config.server))
        try:
            if instance_id:
                await store.unregister_instance(instance_id)
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
        print(f"crossroads: warning: could not record the {'stop' if instance_id else 'worker count'} in the store: "
              f"{exc}", file=sys.stderr)


async def _limited_keys(store_cls: type[Store], url: str) -> tuple[int, int]:
    """How many keys have a credit limit, and how many a rate limit."""
    store = await store_cls.open(url)
    try:
        rows = await store.list_keys()
        return (sum(1 for row in rows if row.limit is not None),
                sum(1 for row in rows if row.rpm is not None or row.tpm is not None))
    finally:
        await store.close()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
