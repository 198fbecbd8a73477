"""``envoy.service.ext_proc.v3.ExternalProcessor``: one bidirectional stream per HTTP request."""

from __future__ import annotations

import asyncio
import time

import grpc

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.envoy_api import ext_proc as codec
from extproc.pipeline import AwaitingBody, Pipeline
from extproc.services.common import internal_error, listener_name
from extproc.telemetry.decisions import DecisionObserver

_ADAPTER = "ext_proc"
#: Stands in for the facts of a request whose headers could not be read.
_UNREADABLE = RequestFacts(method="", path="", host="", headers={})


class ExternalProcessorService(codec.Servicer):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._observer = DecisionObserver(_ADAPTER)

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        try:
            await self._process(context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            # Envoy cancels the stream when the client goes away or the request
            # ends early: a normal end, nothing to report.
            return
        except grpc.aio.UsageError:
            return  # write after the RPC finished (cancelled under us)

    async def _process(self, context: grpc.aio.ServicerContext) -> None:
        listener = listener_name(context)
        facts: RequestFacts | None = None
        pending: AwaitingBody | None = None
        decision: Decision | None = None
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                started = time.perf_counter()
                facts = _UNREADABLE
                try:
                    facts = codec.request_facts(request.request_headers, listener)
                    outcome = await self._pipeline.on_request_headers(facts)
                except Exception:
                    outcome = internal_error(_ADAPTER)
                    self._observer.error()
                if isinstance(outcome, AwaitingBody):
                    pending = outcome
                    response = codec.read_body(facts)
                else:
                    decision = outcome
                    self._observer.observe(decision, facts, time.perf_counter() - started)
                    response = codec.decided(decision, facts, "headers")
            elif kind == "request_body" and pending is not None and facts is not None:
                body = request.request_body
                started = time.perf_counter()
                try:
                    decision = await self._pipeline.on_request_body(facts, pending, body.body)
                except Exception:
                    decision = internal_error(_ADAPTER)
                    self._observer.error()
                pending = None
                self._observer.observe(decision, facts, time.perf_counter() - started)
                response = codec.decided(decision, facts, "body")
            elif kind == "response_headers":
                # A local reply (e.g. Envoy's request timeout) may come while we still wait
                # for the body: the id we already made names the request all the same.
                decision_id = decision.decision_id if decision else pending.decision_id if pending else None
                response = codec.response_headers(decision_id)
            else:
                response = codec.passthrough(kind)
            await context.write(response)
