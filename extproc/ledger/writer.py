"""Appends records to Redis in the background, in batches, off the request path.

Nothing waits for a record: the deciding stream queues a few Python objects and goes on; a
task serialises and writes them every ``FLUSH_INTERVAL_S`` (sooner when many are waiting), in
one pipeline per batch. While Redis is unreachable records wait, up to the configured bound,
and are written when it is back; beyond the bound new ones are dropped and counted, never
silently. A batch that failed part-way is written again, so a record may appear twice in the
stream: readers count each decision id once (``ledger.query`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.ledger.records import UsageRecord, decision_record
from extproc.ledger.spec import USAGE_STREAM, RecordSettings, decision_key, keeps_allowed
from extproc.telemetry.metrics import RECORDS, RECORDS_FLUSH_ERRORS, RECORDS_PENDING
from extproc.telemetry.tracing import current_trace_id

log = logging.getLogger("extproc.records")

FLUSH_INTERVAL_S = 0.1
#: Records per pipeline; a flush is started early once this many wait.
BATCH = 500
_RETRY_MAX_S = 5.0


class _DecisionItem:
    __slots__ = ("adapter", "decision", "facts", "now_ms", "trace_id")

    def __init__(self, decision: Decision, facts: RequestFacts, adapter: str, trace_id: str | None,
                 now_ms: int) -> None:
        self.decision, self.facts, self.adapter = decision, facts, adapter
        self.trace_id, self.now_ms = trace_id, now_ms


class LedgerWriter:
    def __init__(self, client: Any, settings: Callable[[], RecordSettings]) -> None:
        """``settings()``: the current ``records`` section (the policy file is hot reloaded)."""
        self.client = client
        self._settings = settings
        self._pending: deque[_DecisionItem | UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._dropped_logged_at = 0.0
        self._failing_since: float | None = None
        self._written = {"decision": RECORDS.labels("decision", "written"),
                         "usage": RECORDS.labels("usage", "written")}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def decision(self, decision: Decision, facts: RequestFacts, adapter: str) -> None:
        """Keep this decision's record: every denial and degraded decision, sampled allows.
        Called in the request's trace context (the trace id is read only for kept records)."""
        settings = self._settings()
        if not settings.enabled or (decision.allowed and not decision.degraded
                                    and not keeps_allowed(decision.decision_id, settings.allow_sample)):
            return
        item = _DecisionItem(decision, facts, adapter, current_trace_id(), int(time.time() * 1000))
        self._queue(item, settings)

    def usage(self, record: UsageRecord) -> None:
        settings = self._settings()
        if settings.enabled:
            self._queue(record, settings)

    def usage_from(self, build: Callable[[], UsageRecord]) -> None:
        """Queue the record ``build()`` makes; a record that cannot be built (a value the schema
        cannot hold) is dropped, counted and logged, never raised into a request's handler."""
        settings = self._settings()
        if not settings.enabled:
            return  # not even built
        try:
            record = build()
        except Exception as exc:
            RECORDS.labels("usage", "invalid").inc()
            log.error("usage record could not be built; dropped",
                      extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        self._queue(record, settings)

    def _queue(self, item: _DecisionItem | UsageRecord, settings: RecordSettings) -> None:
        if len(self._pending) >= settings.max_pending:
            kind = "usage" if isinstance(item, UsageRecord) else "decision"
            RECORDS.labels(kind, "dropped").inc()
            now = time.monotonic()
            if now - self._dropped_logged_at > 10:
                self._dropped_logged_at = now
                log.error("records dropped: Redis has not taken them and the buffer is full",
                          extra={"pending": len(self._pending), "max_pending": settings.max_pending})
            return
        self._pending.append(item)
        RECORDS_PENDING.inc()
        if len(self._pending) >= BATCH and self._failing_since is None:
            self._wake.set()  # flush early; not while Redis fails (the retry backs off)

    async def run(self) -> None:
        """Write until cancelled; back off while Redis fails."""
        delay = FLUSH_INTERVAL_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                while self._pending:
                    await self.flush_batch()
            except Exception as exc:  # Redis down, timeouts: keep the records, retry later
                RECORDS_FLUSH_ERRORS.inc()
                delay = min(_RETRY_MAX_S, max(delay * 2, 0.5))
                self._note_failure(exc)
                continue
            if self._failing_since is not None:
                log.info("records are being written again", extra={
                    "outage_seconds": round(time.monotonic() - self._failing_since, 1)})
                self._failing_since = None
            delay = FLUSH_INTERVAL_S

    def _note_failure(self, exc: Exception) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("cannot write records to Redis; keeping them and retrying",
                        extra={"error": f"{type(exc).__name__}: {exc}"[:200], "pending": len(self._pending)})

    async def flush_batch(self) -> int:
        """Write up to ``BATCH`` waiting records in one pipeline; they leave the queue only once
        Redis took them. Returns how many were written."""
        settings = self._settings()
        batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
        if not batch:
            return 0
        pipe = self.client.pipeline(transaction=False)
        counts = {"decision": 0, "usage": 0}
        now_ms = int(time.time() * 1000)
        for item in batch:
            if isinstance(item, UsageRecord):
                counts["usage"] += 1
                self._add_usage(pipe, item, settings)
                continue
            try:
                self._add_decision(pipe, item, settings)
                counts["decision"] += 1
            except Exception as exc:  # one bad record must not hold back the ones behind it
                RECORDS.labels("decision", "invalid").inc()
                log.error("decision record could not be built; dropped",
                          extra={"decision_id": item.decision.decision_id,
                                 "error": f"{type(exc).__name__}: {exc}"})
        if counts["usage"]:
            pipe.xtrim(USAGE_STREAM, minid=str(now_ms - settings.usage_max_age_s * 1000), approximate=True)
        await pipe.execute()
        for _ in batch:
            self._pending.popleft()
        RECORDS_PENDING.dec(len(batch))
        for kind, n in counts.items():
            if n:
                self._written[kind].inc(n)
        return len(batch)

    @staticmethod
    def _add_decision(pipe: Any, item: _DecisionItem, settings: RecordSettings) -> None:
        record = decision_record(item.decision, item.facts, adapter=item.adapter, trace_id=item.trace_id,
                                 now_ms=item.now_ms)
        key = decision_key(record.decision_id)
        ttl = settings.allow_ttl_s if record.allowed else settings.deny_ttl_s
        pipe.hset(key, "d", record.SerializeToString())
        pipe.expire(key, ttl)

    @staticmethod
    def _add_usage(pipe: Any, record: UsageRecord, settings: RecordSettings) -> None:
        data = record.SerializeToString()
        pipe.xadd(USAGE_STREAM, {"t": record.tenant, "r": data}, maxlen=settings.usage_max_len,
                  approximate=True)
        if record.degraded or keeps_allowed(record.decision_id, settings.allow_sample):
            key = decision_key(record.decision_id)  # next to its decision record, for explain
            pipe.hset(key, "u", data)
            pipe.expire(key, settings.allow_ttl_s)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Write what is left (shutdown), for at most ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._pending:
                    await self.flush_batch()
        except Exception as exc:
            log.warning("records not written at shutdown", extra={
                "pending": len(self._pending), "error": f"{type(exc).__name__}: {exc}"[:200]})
