"""``extproc demo``: the whole gateway on loopback, until Ctrl-C.

Starts redis-server (own port, nothing on disk), the demo OIDC issuer and two
demo model pools (in this process), the sidecar (``extproc serve``) and Envoy,
waits until each is ready, prints what to try, and stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from extproc.devstack.envoy_config import EnvoyPorts, render
from extproc.devstack.issuer import build_issuer_app
from extproc.devstack.keys import DEFAULT_ISSUER, KeyStore, default_state_dir
from extproc.devstack.upstream import DemoPool

DEMO_CONFIG = Path(__file__).with_name("demo-config.yaml")


@dataclass
class DemoPorts:
    envoy: EnvoyPorts = field(default_factory=EnvoyPorts)
    sidecar: int = 50051
    sidecar_admin: int = 9464
    issuer: int = 9400
    redis: int = 6390

    def shifted(self, offset: int) -> DemoPorts:
        """Every port moved by ``offset`` (to run beside something that holds the defaults)."""
        e = self.envoy
        return DemoPorts(
            EnvoyPorts(e.ext_proc + offset, e.ext_authz + offset, e.admin + offset,
                       e.pool_a + offset, e.pool_b + offset, e.ops + offset),
            self.sidecar + offset, self.sidecar_admin + offset, self.issuer + offset,
            self.redis + offset,
        )

    def all(self, workers: int = 1) -> list[int]:
        e = self.envoy
        return [e.ext_proc, e.ext_authz, e.admin, e.ops, e.pool_a, e.pool_b, self.issuer, self.redis,
                *range(self.sidecar, self.sidecar + workers),
                *range(self.sidecar_admin, self.sidecar_admin + workers)]


def port_in_use(port: int) -> bool:
    """True when something listens on 127.0.0.1:port (a port in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class Demo:
    def __init__(self, ports: DemoPorts, run_dir: Path, config: Path, workers: int,
                 state_dir: Path, rotate_keys_every: float) -> None:
        self.ports = ports
        self.run_dir = run_dir
        self.config = config
        self.workers = workers
        self.state_dir = state_dir
        self.rotate_keys_every = rotate_keys_every
        self.issuer = f"http://127.0.0.1:{ports.issuer}"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.runners: list[web.AppRunner] = []

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.run_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL)))

    async def _site(self, app: web.Application, port: int) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)

    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        redis = shutil.which("redis-server")
        if redis is None:
            raise SystemExit("redis-server not found: install the Debian package redis-server "
                             "(make run does this when run as root)")
        self._spawn("redis", [redis, "--port", str(self.ports.redis), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(self.run_dir)])
        store = KeyStore(self.state_dir)
        store.published()  # make the first key now, not in a request
        await self._site(build_issuer_app(self.issuer, store, self.rotate_keys_every), self.ports.issuer)
        await self._site(DemoPool("pool-a").app(), self.ports.envoy.pool_a)
        await self._site(DemoPool("pool-b").app(), self.ports.envoy.pool_b)
        # The demo policy names the issuer at its default port: follow --port-offset.
        policy = self.run_dir / "policy.yaml"
        policy.write_text(self.config.read_text().replace(DEFAULT_ISSUER, self.issuer))
        # The admin records API (/v1/decisions, /v1/usage) wants a token: a fresh one per run.
        token_file = self.run_dir / "admin-token"
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.token_urlsafe(24))
        self._spawn("sidecar", [sys.executable, "-m", "extproc", "serve", "--config",
                                str(policy), "--listen", f"127.0.0.1:{self.ports.sidecar}",
                                "--admin", f"127.0.0.1:{self.ports.sidecar_admin}",
                                "--redis-url", f"redis://127.0.0.1:{self.ports.redis}/0",
                                "--admin-token-file", str(token_file),
                                "--workers", str(self.workers)])
        sidecars = [f"127.0.0.1:{self.ports.sidecar + i}" for i in range(self.workers)]
        envoy_yaml = self.run_dir / "envoy.yaml"
        envoy_yaml.write_text(render(sidecars, self.ports.envoy,
                                     access_log_path=str(self.run_dir / "access.log")))
        envoy = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
        self._spawn("envoy", [envoy, "-c", str(envoy_yaml), "--log-level", "warn",
                              "--base-id", str(self.ports.envoy.admin)])
        await self._wait_ready()

    async def _wait_ready(self, timeout: float = 30.0) -> None:
        checks = {
            "sidecar": f"http://127.0.0.1:{self.ports.sidecar_admin}/readyz",
            "envoy": f"http://127.0.0.1:{self.ports.envoy.admin}/ready",
        }
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            for name, url in checks.items():
                while True:
                    self._check_alive()
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url) as resp:
                            if resp.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name} did not become ready in {timeout:.0f}s; "
                                         f"see {self.run_dir}/{name}.log")
                    await asyncio.sleep(0.2)

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with code {proc.returncode}; "
                                 f"see {self.run_dir}/{name}.log")

    async def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for runner in self.runners:
            await runner.cleanup()

    def banner(self) -> str:
        e = self.ports.envoy
        issuer_flag = "" if self.ports.issuer == 9400 else f" --issuer http://127.0.0.1:{self.ports.issuer}"
        return f"""
extproc demo is running (logs in {self.run_dir}/).

  Envoy gateway (ext_proc)   http://127.0.0.1:{e.ext_proc}
  Envoy gateway (ext_authz)  http://127.0.0.1:{e.ext_authz}
  Envoy admin                http://127.0.0.1:{e.admin}
  sidecar admin / metrics    http://127.0.0.1:{self.ports.sidecar_admin}/status  /metrics
  demo OIDC issuer           http://127.0.0.1:{self.ports.issuer}/.well-known/openid-configuration
  redis-server               127.0.0.1:{self.ports.redis}
  demo pools                 pool-a :{e.pool_a}   pool-b :{e.pool_b}

Try:
  TOKEN=$(.venv/bin/extproc token --tenant acme --plan pro{issuer_flag})
  curl -si http://127.0.0.1:{e.ext_proc}/v1/chat/completions -H "authorization: Bearer $TOKEN" \\
       -H 'content-type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}]}}'
  # ...x-demo-pool: pool-a. With "model":"gpt-4o" it goes to pool-b; add "stream":true for SSE.
  curl -si http://127.0.0.1:{e.ext_proc}/v1/models                          # 401: no token
  curl -si http://127.0.0.1:{e.ext_proc}/v1/fine_tuning/jobs -H "authorization: Bearer $TOKEN"
  # 403 insufficient_scope: mint with --scope inference --scope training to pass
  curl -si http://127.0.0.1:{e.ext_proc}/no/such/api -H "authorization: Bearer $TOKEN"  # 404
  curl -s -X POST {self.issuer}/rotate     # rotate the issuer's signing key
  export EXTPROC_CONFIG={self.config} EXTPROC_REDIS_URL=redis://127.0.0.1:{self.ports.redis}/0
  .venv/bin/extproc routes get > table.yaml   # edit it (move gpt-4o-mini to pool-b), then:
  .venv/bin/extproc routes apply table.yaml --reason "try it"   # live within a second
  .venv/bin/extproc routes explain --tenant acme --class inference --model gpt-4o
  FREE=$(.venv/bin/extproc token --tenant globex --plan free{issuer_flag})   # 60 requests/min
  for i in $(seq 65); do curl -s -o /dev/null -w '%{{http_code}} ' -H "authorization: Bearer $FREE" \
    http://127.0.0.1:{e.ext_proc}/v1/models; done; echo   # ...200s, then 429s
  .venv/bin/extproc explain DECISION_ID     # any x-extproc-decision-id above: why, in plain words
  .venv/bin/extproc usage --tenant acme --since 1h --by model   # where the tokens went, budgets left
  curl -s -H "authorization: Bearer $(cat {self.run_dir}/admin-token)" \
       'http://127.0.0.1:{self.ports.sidecar_admin}/v1/usage?tenant=acme&since=1h'   # the same, as JSON

Ctrl-C stops everything.
"""


async def run_demo(ports: DemoPorts, run_dir: Path, config: Path, workers: int,
                   rotate_keys_every: float = 3600) -> int:
    busy = [p for p in ports.all(workers) if port_in_use(p)]
    if busy:
        print(f"extproc demo: ports already in use: {', '.join(map(str, busy))}. Stop what holds "
              "them (another demo?) or move every demo port with --port-offset N.", file=sys.stderr)
        return 1
    demo = Demo(ports, run_dir, config, workers, default_state_dir(), rotate_keys_every)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await demo.start()
        print(demo.banner(), flush=True)
        while not stop.is_set():
            demo._check_alive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        print("stopping...", flush=True)
        await demo.stop()
    return 0
