"""``envoy.service.auth.v3.Authorization``: the unary allow/deny path over the same pipeline."""

from __future__ import annotations

import grpc

from extproc.domain.facts import RequestFacts
from extproc.envoy_api import ext_authz as codec
from extproc.pipeline import AwaitingBody, Pipeline
from extproc.services.common import internal_error, listener_name
from extproc.telemetry.decisions import DecisionObserver
from extproc.telemetry.timing import PhaseTimer
from extproc.telemetry.tracing import DecisionSpan

_ADAPTER = "ext_authz"
_UNREADABLE = RequestFacts(method="", path="", host="", headers={})


class AuthorizationService(codec.Servicer):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline, observer: DecisionObserver | None = None) -> None:
        self._pipeline = pipeline
        self._observer = observer or DecisionObserver(_ADAPTER)

    async def Check(
        self, request: codec.CheckRequest, context: grpc.aio.ServicerContext
    ) -> codec.CheckResponse:
        timer = PhaseTimer()
        span = DecisionSpan(context.invocation_metadata(), _ADAPTER)
        facts = _UNREADABLE
        try:
            facts, body, complete = codec.request_facts(request, listener_name(context))
            with span.active():
                outcome = await self._pipeline.on_request_headers(facts, timer)
                if isinstance(outcome, AwaitingBody):
                    # Without ``with_request_body`` Envoy sends no body: decide as if absent.
                    outcome = await self._pipeline.on_request_body(facts, outcome, body or b"",
                                                                  truncated=not complete)
        except Exception:
            outcome = internal_error(_ADAPTER)
            self._observer.error()
        self._observer.observe(outcome, facts, timer)
        span.finish(outcome)
        return codec.response(outcome, facts)
