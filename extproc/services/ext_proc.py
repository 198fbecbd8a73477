"""``envoy.service.ext_proc.v3.ExternalProcessor``: one bidirectional stream per HTTP request."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.envoy_api import ext_proc as codec
from extproc.pipeline import AwaitingBody, Pipeline
from extproc.services.common import internal_error, listener_name
from extproc.telemetry.decisions import DecisionObserver
from extproc.telemetry.metrics import STREAMS_OPEN
from extproc.telemetry.timing import PhaseTimer
from extproc.telemetry.tracing import DecisionSpan

_ADAPTER = "ext_proc"
#: Stands in for the facts of a request whose headers could not be read.
_UNREADABLE = RequestFacts(method="", path="", host="", headers={})


async def _read_by(context: grpc.aio.ServicerContext, due: float) -> Any:
    """The next message from Envoy, or None when it has not come by ``due`` (loop time)."""
    try:
        async with asyncio.timeout_at(due):
            return await context.read()
    except TimeoutError:
        return None


class ExternalProcessorService(codec.Servicer):  # type: ignore[misc]
    """Decides each request on its headers, or its headers and body. The response is never sent
    here: its usage is read in Envoy and its end reaches settlement in Envoy's access log
    (``settlement``); the headers the client gets come from the decision's dynamic metadata."""

    def __init__(self, pipeline: Pipeline, observer: DecisionObserver | None = None) -> None:
        self._pipeline = pipeline
        self._observer = observer or DecisionObserver(_ADAPTER)
        self._releasing: set[asyncio.Task[None]] = set()

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        listener = listener_name(context)
        decided: list[Decision] = []
        STREAMS_OPEN.inc()
        try:
            await self._process(context, decided, listener)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            # Envoy resets the stream when the request is over, complete or not: a normal end.
            return
        except grpc.aio.UsageError:
            return  # write after the RPC finished (cancelled under us)
        finally:
            STREAMS_OPEN.dec()
            # Envoy closes the stream when the request ends, complete or not: its concurrency
            # slots are freed now, ahead of its settlement from the access log. A task of its
            # own, so a cancelled stream cannot cancel it.
            if decided and decided[0].allowed and decided[0].quota is not None \
                    and decided[0].quota.plan.has_leases:
                task = asyncio.get_running_loop().create_task(self._pipeline.release(decided[0]))
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)

    def _decided(self, decision: Decision, facts: RequestFacts, timer: PhaseTimer,
                 span: DecisionSpan, decided: list[Decision]) -> None:
        decided.append(decision)
        self._observer.observe(decision, facts, timer)
        span.finish(decision)

    async def drain(self) -> None:
        """Wait for releases still in flight (shutdown)."""
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)

    async def _process(self, context: grpc.aio.ServicerContext, decided: list[Decision],
                       listener: str) -> None:
        timer = PhaseTimer()
        span: DecisionSpan | None = None
        facts: RequestFacts | None = None
        pending: AwaitingBody | None = None
        body_due = 0.0  # loop time by which the body asked for must have come
        while True:
            if pending is None:
                request = await context.read()
            elif (request := await _read_by(context, body_due)) is None:
                # The body never came (a stalled or trickling client): answer 408 ourselves,
                # before Envoy's request_timeout, so the reply names its decision.
                assert facts is not None and span is not None
                decision = self._pipeline.body_timed_out(pending)
                self._decided(decision, facts, timer, span, decided)
                await context.write(codec.immediate(decision))
                return
            if request is grpc.aio.EOF:
                return
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                span = DecisionSpan(context.invocation_metadata(), _ADAPTER)
                facts = _UNREADABLE
                try:
                    facts = codec.request_facts(request.request_headers, listener)
                    with span.active():
                        outcome = await self._pipeline.on_request_headers(facts, timer)
                except Exception:
                    outcome = internal_error(_ADAPTER)
                    self._observer.error()
                if isinstance(outcome, AwaitingBody):
                    pending = outcome
                    body_due = asyncio.get_running_loop().time() + outcome.snapshot.body_timeout_seconds
                    response = codec.read_body(facts)
                else:
                    self._decided(outcome, facts, timer, span, decided)
                    response = codec.decided(outcome, facts, "headers")
            elif kind == "request_body" and pending is not None:
                assert facts is not None and span is not None  # set with pending, at the headers
                try:
                    with span.active():
                        decision = await self._pipeline.on_request_body(
                            facts, pending, request.request_body.body)
                except Exception:
                    decision = internal_error(_ADAPTER)
                    self._observer.error()
                pending = None
                self._decided(decision, facts, timer, span, decided)
                response = codec.decided(decision, facts, "body")
            else:
                response = codec.passthrough(kind)
            await context.write(response)
