"""``envoy.service.ext_proc.v3.ExternalProcessor``: one bidirectional stream per HTTP request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import grpc

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.domain.sse_usage import SseUsageReader, StreamUsage
from extproc.envoy_api import ext_proc as codec
from extproc.pipeline import AwaitingBody, Pipeline
from extproc.services.common import internal_error, listener_name
from extproc.telemetry.decisions import DecisionObserver
from extproc.telemetry.metrics import STREAMS_OPEN, USAGE_SETTLEMENTS
from extproc.telemetry.timing import PhaseTimer
from extproc.telemetry.tracing import DecisionSpan

log = logging.getLogger("extproc.usage")

_ADAPTER = "ext_proc"
#: The listener name (gRPC metadata) of the second, observe-only ext_proc filter that reads
#: streamed responses (envoy/README.md "Streamed usage").
USAGE_LISTENER = "usage"
#: How long the admitting stream leaves a streamed decision to the usage stream before it
#: settles with the estimate itself (the settle script makes sure only one of them counts).
USAGE_SETTLE_GRACE_S = 5.0
#: Stands in for the facts of a request whose headers could not be read.
_UNREADABLE = RequestFacts(method="", path="", host="", headers={})


class _Stream:
    """What outlives one ext_proc stream's loop: the decision to settle at its end."""

    __slots__ = ("actual_tokens", "decision")

    def __init__(self) -> None:
        self.decision: Decision | None = None
        #: Tokens the response reported (JSON ``usage``); None keeps the admission estimate.
        self.actual_tokens: int | None = None


class ExternalProcessorService(codec.Servicer):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline, observer: DecisionObserver | None = None) -> None:
        self._pipeline = pipeline
        self._observer = observer or DecisionObserver(_ADAPTER)
        self._settling: set[asyncio.Task[None]] = set()

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        listener = listener_name(context)
        if listener == USAGE_LISTENER:
            await self._observe_usage(context)
            return
        stream = _Stream()
        STREAMS_OPEN.inc()
        try:
            await self._process(context, stream, listener)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            # Envoy cancels the stream when the client goes away or the request
            # ends early: a normal end, nothing to report.
            return
        except grpc.aio.UsageError:
            return  # write after the RPC finished (cancelled under us)
        finally:
            STREAMS_OPEN.dec()
            # The HTTP request is over (completed, reset or aborted): settle its quota.
            # A task of its own, so a cancelled stream cannot cancel the settlement.
            decision = stream.decision
            if decision is not None and decision.quota is not None:
                wait = USAGE_SETTLE_GRACE_S if decision.usage_recipe and stream.actual_tokens is None else 0
                self._background(self._settle(decision, stream.actual_tokens, wait))

    async def _settle(self, decision: Decision, actual_tokens: int | None, wait: float) -> None:
        if wait:
            await asyncio.sleep(wait)  # the usage stream settles first with the real usage
        await self._pipeline.settle(decision, actual_tokens)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """A task of its own, so a cancelled stream cannot cancel it; drained on shutdown."""
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _observe_usage(self, context: grpc.aio.ServicerContext) -> None:
        """The usage filter's stream (Envoy observability mode): read, never answer, so the
        response reaches the client without waiting for us. Settles when the stream ends."""
        recipe, status, ended = None, 0, False
        reader = SseUsageReader()
        try:
            # Envoy does not close an observability stream when the response ends (it keeps
            # it for deferred_close_timeout): the end of the body is our end.
            while not ended and (request := await context.read()) is not grpc.aio.EOF:
                kind = request.WhichOneof("request")
                if kind == "response_body":
                    reader.feed(request.response_body.body)
                    ended = ended or request.response_body.end_of_stream
                elif kind == "request_headers":
                    recipe = codec.forwarded_metadata(request, "settle")
                elif kind == "response_headers":
                    status = codec.response_status(request.response_headers)
                    ended = request.response_headers.end_of_stream
        except (asyncio.CancelledError, grpc.aio.AbortError, grpc.aio.UsageError):
            pass  # the request ended early: settle with what was seen
        finally:
            if recipe is not None:
                self._background(self._settle_streamed(recipe, reader.result(ended), status, ended))

    async def _settle_streamed(self, recipe: str, seen: StreamUsage, status: int, ended: bool) -> None:
        try:
            tokens, source = await self._pipeline.settle_streamed(recipe, seen, status)
        except Exception:
            log.exception("settling a streamed response failed; the admitting stream settles it")
            return
        USAGE_SETTLEMENTS.labels(source).inc()
        if source != "reported":
            log.info("streamed response settled without reported usage", extra={
                "source": source, "tokens": tokens, "completed": seen.completed and ended,
                "events": seen.events, "status": status})

    def _decided(self, decision: Decision, facts: RequestFacts, timer: PhaseTimer,
                 span: DecisionSpan) -> None:
        self._observer.observe(decision, facts, timer)
        span.finish(decision)

    async def drain(self) -> None:
        """Wait for settlements still in flight (shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def _process(self, context: grpc.aio.ServicerContext, stream: _Stream, listener: str) -> None:
        timer = PhaseTimer()
        span: DecisionSpan | None = None
        facts: RequestFacts | None = None
        pending: AwaitingBody | None = None
        while True:
            decision = stream.decision
            request = await context.read()
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
                    response = codec.read_body(facts)
                else:
                    stream.decision = outcome
                    self._decided(outcome, facts, timer, span)
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
                stream.decision = decision
                self._decided(decision, facts, timer, span)
                response = codec.decided(decision, facts, "body")
            elif kind == "response_headers":
                # A local reply (e.g. Envoy's request timeout) may come while we still wait
                # for the body: the id we already made names the request all the same.
                if decision is not None:
                    # Read a JSON response's usage when a token quota can be trued up with it.
                    read = (decision.quota is not None and decision.quota.plan.counts_tokens
                            and codec.response_is_json(request.response_headers))
                    response = codec.response_headers(decision.client_headers(), read_body=read)
                else:
                    waiting = [("x-extproc-decision-id", pending.decision_id)] if pending else []
                    response = codec.response_headers(waiting)
            elif kind == "response_body" and decision is not None:
                body = request.response_body
                if body.end_of_stream:  # complete: a cut body keeps the estimate
                    stream.actual_tokens = await self._pipeline.response_tokens(body.body)
                response = codec.passthrough(kind)
            else:
                response = codec.passthrough(kind)
            await context.write(response)
