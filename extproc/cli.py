"""The ``extproc`` command."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

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

    e = sub.add_parser("envoy-config", help="render envoy/gateway.yaml for given sidecar endpoints")
    e.add_argument("--sidecar", action="append", required=True, help="HOST:PORT or unix:/path")
    return p


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
    if args.command == "envoy-config":
        from extproc.devstack.envoy_config import render

        sys.stdout.write(render(args.sidecar))
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
    )
    if settings.workers > 1:
        return app.run_supervisor(settings)
    return app.run_worker(settings)
