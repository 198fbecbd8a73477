"""The sweeper: settles admissions whose end never reached settlement.

Every admission whose end should reach settlement is registered in the same script call that
admits it (``quota/lua/admit.lua``): per hash tag, a sorted set of decision ids by the time they
may be swept and a hash of the facts to settle and record them with. Settling removes the entry
(``quota/lua/settle.lua``). What is left past its time had no end reported: the sidecar worker
that admitted it was killed before Envoy had its decision, Envoy's access-log entry was lost,
or the sidecar was away when Envoy sent it. The sweeper settles each one from its facts, with
the estimate kept (the counters already hold it), frees its concurrency slot and writes its
usage record, flagged ``end: unreported``; the settled marker keeps a late access-log entry
from counting it twice.

Every worker of every replica runs one; a lock in Redis lets one sweep at a time. It finds the
tags with open admissions by ``SCAN`` (every node of a cluster), off the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

from redis import exceptions as redis_errors

from extproc.quota.redis_store import OPEN_DUE_PATTERN, facts_key_of
from extproc.quota.spec import QuotaSettings
from extproc.settlement.events import RequestEnded
from extproc.settlement.settler import Settler, unreported
from extproc.telemetry.metrics import SWEEPS

log = logging.getLogger("extproc.sweeper")

#: Held by the sidecar worker that sweeps now.
LOCK_KEY = "xq:sweeper:lock"
#: Open admissions read (and settled) per sorted set and round.
_BATCH = 256
#: Deletes the lock only if it is still this sweeper's (it may have expired and been taken).
_UNLOCK_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class Sweeper:
    def __init__(self, client: Any, settler: Settler, settings: Callable[[], QuotaSettings]) -> None:
        """``client``: a redis.asyncio client (single node, Sentinel or Cluster). ``settings``:
        the current quota settings (the sweep interval and horizon follow config reloads)."""
        self.client = client
        self._settler = settler
        self._settings = settings
        self._token = secrets.token_hex(8)
        self._unlock = client.register_script(_UNLOCK_LUA)

    async def run(self) -> None:
        """Sweep every interval (jittered, so replicas do not line up) until cancelled."""
        while True:
            interval = self._settings().sweep_interval_ms / 1000
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                await self.sweep()
            except (redis_errors.RedisError, OSError) as exc:
                SWEEPS.labels("error").inc()
                log.warning("sweep failed; trying again next interval", extra={"error": str(exc)[:200]})

    async def sweep(self) -> int:
        """One sweep, if no other sidecar is sweeping: the number of admissions it settled."""
        interval_ms = self._settings().sweep_interval_ms
        if not await self.client.set(LOCK_KEY, self._token, nx=True, px=interval_ms * 4):
            SWEEPS.labels("skipped").inc()
            return 0
        try:
            seconds, micros = await self.client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            swept = 0
            async for key in self.client.scan_iter(match=OPEN_DUE_PATTERN, count=1000, _type="zset"):
                swept += await self._sweep_key(key.decode() if isinstance(key, bytes) else key, now_ms)
        finally:
            await self._unlock(keys=[LOCK_KEY], args=[self._token])
        SWEEPS.labels("done").inc()
        if swept:
            log.warning("swept admissions whose end never reached settlement", extra={"settled": swept})
        return swept

    async def _sweep_key(self, due_key: str, now_ms: int) -> int:
        facts_key = facts_key_of(due_key)
        swept = 0
        while True:
            ids = await self.client.zrangebyscore(due_key, "-inf", now_ms, start=0, num=_BATCH)
            if not ids:
                return swept
            events: list[RequestEnded] = []
            unreadable = []
            for decision_id, blob in zip(ids, await self.client.hmget(facts_key, ids), strict=True):
                try:
                    events.append(unreported(blob.decode() if blob is not None else ""))
                except ValueError:
                    unreadable.append(decision_id)
            if unreadable:  # no facts to settle it with (they expired): its lease expires by its TTL
                log.error("open admissions without facts dropped", extra={"count": len(unreadable)})
                await self.client.zrem(due_key, *unreadable)
            results = await self._settler.ended(events)
            swept += results.count(True)
            if len(ids) < _BATCH or None in results:  # the rest, or what failed: next sweep
                return swept
