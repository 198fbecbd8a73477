"""Settles streamed responses from their "request ended" events: quota true-up, lease release and
the usage record, a batch at a time.

A streamed (SSE) response's usage is read inside Envoy as it passes (``envoy/usage.lua``); its
end reaches the sidecar in Envoy's batched access log (``services/access_log.py``), possibly in
another worker than the one that admitted it. The decision handed its settlement over as a
recipe in its dynamic metadata (``quota.recipe``). The settle script marks each decision
settled, so whichever settles first counts: this, or the admitting stream after its grace
period when the access log never came (``services/ext_proc.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from extproc.domain.usage import measure_stream
from extproc.ledger.records import usage_record
from extproc.ledger.writer import LedgerWriter
from extproc.quota.recipe import SettleRecipe
from extproc.quota.service import QuotaService
from extproc.settlement.events import RequestEnded, UsageSeen
from extproc.telemetry.metrics import USAGE_SETTLEMENTS

log = logging.getLogger("extproc.usage")

#: The settlement source of a streamed response its reader never saw (no body passed).
_NOTHING_SEEN = UsageSeen(None, False, 0)
#: Decisions this process settled lately, remembered so that the deciding stream's fallback
#: (after its grace period) need not ask Redis again; well beyond a grace period's worth.
_REMEMBERED = 100_000


class Settler:
    def __init__(self, quota: QuotaService, ledger: LedgerWriter | None, adapter: str = "ext_proc") -> None:
        """``ledger``: where usage records go (None: none are kept)."""
        self._quota = quota
        self._ledger = ledger
        self._adapter = adapter
        self._settled: dict[str, None] = {}

    def settled_here(self, decision_id: str) -> bool:
        """This process settled the decision already (from its access-log entry)."""
        return decision_id in self._settled

    def _remember(self, decision_id: str) -> None:
        if len(self._settled) >= _REMEMBERED:
            del self._settled[next(iter(self._settled))]
        self._settled[decision_id] = None

    async def ended(self, events: Sequence[RequestEnded]) -> None:
        """Settle a batch of ended requests. The settle calls of one batch leave together (the
        quota client writes one event-loop turn's commands in one write)."""
        streamed = [event for event in events if event.decision.get("usage") == "stream"]
        if streamed:
            await asyncio.gather(*(self._settle_streamed(event) for event in streamed))

    async def _settle_streamed(self, event: RequestEnded) -> None:
        meta, seen = event.decision, event.seen or _NOTHING_SEEN
        measured = measure_stream(event.status, seen.usage, int(meta.get("prompt_tokens") or 0),
                                  seen.text_tokens)
        charged, source = 0, measured.source
        if recipe_json := meta.get("settle"):
            try:
                recipe = SettleRecipe.from_json(recipe_json)
                settled = await self._quota.settle_recipe(recipe, measured.total_tokens)
            except Exception:
                log.exception("settling a streamed response failed; the admitting stream settles it",
                              extra={"decision_id": meta.get("decision_id")})
                return
            if settled is not None:
                self._remember(meta.get("decision_id", ""))
            if not settled:
                # False: the admitting stream settled it and wrote its record. None: the store
                # could not be reached; the admitting stream tries again after its grace period.
                USAGE_SETTLEMENTS.labels("already_settled" if settled is False else "store_unavailable").inc()
                return
            charged = measured.total_tokens if recipe.counts_tokens else 0
        USAGE_SETTLEMENTS.labels(source).inc()
        if source != "reported":
            log.info("streamed response settled without reported usage", extra={
                "decision_id": meta.get("decision_id"), "source": source, "tokens": measured.total_tokens,
                "completed": seen.completed, "end": event.end.value, "events": seen.events,
                "status": event.status})
        if self._ledger is not None:
            self._ledger.usage_from(lambda: usage_record(
                meta, measured, charged_tokens=charged, status=event.status, streamed=True, end=event.end,
                timing=event.timing, adapter=self._adapter, now_ms=int(time.time() * 1000)))
