"""The sidecar's admin HTTP: liveness, readiness, status (config version, reload errors), metrics."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess


def _registry() -> CollectorRegistry:
    """With ``--workers N`` every worker writes its metrics to PROMETHEUS_MULTIPROC_DIR and
    any worker's /metrics answers for all of them; one worker uses its own registry."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def build_admin_app(status: Callable[[], dict[str, Any]]) -> web.Application:
    """``status()`` returns the worker's state; ``serving`` decides readiness."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        state = status()
        return web.json_response(state, status=200 if state["serving"] else 503)

    async def status_page(_: web.Request) -> web.Response:
        return web.json_response(status())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(_registry()), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status_page)
    app.router.add_get("/metrics", metrics)
    return app
