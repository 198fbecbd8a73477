"""The sidecar's admin HTTP: liveness, readiness, status (config version, reload errors), metrics,
and, behind an admin token, the records: ``/v1/decisions/{id}`` and ``/v1/usage?tenant=…``."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from redis.exceptions import RedisError

from extproc.config.model import PolicyConfig
from extproc.ledger.operator import decision_document, usage_document, usage_json
from extproc.ledger.query import GROUPINGS, parse_since


def _registry() -> CollectorRegistry:
    """With ``--workers N`` every worker writes its metrics to PROMETHEUS_MULTIPROC_DIR and
    any worker's /metrics answers for all of them; one worker uses its own registry."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


log = logging.getLogger("extproc.admin")

#: Usage records one /v1/usage call may scan (it runs on the worker's event loop, between pages).
HTTP_MAX_SCAN = 200_000


@dataclass(frozen=True, slots=True)
class RecordsApi:
    """What the records endpoints read: the Redis holding them, the current policy config,
    and the token callers must present (``Authorization: Bearer …``)."""

    client: Any
    config: Callable[[], PolicyConfig]
    token: str | None


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _redis_down(exc: BaseException) -> web.Response:
    log.warning("admin API: cannot read records", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
    return _error(503, "records_unavailable", f"cannot read records from Redis: {type(exc).__name__}")


def _records_routes(app: web.Application, api: RecordsApi | None) -> None:
    def refused(request: web.Request) -> web.Response | None:
        if api is None:
            return _error(503, "records_unavailable", "records need Redis (--redis-url); none is configured")
        if not api.token:
            return _error(404, "admin_api_disabled",
                          "the records API is off: set EXTPROC_ADMIN_TOKEN (or --admin-token-file)")
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), api.token.encode()):
            log.warning("admin API: request without a valid admin token", extra={"path": request.path})
            return _error(401, "unauthorized", "send the admin token: Authorization: Bearer <token>")
        return None

    async def decision(request: web.Request) -> web.Response:
        if (denied := refused(request)) is not None:
            return denied
        assert api is not None
        try:
            doc = await decision_document(api.client, request.match_info["decision_id"], api.config())
        except (OSError, RedisError) as exc:
            return _redis_down(exc)
        return web.json_response(doc, status=200 if doc["found"] else 404)

    async def usage(request: web.Request) -> web.Response:
        if (denied := refused(request)) is not None:
            return denied
        assert api is not None
        tenant = request.query.get("tenant", "")
        by = request.query.get("by", "model")
        if not tenant:
            return _error(400, "bad_request", "tenant=… is required")
        if by not in GROUPINGS:
            return _error(400, "bad_request", f"by must be one of {', '.join(GROUPINGS)}")
        try:
            since = parse_since(request.query.get("since", "24h"))
        except ValueError as exc:
            return _error(400, "bad_request", f"since: {exc}")
        try:
            # Bounded below the CLI's: the scan shares this worker's event loop with gRPC.
            report, budgets = await usage_document(api.client, api.config(), tenant, since, by,
                                                   max_scan=HTTP_MAX_SCAN)
        except (OSError, RedisError) as exc:
            return _redis_down(exc)
        return web.json_response(usage_json(report, budgets))

    app.router.add_get("/v1/decisions/{decision_id}", decision)
    app.router.add_get("/v1/usage", usage)


def build_admin_app(status: Callable[[], dict[str, Any]],
                    records: RecordsApi | None = None) -> web.Application:
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
    _records_routes(app, records)
    return app
