"""Composition root and lifecycle: the only module that knows every package.

``run_worker`` serves one process: gRPC (ext_proc, ext_authz, health) on every
listen address, the admin HTTP, and the config watcher. ``run_supervisor`` starts
N workers as child processes, each on its own port/socket, restarts any that die
and forwards SIGTERM/SIGINT for a graceful drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import multiprocess

from extproc.config.model import Snapshot
from extproc.config.reloader import ConfigHolder
from extproc.envoy_api import access_log, ext_authz, ext_proc
from extproc.identity.authenticator import JwtAuthenticator
from extproc.ledger.spec import RecordSettings
from extproc.ledger.writer import LedgerWriter
from extproc.pipeline import Pipeline
from extproc.quota.local_store import LocalLimiter
from extproc.quota.redis_client import client_from_url, quota_client
from extproc.quota.redis_store import RedisQuotaStore
from extproc.quota.service import QuotaService
from extproc.routing.store import RouteStore
from extproc.routing.sync import RouteSync
from extproc.runtime import settle_heap
from extproc.services.access_log import AccessLogService
from extproc.services.admin_http import RecordsApi, build_admin_app
from extproc.services.ext_authz import AuthorizationService
from extproc.services.ext_proc import ExternalProcessorService
from extproc.settings import Settings, split_host_port
from extproc.settlement.settler import Settler
from extproc.settlement.sweeper import Sweeper
from extproc.telemetry import tracing
from extproc.telemetry.decisions import DecisionObserver

log = logging.getLogger("extproc.app")

SERVICE_NAMES = (ext_proc.SERVICE_NAME, ext_authz.SERVICE_NAME, "")

_GRPC_OPTIONS = [
    # Envoy keeps few long-lived HTTP/2 connections and pings them (cluster
    # keepalive); accept those pings instead of answering GOAWAY "too_many_pings".
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 80 << 20),
]


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = ConfigHolder(settings.config_path)
        self.identity = JwtAuthenticator()
        self.redis = (quota_client(settings.redis_url, settings.redis_timeout_ms / 1000)
                      if settings.redis_url else None)
        store = RedisQuotaStore(self.redis, settings.redis_timeout_ms / 1000) if self.redis else None
        self.quota = QuotaService(store, LocalLimiter(self.config.current.quotas.replicas))
        # The live routing table follows Redis on its own client: patient timeouts and a
        # pub/sub connection, away from the quota path's short ones. No Redis: the file's table.
        self.routes = (RouteSync(RouteStore(client_from_url(settings.redis_url, 2.0)), self.config.current,
                                 settings.routes_poll_seconds) if settings.redis_url else None)
        # Records go to Redis on their own client too, written in the background in batches.
        self.ledger = (LedgerWriter(client_from_url(settings.redis_url, 2.0), self._records_settings)
                       if settings.redis_url else None)
        self.pipeline = Pipeline(self.config, self.identity, self.quota, self.routes,
                                 usage_records=self.ledger is not None)
        # Settlement: the ends of requests (Envoy's access log) and admissions whose end never
        # came (the sweeper, on its own client, off the hot path).
        self.settler = Settler(self.quota, self.ledger)
        self.quota.orphaned = self.settler.orphaned
        self.sweeper = (Sweeper(client_from_url(settings.redis_url, 2.0), self.settler,
                                lambda: self.config.current.quotas) if settings.redis_url else None)
        self.health = health.aio.HealthServicer()
        self.serving = False
        self.started_at = time.time()

    def _records_settings(self) -> RecordSettings:
        return self.config.current.config.records

    def status(self) -> dict[str, Any]:
        st = self.config.status
        return {
            "serving": self.serving,
            "pid": os.getpid(),
            "listen": list(self.settings.listen),
            "config": {
                "path": str(self.config.path),
                "version": st.version,
                "loaded_at": st.loaded_at,
                "healthy": st.healthy,
                "last_error": st.last_error,
                "last_error_at": st.last_error_at,
            },
            "issuers": self.identity.status(),
            "routes": self.routes.status() if self.routes else {
                "source": "config", "version": 0, "in_sync": True,
                "note": "no Redis configured: the policy file's routing table (hot reloaded)"},
            "quota_store": {
                "configured": self.redis is not None,
                "breaker": self.quota.store.breaker.state if isinstance(self.quota.store, RedisQuotaStore)
                else None,
            },
            "records": {
                "enabled": self.ledger is not None and self._records_settings().enabled,
                "pending": self.ledger.pending if self.ledger else 0,
            },
        }

    def servicers(self) -> tuple[ExternalProcessorService, AuthorizationService, AccessLogService]:
        """The two adapters over this worker's pipeline, observer and records, and the access-log
        service that brings the ends of requests to settlement."""
        cap, sample, ledger = self.settings.metrics_tenant_cap, self.settings.log_allow_sample, self.ledger

        def observer(adapter: str) -> DecisionObserver:
            return DecisionObserver(adapter, cap, sample, ledger)
        return (ExternalProcessorService(self.pipeline, observer("ext_proc")),
                AuthorizationService(self.pipeline, observer("ext_authz"), ledger),
                AccessLogService(self.settler))

    async def run(self, stop: asyncio.Event) -> None:
        server = grpc.aio.server(options=_GRPC_OPTIONS)
        tracing.configure()
        ext_proc_service, authz_service, access_log_service = self.servicers()
        ext_proc.add_to_server(ext_proc_service, server)
        ext_authz.add_to_server(authz_service, server)
        access_log.add_to_server(access_log_service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for address in self.settings.listen:
            if address.startswith("unix:"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(address[len("unix:"):])
            server.add_insecure_port(address)
        # Issuer keys are fetched in the background; new issuers on reload too.
        self.identity.configure(self.config.current.config.issuers)
        self.config.on_swap = self._on_config_swap
        if isinstance(self.quota.store, RedisQuotaStore):
            await self.quota.store.start()
        admin = await self._start_admin()
        await server.start()
        for name in SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True
        watcher = asyncio.create_task(self.config.watch(self.settings.reload_interval))
        route_sync = asyncio.create_task(self.routes.run()) if self.routes else None
        records = asyncio.create_task(self.ledger.run()) if self.ledger else None
        sweeper = asyncio.create_task(self.sweeper.run()) if self.sweeper else None
        log.info("serving", extra={"listen": list(self.settings.listen), "admin": self.settings.admin,
                                   "config_version": self.config.current.version})
        await stop.wait()
        # Drain: report NOT_SERVING first and keep answering for shutdown_delay
        # so health checkers steer new work away; then refuse new streams and let
        # in-flight ones finish for up to drain_seconds.
        log.info("draining", extra={"drain_seconds": self.settings.drain_seconds,
                                    "shutdown_delay": self.settings.shutdown_delay})
        self.serving = False
        await self.health.enter_graceful_shutdown()
        if self.settings.shutdown_delay > 0:
            await asyncio.sleep(self.settings.shutdown_delay)
        await server.stop(grace=self.settings.drain_seconds)
        watcher.cancel()
        if route_sync is not None:
            route_sync.cancel()
        if sweeper is not None:
            sweeper.cancel()
        await ext_proc_service.drain()  # release what ended during the drain
        await self.settler.drain()  # and settle it
        if records is not None and self.ledger is not None:
            records.cancel()
            await self.ledger.close()  # write what the drain recorded
            await self.ledger.client.aclose()
        await self.identity.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self.routes is not None:
            await self.routes.store.client.aclose()
        if self.sweeper is not None:
            await self.sweeper.client.aclose()
        tracing.shutdown()
        if admin is not None:
            await admin.cleanup()
        log.info("stopped")

    def _on_config_swap(self, snapshot: Snapshot) -> None:
        self.identity.configure(snapshot.config.issuers)
        if self.routes is not None:
            self.routes.configure(snapshot)

    async def _start_admin(self) -> web.AppRunner | None:
        if not self.settings.admin:
            return None
        records = None
        if self.ledger is not None:
            records = RecordsApi(self.ledger.client, lambda: self.config.current.config,
                                 self.settings.admin_token)
        runner = web.AppRunner(build_admin_app(self.status, records), access_log=None)
        await runner.setup()
        host, port = split_host_port(self.settings.admin)
        await web.TCPSite(runner, host, port).start()
        return runner


def run_worker(settings: Settings) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        worker = Worker(settings)
        settle_heap()  # startup is done: keep full collections short (runtime.py)
        await worker.run(stop)

    asyncio.run(main())
    return 0


def worker_command(settings: Settings, index: int) -> list[str]:
    ws = settings.for_worker(index)
    cmd = [sys.executable, "-m", "extproc", "serve", "--config", str(ws.config_path),
           "--drain-seconds", str(ws.drain_seconds), "--shutdown-delay", str(ws.shutdown_delay),
           "--log-level", ws.log_level, "--redis-timeout-ms", str(ws.redis_timeout_ms),
           "--metrics-tenant-cap", str(ws.metrics_tenant_cap), "--log-allow-sample", str(ws.log_allow_sample),
           "--routes-poll-seconds", str(ws.routes_poll_seconds), "--worker-index", str(index)]
    for address in ws.listen:
        cmd += ["--listen", address]
    cmd += ["--admin", ws.admin] if ws.admin else ["--no-admin"]
    return cmd


def run_supervisor(settings: Settings) -> int:
    """Run ``settings.workers`` worker processes until SIGTERM/SIGINT; restart any that die."""
    stopping = False
    children: dict[int, subprocess.Popen[bytes]] = {}

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Workers share one metrics directory, so any worker's /metrics covers all of them.
    metrics_dir = tempfile.mkdtemp(prefix="extproc-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    if settings.redis_url:  # by environment, not argv: the URL may hold a password (ps, /proc)
        env["EXTPROC_REDIS_URL"] = settings.redis_url
    if settings.admin_token:
        env["EXTPROC_ADMIN_TOKEN"] = settings.admin_token
    for i in range(settings.workers):
        children[i] = subprocess.Popen(worker_command(settings, i), env=env)
    log.info("supervising workers", extra={"workers": settings.workers})
    while not stopping:
        time.sleep(0.2)
        for i, child in list(children.items()):
            code = child.poll()
            if code is not None and not stopping:
                log.error("worker exited; restarting", extra={"worker": i, "exit_code": code})
                multiprocess.mark_process_dead(child.pid, metrics_dir)  # type: ignore[no-untyped-call]
                time.sleep(0.5)
                children[i] = subprocess.Popen(worker_command(settings, i), env=env)
    deadline = time.monotonic() + settings.drain_seconds + 5
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
