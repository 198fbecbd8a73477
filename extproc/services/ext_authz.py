"""``envoy.service.auth.v3.Authorization``: the unary allow/deny path over the same pipeline."""

from __future__ import annotations

import time

import grpc

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.domain.usage import ResponseEnd, measure_response
from extproc.envoy_api import ext_authz as codec
from extproc.ledger.records import Timing, charged_tokens, usage_record
from extproc.ledger.writer import LedgerWriter
from extproc.pipeline import AwaitingBody, Pipeline
from extproc.services.common import internal_error, listener_name
from extproc.telemetry.decisions import DecisionObserver
from extproc.telemetry.timing import PhaseTimer
from extproc.telemetry.tracing import DecisionSpan

_ADAPTER = "ext_authz"
_UNREADABLE = RequestFacts(method="", path="", host="", headers={})


class AuthorizationService(codec.Servicer):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline, observer: DecisionObserver | None = None,
                 ledger: LedgerWriter | None = None) -> None:
        """``ledger``: where usage records go (None: none are kept)."""
        self._pipeline = pipeline
        self._observer = observer or DecisionObserver(_ADAPTER)
        self._ledger = ledger

    async def Check(
        self, request: codec.CheckRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
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
        if self._ledger is not None and outcome.allowed:
            self._record(self._ledger, outcome, timer)
        return codec.response(outcome, facts)

    @staticmethod
    def _record(ledger: LedgerWriter, decision: Decision, timer: PhaseTimer) -> None:
        """ext_authz never sees the response: the usage record is the admission's estimate (what
        the quota counters keep, since nothing trues them up), written at the decision."""
        ticket = decision.quota
        counts = ticket is not None and ticket.plan.counts_tokens
        measured = measure_response(0, None, decision.estimate_tokens if counts else 0)
        charged = charged_tokens(decision, measured, counts, settled=True)  # nothing to true up
        started = time.monotonic() - timer.total
        ledger.usage_from(lambda: usage_record(
            decision.metadata(), measured, charged_tokens=charged, status=0, streamed=False,
            end=ResponseEnd.NOT_OBSERVED, timing=Timing(started), adapter=_ADAPTER,
            now_ms=int(time.time() * 1000), cost=decision.cost))
