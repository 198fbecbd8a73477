"""The ``extproc`` command."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from extproc.settings import Settings, env_default

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _ttl(value: str) -> int:
    m = _TTL.match(value)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 3600, 90s, 15m, 1h: {value!r}")
    return int(m.group(1)) * _TTL_UNITS[m.group(2)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extproc", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the sidecar (gRPC ext_proc + ext_authz + health)")
    s.add_argument("--config", default=env_default("CONFIG", ""), help="policy YAML file")
    s.add_argument("--listen", action="append",
                   help="HOST:PORT or unix:/path; repeatable (default 127.0.0.1:50051)")
    s.add_argument("--admin", default=env_default("ADMIN", "127.0.0.1:9464"),
                   help="admin/metrics HTTP HOST:PORT")
    s.add_argument("--no-admin", action="store_true", help="do not serve the admin HTTP")
    s.add_argument("--workers", type=int, default=int(env_default("WORKERS", "1")))
    s.add_argument("--drain-seconds", type=float, default=float(env_default("DRAIN_SECONDS", "10")))
    s.add_argument("--shutdown-delay", type=float, default=float(env_default("SHUTDOWN_DELAY", "0")),
                   help="seconds to keep serving while reporting NOT_SERVING before draining")
    s.add_argument("--log-level", default=env_default("LOG_LEVEL", "info"))
    s.add_argument("--redis-url", default=env_default("REDIS_URL", "") or None,
                   help="quota store: redis://, rediss://, redis+sentinel://, redis+cluster://")
    s.add_argument("--redis-timeout-ms", type=int, default=int(env_default("REDIS_TIMEOUT_MS", "50")),
                   help="per-call Redis timeout (keep well under Envoy's message_timeout)")
    s.add_argument("--metrics-tenant-cap", type=int, default=int(env_default("METRICS_TENANT_CAP", "100")),
                   help="tenants with their own metric series; the rest are counted as 'other'")
    s.add_argument("--log-allow-sample", type=float, default=float(env_default("LOG_ALLOW_SAMPLE", "0")),
                   help="fraction of allowed decisions to log (denials and degraded ones: always)")
    s.add_argument("--routes-poll-seconds", type=float,
                   default=float(env_default("ROUTES_POLL_SECONDS", "2")),
                   help="how often to check Redis for a new routing table (besides pub/sub)")
    s.add_argument("--admin-token-file", default=env_default("ADMIN_TOKEN_FILE", "") or None,
                   help="file holding the bearer token of the admin records API (/v1/decisions, /v1/usage);"
                        " or set EXTPROC_ADMIN_TOKEN")
    s.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)

    c = sub.add_parser("check-config", help="validate a policy file; non-zero exit on errors")
    c.add_argument("file")

    t = sub.add_parser("token", help="mint a demo token (prints only the token)")
    t.add_argument("--tenant", required=True)
    t.add_argument("--plan", default="free")
    t.add_argument("--scope", action="append", help="repeatable (default: inference)")
    t.add_argument("--ttl", type=_ttl, default=3600, help="lifetime: 3600, 90s, 15m, 1h")
    t.add_argument("--issuer", default="http://127.0.0.1:9400")
    t.add_argument("--subject", default=None, help="sub claim (default user@TENANT)")

    d = sub.add_parser("demo", help="run the whole gateway locally (what `make run` does)")
    d.add_argument("--config", default=None, help="policy YAML (default: the demo config)")
    d.add_argument("--workers", type=int, default=1)
    d.add_argument("--run-dir", default=".run", help="logs and rendered Envoy config")
    d.add_argument("--port-offset", type=int, default=0,
                   help="move every demo port by N (e.g. 1000: Envoy on 9080)")
    d.add_argument("--rotate-keys-every", type=_ttl, default=3600,
                   help="demo issuer key rotation period (also: POST http://127.0.0.1:9400/rotate)")

    n = sub.add_parser("noop-sidecar", help="a do-nothing sidecar (perf baseline): continue everything")
    n.add_argument("--listen", action="append", required=True, help="HOST:PORT or unix:/path")

    _routes_parser(sub)
    _records_parser(sub)

    e = sub.add_parser("envoy-config", help="render envoy/gateway.yaml for given sidecar endpoints")
    e.add_argument("--sidecar", action="append", required=True, help="HOST:PORT or unix:/path")
    e.add_argument("--request-timeout", default="60s",
                   help="the whole request must arrive within it, or Envoy answers 408 (default 60s)")
    e.add_argument("--auth-guard-failures", type=int, default=20, metavar="N",
                   help="401s from one address within the window before it is limited (default 20)")
    e.add_argument("--auth-guard-window", type=int, default=10, metavar="SECONDS",
                   help="the auth guard's window (default 10)")
    return p


def _routes_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("routes", help="the live routing table: get, apply, history, rollback, explain")
    verbs = r.add_subparsers(dest="verb", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=env_default("CONFIG", ""),
                        help="the policy file: its routing.pools are the clusters Envoy knows")
    common.add_argument("--redis-url", default=env_default("REDIS_URL", ""), help="where the live table is")
    g = verbs.add_parser("get", parents=[common], help="print the current (or a given) version as YAML")
    g.add_argument("--version", type=int, default=None)
    g.add_argument("--json", action="store_true", help="the stored record as JSON")
    a = verbs.add_parser("apply", parents=[common], help="validate a table file, print the diff, publish it")
    a.add_argument("file")
    a.add_argument("--dry-run", action="store_true", help="validate and print the diff only")
    for verb in (a, verbs.add_parser("rollback", parents=[common],
                                     help="publish an earlier version again, as a new version")):
        if verb is not a:
            verb.add_argument("version", type=int)
            verb.add_argument("--dry-run", action="store_true")
        verb.add_argument("--reason", required=True, help="why (kept in the history)")
        verb.add_argument("--author", default=None, help="who (default: user@host)")
    h = verbs.add_parser("history", parents=[common], help="the versions kept, newest first")
    h.add_argument("--limit", type=int, default=20)
    x = verbs.add_parser("explain", parents=[common], help="which entry a request matches, and why")
    x.add_argument("--tenant", required=True)
    x.add_argument("--plan", default="")
    x.add_argument("--class", dest="workload", required=True, help="inference, rag, training, ...")
    x.add_argument("--model", default=None)
    x.add_argument("--file", default=None, help="explain against this table file instead of Redis")


def _records_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=env_default("REDIS_URL", ""), help="where the records are")
    common.add_argument("--config", default=env_default("CONFIG", ""),
                        help="the policy file (budgets for `usage`; the allow sampling for `explain`)")
    common.add_argument("--json", action="store_true", help="print the JSON document instead")
    x = sub.add_parser("explain", parents=[common], help="why a decision came out as it did, in plain words")
    x.add_argument("decision_id")
    u = sub.add_parser("usage", parents=[common], help="a tenant's usage and remaining budgets")
    u.add_argument("--tenant", required=True)
    u.add_argument("--since", default="24h", help="1h, 30m, 7d, or an ISO-8601 time (default 24h)")
    u.add_argument("--by", default="model", help="model, class, day, route or none (default model)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "token":
        from extproc.devstack.keys import KeyStore, default_state_dir, mint_token

        key = KeyStore(default_state_dir()).current()
        scopes = tuple(args.scope or ["inference"])
        print(mint_token(key, args.tenant, args.plan, scopes, args.ttl, args.issuer, args.subject))
        return 0
    if args.command == "demo":
        from extproc.devstack.demo import DEMO_CONFIG, DemoPorts, run_demo

        config = Path(args.config) if args.config else DEMO_CONFIG
        if _check_config(str(config), quiet=True) != 0:
            return 2
        return asyncio.run(run_demo(DemoPorts().shifted(args.port_offset), Path(args.run_dir), config,
                                    args.workers, args.rotate_keys_every))
    if args.command == "noop-sidecar":
        from extproc.devstack.noop_sidecar import serve

        asyncio.run(serve(args.listen))
        return 0
    if args.command == "routes":
        return _routes(args)
    if args.command in ("explain", "usage"):
        return _records(args)
    if args.command == "envoy-config":
        from extproc.devstack.envoy_config import AuthGuard, render

        sys.stdout.write(render(args.sidecar, request_timeout=args.request_timeout,
                                auth_guard=AuthGuard(args.auth_guard_failures, args.auth_guard_window)))
        return 0
    return 2


def _check_config(path: str, quiet: bool = False) -> int:
    from extproc.config.loader import load_file
    from extproc.config.reader import ConfigError

    try:
        config = load_file(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        for error in exc.errors:
            print(f"  {exc.source}: {error}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"{path}: ok (version {config.digest[:12]}, {len(config.rules)} rules, "
              f"{len(config.routing.entries)} routes)")
    return 0


def _routes(args: argparse.Namespace) -> int:
    from extproc.config.loader import load_file
    from extproc.config.reader import ConfigError
    from extproc.domain.classify import WorkloadClass
    from extproc.routing import operator as ops

    if not args.config:
        print("extproc routes: --config FILE (or EXTPROC_CONFIG) is required: its routing.pools say "
              "which pools Envoy knows", file=sys.stderr)
        return 2
    try:
        config = load_file(args.config)
        workload = WorkloadClass(args.workload) if args.verb == "explain" else None
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ValueError:
        print(f"extproc routes explain: unknown class {args.workload!r} "
              f"(one of: {', '.join(w.value for w in WorkloadClass)})", file=sys.stderr)
        return 2
    if args.verb == "explain" and args.file:
        try:
            table = ops.file_table(Path(args.file), config.pools, config.max_fallbacks)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        assert workload is not None
        return _print(*ops.explain(table, args.tenant, args.plan, workload, args.model))
    if not args.redis_url:
        print("extproc routes: --redis-url URL (or EXTPROC_REDIS_URL) is required", file=sys.stderr)
        return 2
    return asyncio.run(_routes_redis(args, config, workload))


async def _routes_redis(args: argparse.Namespace, config: Any, workload: Any) -> int:
    from extproc.config.reader import ConfigError
    from extproc.routing import operator as ops
    from extproc.routing.store import RouteStore

    author = getattr(args, "author", None) or ops.default_author()

    async def work(client: Any) -> tuple[int, str]:
        store = RouteStore(client)
        if args.verb == "get":
            return await ops.get(store, args.version, args.json)
        if args.verb == "apply":
            return await ops.apply(store, config, Path(args.file), args.reason, author, args.dry_run)
        if args.verb == "rollback":
            return await ops.rollback(store, config, args.version, args.reason, author, args.dry_run)
        if args.verb == "history":
            return await ops.history(store, args.limit)
        try:
            table = ops.table_from(await store.get(), config)
        except ConfigError as exc:
            return 1, f"the live table is not valid against {args.config}:\n{exc}"
        return ops.explain(table, args.tenant, args.plan, workload, args.model)

    return await _on_redis(args.redis_url, work)


def _records(args: argparse.Namespace) -> int:
    from extproc.config.loader import load_file
    from extproc.config.reader import ConfigError
    from extproc.ledger.query import GROUPINGS, parse_since

    if not args.redis_url:
        print(f"extproc {args.command}: --redis-url URL (or EXTPROC_REDIS_URL) is required", file=sys.stderr)
        return 2
    try:
        config = load_file(args.config) if args.config else None
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    since = 0
    if args.command == "usage":
        if args.by not in GROUPINGS:
            print(f"extproc usage: --by must be one of {', '.join(GROUPINGS)}", file=sys.stderr)
            return 2
        try:
            since = parse_since(args.since)
        except ValueError as exc:
            print(f"extproc usage: --since: {exc}", file=sys.stderr)
            return 2
    return asyncio.run(_records_redis(args, config, since))


async def _records_redis(args: argparse.Namespace, config: Any, since_ms: int) -> int:
    import json

    from extproc.ledger import operator as ops

    async def work(client: Any) -> tuple[int, str]:
        if args.command == "explain":
            doc = await ops.decision_document(client, args.decision_id, config)
            return (0 if doc["found"] else 1), (json.dumps(doc, indent=2) if args.json else doc["explain"])
        report, budgets = await ops.usage_document(client, config, args.tenant, since_ms, args.by)
        return 0, (json.dumps(ops.usage_json(report, budgets), indent=2) if args.json
                   else ops.usage_text(report, budgets))

    return await _on_redis(args.redis_url, work)


async def _on_redis(url: str, work: Callable[[Any], Awaitable[tuple[int, str]]]) -> int:
    """Run an operator command on its own Redis client; print its answer, or that Redis is
    unreachable (the password redacted)."""
    from redis.exceptions import RedisError

    from extproc.quota.redis_client import client_from_url

    client = client_from_url(url, 5.0)
    try:
        result = await work(client)
    except (OSError, RedisError) as exc:
        result = (1, f"cannot reach Redis at {_redacted(url)}: {exc}")
    finally:
        await client.aclose()
    return _print(*result)


def _redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def _print(code: int, text: str) -> int:
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _serve(args: argparse.Namespace) -> int:
    from extproc import app
    from extproc.telemetry.logging import configure

    if not args.config:
        print("extproc serve: --config FILE (or EXTPROC_CONFIG) is required", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("extproc serve: --workers must be at least 1", file=sys.stderr)
        return 2
    configure(args.log_level, args.worker_index)
    if _check_config(args.config, quiet=True) != 0:
        return 1
    admin_token = env_default("ADMIN_TOKEN", "") or None
    if args.admin_token_file:
        try:
            admin_token = Path(args.admin_token_file).read_text().strip() or None
        except OSError as exc:
            print(f"extproc serve: --admin-token-file: {exc}", file=sys.stderr)
            return 2
    settings = Settings(
        config_path=Path(args.config),
        listen=tuple(args.listen or [env_default("LISTEN", "127.0.0.1:50051")]),
        admin=None if args.no_admin else args.admin,
        workers=args.workers,
        drain_seconds=args.drain_seconds,
        shutdown_delay=args.shutdown_delay,
        redis_url=args.redis_url,
        redis_timeout_ms=args.redis_timeout_ms,
        metrics_tenant_cap=args.metrics_tenant_cap,
        log_allow_sample=args.log_allow_sample,
        log_level=args.log_level,
        routes_poll_seconds=args.routes_poll_seconds,
        admin_token=admin_token,
    )
    if settings.workers > 1:
        return app.run_supervisor(settings)
    return app.run_worker(settings)
