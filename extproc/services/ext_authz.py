"""``envoy.service.auth.v3.Authorization``: the unary allow/deny path over the same pipeline."""

from __future__ import annotations

import time

import grpc

from extproc.domain.facts import RequestFacts
from extproc.envoy_api import ext_authz as codec
from extproc.pipeline import AwaitingBody, Pipeline
from extproc.services.common import internal_error, listener_name
from extproc.telemetry.decisions import DecisionObserver

_ADAPTER = "ext_authz"
_UNREADABLE = RequestFacts(method="", path="", host="", headers={})


class AuthorizationService(codec.Servicer):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._observer = DecisionObserver(_ADAPTER)

    async def Check(
        self, request: codec.CheckRequest, context: grpc.aio.ServicerContext
    ) -> codec.CheckResponse:
        started = time.perf_counter()
        facts = _UNREADABLE
        try:
            facts, body, complete = codec.request_facts(request, listener_name(context))
            outcome = await self._pipeline.on_request_headers(facts)
            if isinstance(outcome, AwaitingBody):
                # Without ``with_request_body`` Envoy sends no body: decide as if absent.
                outcome = await self._pipeline.on_request_body(facts, outcome, body or b"",
                                                              truncated=not complete)
        except Exception:
            outcome = internal_error(_ADAPTER)
            self._observer.error()
        self._observer.observe(outcome, facts, time.perf_counter() - started)
        return codec.response(outcome, facts)
