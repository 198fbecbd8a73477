"""``envoy.service.ext_proc.v3.ExternalProcessor``: one bidirectional stream per HTTP request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import grpc

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.domain.usage import Measured, ResponseEnd, Usage, measure_response, measure_stream
from extproc.envoy_api import ext_proc as codec
from extproc.ledger.records import Timing, charged_tokens, cost_units, usage_record
from extproc.ledger.writer import LedgerWriter
from extproc.pipeline import AwaitingBody, Pipeline
from extproc.quota.recipe import SettleRecipe
from extproc.services.common import internal_error, listener_name
from extproc.settlement.settler import Settler
from extproc.telemetry.decisions import DecisionObserver
from extproc.telemetry.metrics import STREAMS_OPEN, USAGE_SETTLEMENTS
from extproc.telemetry.timing import PhaseTimer
from extproc.telemetry.tracing import DecisionSpan

log = logging.getLogger("extproc.usage")

_ADAPTER = "ext_proc"
#: How long the admitting stream leaves a streamed decision to the access log's settlement
#: (``settlement.settler``) before it settles with the estimate itself (the settle script makes
#: sure only one of them counts).
USAGE_SETTLE_GRACE_S = 5.0
#: Stands in for the facts of a request whose headers could not be read.
_UNREADABLE = RequestFacts(method="", path="", host="", headers={})


class _Stream:
    """What outlives one ext_proc stream's loop: the decision to settle and what the response showed."""

    __slots__ = ("decision", "first_body", "reached_end", "reading_body", "response_at", "started", "status",
                 "usage")

    def __init__(self) -> None:
        self.decision: Decision | None = None
        #: The usage a JSON response reported (None: not read, or none reported).
        self.usage: Usage | None = None
        self.status = 0
        self.started = time.monotonic()
        self.response_at: float | None = None
        self.first_body: float | None = None
        #: This stream asked for the response body (a JSON answer whose usage it reads).
        self.reading_body = False
        #: It saw the response's end of stream (in the headers, or the body it read).
        self.reached_end = False

    @property
    def end(self) -> ResponseEnd:
        """How the response ended, from what this stream saw. Envoy closes an ext_proc stream
        with a reset whether or not the request completed, so only what was seen counts."""
        return ResponseEnd.seen(self.response_at is not None, self.reading_body, self.reached_end)


async def _read_by(context: grpc.aio.ServicerContext, due: float) -> Any:
    """The next message from Envoy, or None when it has not come by ``due`` (loop time)."""
    try:
        async with asyncio.timeout_at(due):
            return await context.read()
    except TimeoutError:
        return None


class ExternalProcessorService(codec.Servicer):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline, observer: DecisionObserver | None = None,
                 ledger: LedgerWriter | None = None, settler: Settler | None = None) -> None:
        """``ledger``: where usage records go (None: none are kept). ``settler``: this process's
        settlement of access-log entries (what it settled, the fallback need not ask Redis)."""
        self._pipeline = pipeline
        self._observer = observer or DecisionObserver(_ADAPTER)
        self._ledger = ledger
        self._settler = settler
        self._settling: set[asyncio.Task[None]] = set()

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        listener = listener_name(context)
        stream = _Stream()
        STREAMS_OPEN.inc()
        try:
            await self._process(context, stream, listener)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            # Envoy resets the stream when the request is over, complete or not: a normal end.
            return
        except grpc.aio.UsageError:
            return  # write after the RPC finished (cancelled under us)
        finally:
            STREAMS_OPEN.dec()
            # The HTTP request is over (completed, reset or aborted): settle its quota, write
            # its usage record. A task of its own, so a cancelled stream cannot cancel it.
            decision = stream.decision
            if decision is not None and decision.allowed:
                if decision.quota is not None or decision.usage_recipe is not None:
                    self._background(self._finish(decision, stream, time.monotonic()))
                elif not decision.usage_stream:
                    self._record(decision, stream, time.monotonic(), measure_response(
                        stream.status, stream.usage, 0), charged=0)

    async def _finish(self, decision: Decision, stream: _Stream, ended_at: float) -> None:
        if decision.usage_stream and decision.usage_recipe is not None:
            await self._usage_stream_fallback(decision, decision.usage_recipe, stream, ended_at)
            return
        if decision.usage_stream:  # no recipe (quota store degraded): settlement records it
            await self._pipeline.settle(decision)
            return
        ticket = decision.quota
        counts = ticket is not None and ticket.plan.counts_tokens
        measured = measure_response(stream.status, stream.usage, decision.estimate_tokens if counts else 0)
        settled = await self._pipeline.settle(decision, measured)
        charged = charged_tokens(decision, measured, counts, settled)
        self._record(decision, stream, ended_at, measured, charged)

    async def _usage_stream_fallback(self, decision: Decision, recipe_json: str, stream: _Stream,
                                     ended_at: float) -> None:
        """Envoy's usage reader reads this streamed response and its access log brings the end to
        the settler, which settles it and writes its record. If that has not happened after a
        grace period (the access log lost, the sidecar unreachable for it), settle with the
        estimate and write the record here; the settled marker lets only one count."""
        await asyncio.sleep(USAGE_SETTLE_GRACE_S)
        if self._settler is not None and self._settler.settled_here(decision.decision_id):
            return
        recipe = SettleRecipe.from_json(recipe_json)
        if recipe.counts_tokens:
            measured = measure_response(stream.status, None, decision.estimate_tokens)
        else:
            measured = measure_stream(stream.status, None, decision.prompt_tokens, 0)
        settled = await self._pipeline.settle_streamed(recipe, measured)
        if settled is False:
            return  # settled from its access-log entry (in another process), record written
        # Settled here (the access log never came), or the store could not be reached by
        # either: the counters keep the estimate, and this record says so.
        USAGE_SETTLEMENTS.labels("admitting_stream").inc()
        log.info("streamed response settled with its estimate by the deciding stream (no access log)",
                 extra={"decision_id": decision.decision_id, "status": stream.status})
        self._record(decision, stream, ended_at, measured,
                     charged_tokens(decision, measured, recipe.counts_tokens, settled), streamed=True)

    def _record(self, decision: Decision, stream: _Stream, ended_at: float, measured: Measured,
                charged: int, streamed: bool = False) -> None:
        if self._ledger is None:
            return
        timing = Timing(stream.started, stream.response_at, stream.first_body, ended_at)
        self._ledger.usage_from(lambda: usage_record(
            decision.metadata(), measured, charged_tokens=charged, status=stream.status, streamed=streamed,
            end=stream.end, timing=timing, adapter=_ADAPTER, now_ms=int(time.time() * 1000),
            cost=cost_units(decision)))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """A task of its own, so a cancelled stream cannot cancel it; drained on shutdown."""
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

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
        body_due = 0.0  # loop time by which the body asked for must have come
        while True:
            decision = stream.decision
            if pending is None:
                request = await context.read()
            elif (request := await _read_by(context, body_due)) is None:
                # The body never came (a stalled or trickling client): answer 408 ourselves,
                # before Envoy's request_timeout, so the reply names its decision.
                assert facts is not None and span is not None
                stream.decision = self._pipeline.body_timed_out(pending)
                self._decided(stream.decision, facts, timer, span)
                await context.write(codec.immediate(stream.decision))
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
                stream.response_at = time.monotonic()
                stream.status = codec.response_status(request.response_headers)
                stream.reached_end = request.response_headers.end_of_stream
                # A local reply (e.g. Envoy's request timeout) may come while we still wait
                # for the body: the id we already made names the request all the same.
                if decision is not None:
                    # Read a JSON response's usage to record it, or to true up a token quota.
                    # Only answers to POSTs carry usage (GET /v1/models and the like never do).
                    read = ((self._ledger is not None or (decision.quota is not None
                                                         and decision.quota.plan.counts_tokens))
                            and facts is not None and facts.method == "POST"
                            and codec.response_is_json(request.response_headers))
                    stream.reading_body = read
                    response = codec.response_headers(decision.client_headers(), read_body=read)
                else:
                    waiting = [("x-extproc-decision-id", pending.decision_id)] if pending else []
                    response = codec.response_headers(waiting)
            elif kind == "response_body" and decision is not None:
                body = request.response_body
                stream.first_body = stream.first_body or time.monotonic()
                if body.end_of_stream:  # complete: a cut body keeps the estimate
                    stream.reached_end = True
                    stream.usage = await self._pipeline.response_usage(body.body)
                response = codec.passthrough(kind)
            else:
                response = codec.passthrough(kind)
            await context.write(response)
