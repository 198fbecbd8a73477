"""A whole gateway on loopback for end-to-end tests: real Envoy, real sidecar process, demo pools."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from extproc.devstack.demo import DEMO_CONFIG
from extproc.devstack.envoy_config import EnvoyPorts, render
from extproc.devstack.issuer import build_issuer_app
from extproc.devstack.keys import DEFAULT_ISSUER, KeyStore, SigningKey, mint_token
from extproc.devstack.upstream import DemoPool
from extproc.settings import offset_address
from tests.redis_server import RedisServer
from tests.support import Child, envoy_binary, free_port, free_port_block, sidecar_command, wait_http


class PoolsThread:
    """The two demo pools and the demo issuer, served from an event loop in a background thread."""

    def __init__(self, ports: dict[str, int], issuer_port: int, keys: KeyStore) -> None:
        self.ports = ports
        self.issuer_port = issuer_port
        self.keys = keys
        self.loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("demo pools did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            apps = [(DemoPool(name).app(), port) for name, port in self.ports.items()]
            issuer = f"http://127.0.0.1:{self.issuer_port}"
            apps.append((build_issuer_app(issuer, self.keys), self.issuer_port))
            for app, port in apps:
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                self._runners.append(runner)

        self.loop.run_until_complete(start())
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Stack:
    dir: Path
    ports: EnvoyPorts
    sidecars: list[str]
    config_path: Path
    issuer: str
    keys: KeyStore
    children: list[Child] = field(default_factory=list)
    pools: PoolsThread | None = None
    redis: RedisServer | None = None
    _token: str | None = None

    def token(self, tenant: str = "acme", plan: str = "pro", scopes: tuple[str, ...] = ("inference",),
              key: SigningKey | None = None, **kw: Any) -> str:
        return mint_token(key or self.keys.current(), tenant, plan, scopes, issuer=self.issuer, **kw)

    @property
    def default_token(self) -> str:
        if self._token is None:
            # A plan no demo quota policy matches: quota behaviour has its own tests.
            self._token = self.token(plan="enterprise")
        return self._token

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                port: int | None = None, raw: bytes | None = None, token: str | None = "default") -> Response:
        """A request through Envoy, with a valid bearer token unless ``token`` says otherwise."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.ports.ext_proc, timeout=30)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"content-type": "application/json"} if data is not None else {}
        if token is not None:
            hdrs["authorization"] = f"Bearer {self.default_token if token == 'default' else token}"
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        out = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        conn.close()
        return out

    def chat(self, model: str, port: int | None = None, token: str | None = "default",
             **extra: Any) -> Response:
        return self.request("POST", "/v1/chat/completions",
                            {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra},
                            port=port, token=token)

    def access_log(self) -> list[dict[str, Any]]:
        path = self.dir / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        if self.pools:
            self.pools.stop()
        if self.redis:
            self.redis.stop()


def start_stack(tmp: Path, sidecar_uds: bool = False, config_text: str | None = None,
                otlp_port: int | None = None, sidecar_args: tuple[str, ...] = (), workers: int = 1,
                envoy_settings: dict[str, Any] | None = None, envoy_args: tuple[str, ...] = ()) -> Stack:
    """The whole gateway. ``otlp_port``: a collector there receives Envoy's and the sidecar's spans.
    ``workers``: sidecar processes (``--workers``); their admin addresses are ``stack.sidecar_admins``.
    ``envoy_settings``: more arguments for rendering Envoy's config (``devstack.envoy_config.render``);
    ``envoy_args``: more arguments for the envoy command."""
    ports = EnvoyPorts(ext_proc=free_port(), ext_authz=free_port(), admin=free_port(),
                       pool_a=free_port(), pool_b=free_port(), ops=free_port())
    issuer = f"http://127.0.0.1:{free_port()}"
    keys = KeyStore(tmp / "issuer-keys")
    keys.published()
    if config_text is None:
        config_text = DEMO_CONFIG.read_text()
    config_text = config_text.replace(DEFAULT_ISSUER, issuer)
    # The policy file is a ConfigMap-style symlink so tests can swap it atomically.
    data_dir = tmp / "..v1"
    data_dir.mkdir()
    (data_dir / "policy.yaml").write_text(config_text)
    os.symlink("..v1", tmp / "..data")
    config_path = tmp / "policy.yaml"
    os.symlink("..data/policy.yaml", config_path)
    sidecar = f"unix:{tmp / 'extproc.sock'}" if sidecar_uds else f"127.0.0.1:{free_port_block(workers)}"
    admin = f"127.0.0.1:{free_port_block(workers)}"
    admins = [offset_address(admin, i) for i in range(workers)] if workers > 1 else [admin]
    sidecars = [offset_address(sidecar, i) for i in range(workers)] if workers > 1 else [sidecar]
    stack = Stack(tmp, ports, sidecars, config_path, issuer, keys)
    try:
        stack.redis = RedisServer(tmp / "redis").start()
        stack.pools = PoolsThread({"pool-a": ports.pool_a, "pool-b": ports.pool_b},
                                  int(issuer.rsplit(":", 1)[1]), keys)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
               "OTEL_BSP_SCHEDULE_DELAY": "100"} if otlp_port else {}
        sc = Child("sidecar", sidecar_command(config_path, [sidecar], admin, "--drain-seconds", "1",
                                              "--redis-url", stack.redis.url,
                                              # generous for a loaded 2-core CI box; prod default 50
                                              "--redis-timeout-ms", "250", "--workers", str(workers),
                                              *sidecar_args), tmp, env)
        stack.children.append(sc)
        for address in admins:
            wait_http(f"http://{address}/readyz", proc=sc.proc)
        envoy_yaml = tmp / "envoy.yaml"
        envoy_yaml.write_text(render(stack.sidecars, ports, access_log_path=str(tmp / "access.log"),
                                     buffer_limit_bytes=(1 << 20) + (64 << 10),
                                     otlp=("127.0.0.1", otlp_port or free_port()), **(envoy_settings or {})))
        env = Child("envoy", [envoy_binary(), "-c", str(envoy_yaml), "--log-level", "warn",
                              "--base-id", str(ports.admin), "--drain-time-s", "1", *envoy_args], tmp)
        stack.children.append(env)
        wait_http(f"http://127.0.0.1:{ports.admin}/ready", proc=env.proc)
        # Ready means listening; wait until a request really passes the sidecar.
        deadline = time.monotonic() + 20
        while stack.request("GET", "/v1/models").status != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not route a request in 20s")
            time.sleep(0.1)
        stack.sidecar_admin = admin  # type: ignore[attr-defined]
        stack.sidecar_admins = admins  # type: ignore[attr-defined]
    except BaseException:
        stack.stop()
        raise
    return stack


def swap_config(stack: Stack, text: str, version: int) -> None:
    """Replace the policy the way a Kubernetes ConfigMap update does (atomic symlink swap)."""
    new_dir = stack.dir / f"..v{version}"
    new_dir.mkdir()
    (new_dir / "policy.yaml").write_text(text)
    tmp_link = stack.dir / "..data_tmp"
    os.symlink(new_dir.name, tmp_link)
    os.replace(tmp_link, stack.dir / "..data")
