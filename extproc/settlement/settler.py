"""Settles requests from their "request ended" events: quota true-up, lease release and the usage
record, a batch at a time.

A request's end reaches the sidecar in Envoy's batched access log (``services/access_log.py``),
possibly in another worker than the one that admitted it, with what Envoy's usage reader
(``envoy/usage.lua``) saw of the response body. The decision handed its settlement over as a
recipe in its dynamic metadata (``quota.recipe``). An admission whose end never arrives is
settled by the sweeper (``settlement.sweeper``) from the facts it was registered with. The
settle script marks each decision settled, so whichever settles first counts and writes the
one usage record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence

from extproc.domain.usage import Measured, ResponseEnd, measure_response, measure_stream
from extproc.ledger.records import Timing, usage_record
from extproc.ledger.writer import LedgerWriter
from extproc.quota.recipe import SettleRecipe
from extproc.quota.service import QuotaService
from extproc.settlement.events import RequestEnded, UsageSeen
from extproc.telemetry.metrics import USAGE_SETTLEMENTS

log = logging.getLogger("extproc.usage")

#: What settlement knows of a response its reader never saw (no body passed, or none read).
_NOTHING_SEEN = UsageSeen(None, False, 0)


class Settler:
    def __init__(self, quota: QuotaService, ledger: LedgerWriter | None, adapter: str = "ext_proc") -> None:
        """``ledger``: where usage records go (None: none are kept)."""
        self._quota = quota
        self._ledger = ledger
        self._adapter = adapter
        self._settling: set[asyncio.Task[list[bool | None]]] = set()

    async def ended(self, events: Sequence[RequestEnded]) -> list[bool | None]:
        """Settle a batch of ended requests. The settle calls of one batch leave together (the
        quota client writes one event-loop turn's commands in one write). For each: True when
        this settled it (and wrote its record), False when it was settled already, None when
        it could not be settled now (it stays open for the sweeper)."""
        return list(await asyncio.gather(*(self._settle(event) for event in events)))

    def submit(self, events: Sequence[RequestEnded]) -> None:
        """Settle these in the background (a task of its own, drained on shutdown): the access
        log goes on reading the next batch meanwhile."""
        task = asyncio.get_running_loop().create_task(self.ended(events))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def orphaned(self, facts: str) -> None:
        """An admission registered for settlement whose request was cancelled before Envoy had
        its decision (``QuotaService.orphaned``): settle and record it now, in the background."""
        try:
            self.submit([unreported(facts, ResponseEnd.NO_RESPONSE)])
        except ValueError:
            return  # not ours to read: the sweeper settles it

    async def drain(self) -> None:
        """Wait for settlements still in flight (shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def _settle(self, event: RequestEnded) -> bool | None:
        meta, seen = event.decision, event.seen or _NOTHING_SEEN
        measured = _measure(event, seen)
        charged = 0
        if recipe_json := meta.get("settle"):
            try:
                recipe = SettleRecipe.from_json(recipe_json)
                settled = await self._quota.settle_recipe(recipe, measured.total_tokens)
            except Exception:
                log.exception("settling a request failed; the sweeper settles it",
                              extra={"decision_id": meta.get("decision_id")})
                return None
            if not settled:
                # False: settled already (the sweeper came first); it wrote the record. None: the
                # store could not be reached; the admission stays open and the sweeper settles it.
                USAGE_SETTLEMENTS.labels("already_settled" if settled is False else "store_unavailable").inc()
                return settled
            charged = measured.total_tokens if recipe.counts_tokens else 0
        source = "swept" if event.end is ResponseEnd.UNREPORTED else measured.source
        USAGE_SETTLEMENTS.labels(source).inc()
        self._log(event, seen, measured)
        if self._ledger is not None:
            self._ledger.usage_from(lambda: usage_record(
                meta, measured, charged_tokens=charged, status=event.status, streamed=seen.streamed,
                end=event.end, timing=event.timing, adapter=meta.get("adapter", self._adapter),
                now_ms=int(time.time() * 1000), cost=_cost(meta)))
        return True

    @staticmethod
    def _log(event: RequestEnded, seen: UsageSeen, measured: Measured) -> None:
        decision_id = event.decision.get("decision_id")
        if event.end is ResponseEnd.UNREPORTED:
            log.warning("settled by the sweeper: the request's end never reached settlement (a killed "
                        "worker, a lost access-log batch, or the sidecar was away); charged its estimate",
                        extra={"decision_id": decision_id, "tokens": measured.total_tokens})
        elif seen.streamed and measured.source != "reported":
            log.info("streamed response settled without reported usage", extra={
                "decision_id": decision_id, "source": measured.source, "tokens": measured.total_tokens,
                "completed": seen.completed, "end": event.end.value, "events": seen.events,
                "status": event.status})


def _measure(event: RequestEnded, seen: UsageSeen) -> Measured:
    """What the request used: what the provider reported, else the estimate (for a stream, the
    prompt's share plus the text seen), nothing for an upstream error."""
    meta = event.decision
    if seen.streamed:
        return measure_stream(event.status, seen.usage, int(meta.get("prompt_tokens") or 0), seen.text_tokens)
    return measure_response(event.status, seen.usage, int(meta.get("estimate_tokens") or 0))


def _cost(meta: Mapping[str, str]) -> tuple[str, int] | None:
    """A class measured in other units than tokens: the unit and units charged."""
    unit, units = meta.get("cost_unit"), meta.get("cost_units")
    return (unit, int(units)) if unit and units and units.isdigit() else None


def unreported(facts: str, end: ResponseEnd = ResponseEnd.UNREPORTED) -> RequestEnded:
    """The event for an admission whose end never reached settlement, from the facts it was
    registered with (``quota.service``). Raises ValueError on anything else."""
    meta = json.loads(facts)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("not the facts of an admission")
    return RequestEnded(meta, 0, end, None, Timing(0.0))
