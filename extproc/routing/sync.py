"""Keep a sidecar's routing table in step with the live table in Redis.

The table served is an immutable ``RoutingTable`` read by the hot path as one
attribute (``current``) and swapped by reference. A new version is noticed two
ways: a pub/sub message on ``extproc:routes`` (milliseconds) and a periodic
version check (the safety net for missed messages, and the only way on a Redis
Cluster client, which has no pub/sub here). A version is validated against this
sidecar's pools before it is swapped in; an invalid one is rejected and never
replaces the last good table. Versions never go backwards within an epoch.

On start the sidecar serves the policy file's table (version 0) and publishes it
as version 1 if Redis holds no table yet (the seed). If Redis cannot be reached
it keeps serving the last good table and says so in ``/status`` and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from extproc.config.model import Snapshot
from extproc.config.reader import ConfigError
from extproc.routing.document import canonical_json
from extproc.routing.store import CHANNEL, Outcome, RouteStore, StoredTable
from extproc.telemetry.metrics import ROUTES_IN_SYNC, ROUTES_LAST_SYNC, ROUTES_UPDATES, ROUTES_VERSION

log = logging.getLogger("extproc.routing")


@dataclass(frozen=True, slots=True)
class SyncState:
    in_sync: bool = False
    last_sync_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    rejected_version: int | None = None
    rejected_errors: tuple[str, ...] = ()
    pubsub: bool = False


class RouteSync:
    """``current``: the table to route with. ``run()`` follows Redis until cancelled."""

    def __init__(self, store: RouteStore, snapshot: Snapshot, poll_seconds: float = 2.0) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.current = snapshot.routes  # the policy file's table until Redis answers
        self.state = SyncState()
        self._snapshot = snapshot
        self._stored: StoredTable | None = None
        self._lock = asyncio.Lock()
        ROUTES_VERSION.set(0)
        ROUTES_IN_SYNC.set(0)

    def configure(self, snapshot: Snapshot) -> None:
        """A new policy file: its pools may differ, so the served table is checked against them."""
        self._snapshot = snapshot
        if self._stored is None:
            self.current = snapshot.routes
            return
        try:
            self._stored.spec(self._snapshot.config)
        except ConfigError as exc:
            log.error("the live routing table names pools the new policy file does not have; "
                      "still serving it, publish a fixed table", extra={"errors": exc.errors})
            self.state = replace(self.state, last_error="; ".join(exc.errors), last_error_at=time.time())

    def status(self) -> dict[str, Any]:
        o, s = self.current.origin, self.state
        return {
            "source": o.source, "version": o.version, "epoch": o.epoch, "author": o.author,
            "reason": o.reason, "created_at": o.created_at, "in_sync": s.in_sync,
            "last_sync_at": s.last_sync_at, "last_error": s.last_error, "last_error_at": s.last_error_at,
            "rejected_version": s.rejected_version, "rejected_errors": list(s.rejected_errors),
            "pubsub": s.pubsub, "poll_seconds": self.poll_seconds,
        }

    async def refresh(self) -> bool:
        """Check Redis once; swap in a newer valid version. True when a new table was swapped in."""
        async with self._lock:
            try:
                swapped = await self._refresh()
            except Exception as exc:  # Redis down or slow: keep serving the last good table
                if self.state.in_sync or self.state.last_error is None:
                    log.warning("cannot read the live routing table; serving the last good one",
                                extra={"routes_version": self.current.version, "error": repr(exc)})
                self.state = replace(self.state, in_sync=False, last_error=repr(exc),
                                      last_error_at=time.time())
                ROUTES_IN_SYNC.set(0)
                return False
            now = time.time()
            self.state = replace(self.state, in_sync=True, last_sync_at=now)
            ROUTES_IN_SYNC.set(1)
            ROUTES_LAST_SYNC.set(now)
            return swapped

    async def _refresh(self) -> bool:
        version, epoch = await self.store.head()
        if version == 0:
            seeded = await self.store.publish(
                canonical_json(self._snapshot.config.routing), author="seed",
                reason=f"seed from the policy file {self._snapshot.config.source} "
                       f"(config {self._snapshot.version})", expected="absent")
            if seeded.outcome is Outcome.PUBLISHED:
                log.info("seeded the live routing table from the policy file",
                         extra={"routes_version": seeded.version})
            version, epoch = seeded.version, seeded.epoch
        served = self.current.origin
        if served.source == "redis" and epoch == served.epoch and version <= served.version:
            return False  # never backwards within one history
        if self.state.rejected_version == version and epoch == served.epoch:
            return False  # already rejected; wait for a newer one
        stored = await self.store.get(version)
        if stored is None:
            return False  # trimmed or replaced meanwhile; the next check sees the newest
        if served.source == "redis" and stored.epoch != served.epoch:
            log.warning("the routing store's history changed (wiped and re-seeded?); following it",
                        extra={"old_epoch": served.epoch, "new_epoch": stored.epoch,
                               "routes_version": stored.version})
        try:
            table = stored.table(self._snapshot.config)
        except ConfigError as exc:
            ROUTES_UPDATES.labels("rejected").inc()
            self.state = replace(self.state, rejected_version=stored.version,
                                  rejected_errors=tuple(exc.errors))
            log.error("rejected routing table version; still serving the last good one",
                      extra={"rejected_version": stored.version, "routes_version": served.version,
                             "errors": exc.errors})
            return False
        previous = self.current.version
        self.current = table
        self._stored = stored
        ROUTES_UPDATES.labels("applied").inc()
        ROUTES_VERSION.set(stored.version)
        log.info("routing table updated", extra={
            "routes_version": stored.version, "previous_version": previous, "author": stored.author,
            "reason": stored.reason})
        return True

    async def run(self) -> None:
        """Follow Redis: pub/sub for speed, a periodic check as the safety net."""
        listener = asyncio.create_task(self._listen())
        try:
            while True:
                await self.refresh()
                await asyncio.sleep(self.poll_seconds)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self) -> None:
        if not hasattr(self.store.client, "pubsub"):
            return  # Redis Cluster client: the periodic check alone
        backoff = 0.5
        while True:
            pubsub = self.store.client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                self.state = replace(self.state, pubsub=True)
                backoff = 0.5
                await self.refresh()  # catch up on what was published while not subscribed
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=self.poll_seconds)
                    if message is not None:
                        await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.state = replace(self.state, pubsub=False)
                log.debug("routing pub/sub lost; retrying", extra={"error": repr(exc)})
                await self.refresh()  # a lost connection is news: check (and report) at once
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

