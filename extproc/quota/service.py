"""The quota step: plan the limits, admit in the shared store, fall back by failure mode, settle."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from extproc.domain.classify import Classification, TokenUse
from extproc.domain.identity import Identity
from extproc.domain.params import RequestParams
from extproc.quota.local_store import LocalLimiter
from extproc.quota.plan import QuotaPlan, plan
from extproc.quota.recipe import SettleRecipe
from extproc.quota.redis_store import RedisQuotaStore, settle_recipe
from extproc.quota.spec import FailureMode, QuotaSettings
from extproc.quota.store import Admission, OpenAdmission, QuotaStore, StoreUnavailable
from extproc.telemetry.metrics import DEGRADED, QUOTA_DENIALS

log = logging.getLogger("extproc.quota")

#: Pauses between the tries of one settlement while Redis does not answer.
_SETTLE_RETRY_PAUSES_S = (0.2, 0.5)
#: Below this many completion tokens a clamped request is not worth sending.
_MIN_CLAMPED_TOKENS = 16


@dataclass(frozen=True, slots=True)
class QuotaTicket:
    """What settlement needs: the plan, who decided (store or local) and when."""

    plan: QuotaPlan
    admission: Admission


class QuotaService:
    def __init__(self, store: QuotaStore | None, local: LocalLimiter | None = None) -> None:
        self.store = store
        self.local = local or LocalLimiter()
        self._orphans: set[asyncio.Future[bool | None]] = set()
        #: Where an admission that was registered for settlement goes when its request was
        #: cancelled while the script ran (the decision never reached Envoy): settlement
        #: settles and records it at once (``settlement.settler.Settler.orphaned``).
        self.orphaned: Callable[[str], None] | None = None

    async def admit(self, settings: QuotaSettings, identity: Identity, cls: Classification,
                    route: str | None, params: RequestParams, lease_id: str,
                    leases: bool = True, record: Callable[[], Mapping[str, str]] | None = None
                    ) -> QuotaTicket | None:
        """``params``: what the body asks for (its token estimate). ``leases=False`` for adapters
        that never see the request end (ext_authz): a lease nobody can release would hold a slot
        for its whole TTL, so concurrency caps are skipped. ``record``: makes the decision's
        metadata, when its end reaches settlement (the access log): the admission is registered with it,
        so that the sweeper settles and records it if that end never arrives."""
        quota_plan = plan(settings, identity, cls, route, params)
        if not leases:
            quota_plan = quota_plan.without_leases()
        if not quota_plan:
            return None
        try:
            if self.store is None:
                raise StoreUnavailable("no quota store configured (--redis-url)")
            opened = None
            if record is not None:
                opened = _opened(settings, quota_plan, lease_id, record())
            admission = await self._admit_in_store(self.store, quota_plan, lease_id, opened)
        except StoreUnavailable as exc:
            admission = await self._degraded(settings, quota_plan, lease_id, str(exc))
        if admission.blocking is not None or not admission.admitted:
            for s in admission.states:
                if not s.allowed:
                    QUOTA_DENIALS.labels(s.limit.policy.name, s.limit.dimension,
                                         str(s.limit.policy.enforce).lower()).inc()
        else:
            for s in admission.states:  # shadow policies that would have refused
                if not s.allowed:
                    QUOTA_DENIALS.labels(s.limit.policy.name, s.limit.dimension, "false").inc()
        return QuotaTicket(quota_plan, admission)

    async def _admit_in_store(self, store: QuotaStore, quota_plan: QuotaPlan, lease_id: str,
                              opened: OpenAdmission | None) -> Admission:
        admit = store.admit(quota_plan, lease_id, opened)
        if not quota_plan.has_leases and opened is None:
            return await admit
        # A lease is taken or an admission registered: if the request is cancelled while the
        # script runs, settle it once the script answers, or it would hold a slot until the sweep.
        task = asyncio.ensure_future(admit)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._release_orphan(t, quota_plan, lease_id, opened))
            raise

    def _release_orphan(self, task: asyncio.Future[Admission], quota_plan: QuotaPlan, lease_id: str,
                        opened: OpenAdmission | None) -> None:
        if task.cancelled() or task.exception() is not None or not task.result().admitted:
            return
        if opened is not None and self.orphaned is not None:
            self.orphaned(opened.facts)
            return
        ticket = QuotaTicket(quota_plan, task.result())
        orphan = asyncio.ensure_future(self.settle(ticket, lease_id))
        self._orphans.add(orphan)
        orphan.add_done_callback(self._orphans.discard)

    async def clamp(self, settings: QuotaSettings, identity: Identity, cls: Classification,
                    route: str | None, params: RequestParams, lease_id: str,
                    refused: Admission, record: Callable[[], Mapping[str, str]] | None = None
                    ) -> tuple[QuotaTicket, int] | None:
        """A token budget refused the request and its policy says ``clamp_max_tokens``:
        lower the request's completion cap (per choice) to what the budget has left and admit
        that instead (a second call, only on this path). The ticket and the new cap; None when
        it cannot fit at all."""
        blocking = refused.blocking
        if (blocking is None or blocking.limit.dimension != "budget" or cls.tokens is not TokenUse.GENERATION
                or not blocking.limit.policy.clamp_max_tokens or refused.degraded):
            return None
        allowed = (blocking.remaining - params.prompt_tokens) // params.choices
        if allowed < _MIN_CLAMPED_TOKENS:
            return None
        ticket = await self.admit(settings, identity, cls, route, replace(params, completion_cap=allowed),
                                  lease_id, record=record)
        if ticket is None or not ticket.admission.admitted:
            return None
        return ticket, allowed

    async def _degraded(self, settings: QuotaSettings, quota_plan: QuotaPlan, lease_id: str,
                        error: str) -> Admission:
        modes = {lm.policy.on_store_failure for lm in quota_plan.limits if lm.policy.enforce}
        now = int(time.time() * 1000)
        if FailureMode.CLOSED in modes:
            mode, admission = "closed", Admission(False, (), None, now, degraded="closed")
        elif FailureMode.LOCAL in modes:
            self.local.replicas = settings.replicas
            local_plan = replace(quota_plan, limits=tuple(
                lm for lm in quota_plan.limits if lm.policy.on_store_failure is FailureMode.LOCAL))
            mode, admission = "local", await self.local.admit(local_plan, lease_id)
        else:
            mode, admission = "open", Admission(True, (), None, now, degraded="open")
        DEGRADED.labels(mode).inc()
        log.warning("quota store unavailable; decided by failure mode",
                    extra={"mode": mode, "error": error[:200], "decision_id": lease_id})
        return admission

    def recipe(self, ticket: QuotaTicket, lease_id: str) -> SettleRecipe | None:
        """How any process can settle this admission (None: it was decided in-process, by a
        failure mode). Settling also decides, once, whether the access log or the sweeper
        settles it (and writes the request's usage record), even with nothing to true up."""
        if not isinstance(self.store, RedisQuotaStore) or ticket.admission.degraded:
            return None
        return settle_recipe(ticket.plan, ticket.admission, lease_id)

    async def release(self, ticket: QuotaTicket, lease_id: str) -> None:
        """The request ended: free its concurrency slots at once. Its settlement (true-up,
        record) follows from the access log; an admission decided in-process (the ``local``
        failure mode) has none, and is settled here with its estimate kept."""
        admission = ticket.admission
        if not ticket.plan.has_leases or admission.degraded in ("open", "closed"):
            return
        if admission.degraded == "local":
            await self.local.settle(ticket.plan, lease_id, admission, None)
        elif isinstance(self.store, RedisQuotaStore):
            try:
                await self.store.release(ticket.plan, lease_id)
            except StoreUnavailable as exc:  # settlement releases them (or the sweeper, or the TTL)
                log.info("releasing leases failed; settlement releases them",
                         extra={"decision_id": lease_id, "error": str(exc)[:200]})

    async def settle_recipe(self, recipe: SettleRecipe, actual_tokens: int) -> bool | None:
        """Settle with what the request used (in any process). True: settled now; False: it was
        settled already (from its access-log entry, or by the sweeper); None: the store could not
        be reached."""
        if not isinstance(self.store, RedisQuotaStore):
            return False
        return await self._settle_in_store(self.store, recipe, actual_tokens - recipe.estimate_tokens)

    async def settle(self, ticket: QuotaTicket, lease_id: str,
                     actual_tokens: int | None = None) -> bool | None:
        """Release the lease and true up (None keeps the estimate). True: settled now (or
        nothing to do); False: settled already; None: the store could not be reached (the
        counters keep the admission's estimate, the lease expires by its TTL)."""
        admission = ticket.admission
        if admission.degraded in ("open", "closed"):
            return True
        if actual_tokens is None and not ticket.plan.has_leases:
            return True  # no lease to release and nothing to true up: no round trip
        if admission.degraded == "local":
            await self.local.settle(ticket.plan, lease_id, admission, actual_tokens)
            return True
        if not isinstance(self.store, RedisQuotaStore):
            return True
        delta = 0 if actual_tokens is None else actual_tokens - ticket.plan.estimate_tokens
        return await self._settle_in_store(self.store, settle_recipe(ticket.plan, admission, lease_id), delta)

    async def _settle_in_store(self, store: RedisQuotaStore, recipe: SettleRecipe, delta: int) -> bool | None:
        """A few tries, as one settlement (one nonce): a try whose reply was lost is not applied
        twice, and a retry after it is told it settled."""
        nonce = secrets.token_hex(8)
        for pause in (*_SETTLE_RETRY_PAUSES_S, None):
            try:
                return await store.settle_recipe(recipe, delta, nonce)
            except StoreUnavailable as exc:
                if pause is None:
                    log.warning("settlement failed; the counters keep the estimate and the lease expires "
                                "by its TTL", extra={"decision_id": recipe.lease_id, "error": str(exc)[:200]})
                    return None
                await asyncio.sleep(pause)
        return None


def _opened(settings: QuotaSettings, quota_plan: QuotaPlan, lease_id: str,
            record: Mapping[str, str]) -> OpenAdmission:
    """The facts an admission is registered with: its record's (the decision's metadata), the
    plan's estimate and cost, and a recipe that settles it with the estimate kept."""
    facts = {**record, "settle": settle_recipe(quota_plan, None, lease_id).to_json()}
    if quota_plan.counts_tokens:
        facts["estimate_tokens"] = str(quota_plan.estimate_tokens)
    cost = quota_plan.cost_units()
    if cost is not None:
        facts["cost_unit"], facts["cost_units"] = cost[0], str(cost[1])
    return OpenAdmission(settings.sweep_after_ms, json.dumps(facts, separators=(",", ":")))
