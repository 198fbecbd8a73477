"""The Redis quota store: one Lua call to admit, one to settle, behind a timeout and a breaker.

Scripts are loaded once and called by SHA; after a Redis restart or ``SCRIPT FLUSH``
redis-py's Script object sees NOSCRIPT and loads them again transparently.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from importlib import resources
from typing import Any

from redis import exceptions as redis_errors

from extproc.quota.breaker import CircuitBreaker
from extproc.quota.plan import Limit, QuotaPlan
from extproc.quota.recipe import SettleLimit, SettleRecipe
from extproc.quota.store import Admission, OpenAdmission, StoreUnavailable, admits_later, states_from_reply
from extproc.telemetry import tracing
from extproc.telemetry.metrics import BREAKER_OPEN, REDIS_ERRORS, REDIS_SECONDS, Children

log = logging.getLogger("extproc.quota")

ADMIT_LUA = resources.files("extproc.quota").joinpath("lua/admit.lua").read_text()
SETTLE_LUA = resources.files("extproc.quota").joinpath("lua/settle.lua").read_text()
RELEASE_LUA = resources.files("extproc.quota").joinpath("lua/release.lua").read_text()
#: The settled marker only has to outlive a duplicate settle of the same request.
SETTLED_MARKER_TTL_MS = 15 * 60 * 1000
#: Slack on the admission deadline: a late reply is still useful for this long.
_DEADLINE_MARGIN_MS = 250

_ERRORS = (redis_errors.RedisError, OSError, TimeoutError, asyncio.TimeoutError)


def open_keys(tag: str) -> tuple[str, str]:
    """A hash tag's open admissions: when each may be swept (sorted set) and its settlement
    facts (hash), by decision id (``settlement.sweeper``)."""
    return f"xq:{{{tag}}}:due", f"xq:{{{tag}}}:open"


#: The sorted sets of open admissions, for the sweeper's SCAN.
OPEN_DUE_PATTERN = "xq:{*}:due"


def facts_key_of(due_key: str) -> str:
    """The hash of settlement facts beside a sorted set of open admissions (``open_keys``)."""
    return due_key.removesuffix(":due") + ":open"


class RedisQuotaStore:
    def __init__(self, client: Any, timeout_s: float = 0.05,
                 breaker: CircuitBreaker | None = None, now_ms: int | None = None) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker()
        self._admit = client.register_script(ADMIT_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._now = "" if now_ms is None else str(now_ms)  # tests pin the clock; else Redis TIME
        self._skew_ms: float | None = None
        self._seconds = Children(REDIS_SECONDS)

    async def start(self) -> None:
        """Connect ahead of traffic. A Redis Cluster client must learn its slots before
        many coroutines use it at once (redis-py races otherwise); a failure here is fine:
        the first calls will fail over to the failure modes and retry."""
        initialize = getattr(self.client, "initialize", None)
        if initialize is not None:
            try:
                await asyncio.wait_for(initialize(), max(self.timeout_s * 20, 1.0))
            except _ERRORS as exc:
                log.warning("quota store not reachable at start", extra={"error": str(exc)[:200]})

    async def _call(self, op: str, script: Any, keys: list[str], args: list[str]) -> Any:
        if not self.breaker.allow():
            REDIS_ERRORS.labels(op, "breaker_open").inc()
            raise StoreUnavailable("circuit breaker open")
        started = time.perf_counter()
        with tracing.child_span(f"redis {op}", {"db.system": "redis", "db.operation": "EVALSHA"}):
            try:
                # asyncio.timeout, not wait_for: no extra task per call on the hot path.
                async with asyncio.timeout(self.timeout_s):
                    result = await script(keys=keys, args=args)
            except _ERRORS as exc:
                self.breaker.failure()
                BREAKER_OPEN.set(1 if self.breaker.state != "closed" else 0)
                REDIS_ERRORS.labels(op, type(exc).__name__).inc()
                raise StoreUnavailable(f"redis {op}: {type(exc).__name__}: {exc}") from exc
            except BaseException:
                self.breaker.release()  # cancelled mid-call: never leave a probe hanging
                raise
        self.breaker.success()
        BREAKER_OPEN.set(0)
        self._seconds(op).observe(time.perf_counter() - started)
        return result

    async def admit(self, plan: QuotaPlan, lease_id: str, opened: OpenAdmission | None = None) -> Admission:
        """One script per hash tag: the tenant's limits, and each global policy's. Usually
        one; with global limits they run concurrently, and if one group refuses while
        another admitted, the admitted group is refunded, so a refusal consumes nothing.
        ``opened``: registered, if admitted, with the first group (settling removes it)."""
        groups = _groups(plan.limits)
        if len(groups) == 1:
            return await self._admit_limits(plan.limits, lease_id, opened)
        parts = await asyncio.gather(*(self._admit_limits(g, lease_id, opened if i == 0 else None)
                                       for i, g in enumerate(groups)))
        by_limit = {id(st.limit): st for part in parts for st in part.states}
        states = tuple(by_limit[id(lm)] for lm in plan.limits)
        blocking = None
        for part in parts:
            if part.blocking is not None and (blocking is None or admits_later(part.blocking, blocking)):
                blocking = part.blocking
        if blocking is not None:
            admitted = [(g, part) for g, part in zip(groups, parts, strict=True) if part.admitted]
            await asyncio.gather(*(self._refund(g, part, lease_id) for g, part in admitted))
        return Admission(blocking is None, states, blocking, max(p.at_ms for p in parts))

    async def _admit_limits(self, limits: tuple[Limit, ...], lease_id: str,
                            opened: OpenAdmission | None = None) -> Admission:
        args = [self._now, lease_id, self._deadline()]
        args += [str(opened.sweep_after_ms), opened.facts] if opened is not None else ["", ""]
        for limit in limits:
            args += [limit.kind, "1" if limit.policy.enforce else "0", *limit.args]
        keys = [*open_keys(limits[0].tag), *(lm.key for lm in limits)]
        reply = await self._call("admit", self._admit, keys, args)
        self._learn_clock(int(reply[1]))
        return states_from_reply(limits, reply)

    async def _refund(self, limits: tuple[Limit, ...], admission: Admission, lease_id: str) -> None:
        """Undo an admission of these limits (another group refused the request)."""
        keys = [f"xq:{{{limits[0].tag}}}:r:{lease_id}", *open_keys(limits[0].tag)]
        args = [self._now, lease_id, str(SETTLED_MARKER_TTL_MS), "refund"]
        for limit, state in zip(limits, admission.states, strict=True):
            keys.append(limit.key)
            if limit.kind == "gcra":
                args += [limit.kind, limit.args[0], limit.args[1], str(-limit.cost)]
            elif limit.kind == "budget":
                args += [limit.kind, str(-limit.cost), str(state.period), ""]
            else:
                args += [limit.kind, "", "", ""]
        await self._call("settle", self._settle, keys, args)

    def _deadline(self) -> str:
        """When this call stops being worth running, in Redis's clock ('' until known).

        The sidecar's clock may be skewed from Redis's: the offset is learnt from every
        reply (Redis ``now`` minus local time; one round trip of error, well inside the
        margin), so the deadline is right whatever the skew.
        """
        if self._skew_ms is None or self._now:
            return ""
        return str(int(time.time() * 1000 + self._skew_ms + self.timeout_s * 1000 + _DEADLINE_MARGIN_MS))

    def _learn_clock(self, redis_now_ms: int) -> None:
        skew = redis_now_ms - time.time() * 1000
        self._skew_ms = skew if self._skew_ms is None else 0.8 * self._skew_ms + 0.2 * skew

    async def release(self, plan: QuotaPlan, lease_id: str) -> None:
        """Release the request's concurrency leases now (its settlement comes later)."""
        leases = [lm for lm in plan.limits if lm.kind == "concurrency"]
        await asyncio.gather(*(self._call("release", self._release, [lm.key for lm in group], [lease_id])
                               for group in _groups(tuple(leases))))

    async def settle(self, plan: QuotaPlan, lease_id: str, admission: Admission,
                     actual_tokens: int | None) -> bool:
        """Release the lease; true up token rates and token budgets when usage is known."""
        delta = 0 if actual_tokens is None else actual_tokens - plan.estimate_tokens
        return await self.settle_recipe(settle_recipe(plan, admission, lease_id), delta)

    async def settle_recipe(self, recipe: SettleRecipe, delta: int, nonce: str = "") -> bool:
        """Settle from a recipe (possibly made by another process: ``settle_recipe``). ``nonce`` names
        this settlement: calling again with the same one after a timeout answers True again
        (the first settlement's calls may have run) and applies each group at most once."""
        lease, nonce = recipe.lease_id, nonce or secrets.token_hex(8)
        if len(recipe.groups) == 1:  # the usual case: no task per call
            return await self._settle_group(recipe.groups[0][0].tag, recipe.groups[0], lease, delta, nonce)
        results = await asyncio.gather(*(self._settle_group(g[0].tag, g, lease, delta, nonce)
                                         for g in recipe.groups))
        return all(results)

    async def _settle_group(self, tag: str, group: tuple[SettleLimit, ...], lease_id: str,
                            delta: int, nonce: str) -> bool:
        keys = [f"xq:{{{tag}}}:s:{lease_id}", *open_keys(tag)]
        args = [self._now, lease_id, str(SETTLED_MARKER_TTL_MS), nonce]
        for limit in group:
            cost_delta = str(delta if limit.counts_tokens else 0)
            if limit.kind == "gcra":
                extra = [limit.a, limit.b, cost_delta]
            elif limit.kind == "budget":
                extra = [cost_delta, limit.a, ""]
            else:
                extra = ["", "", ""]
            keys.append(limit.key)
            args += [limit.kind, *extra]
        return bool(await self._call("settle", self._settle, keys, args))


def settle_recipe(plan: QuotaPlan, admission: Admission | None, lease_id: str) -> SettleRecipe:
    """What settling this admission takes, as plain values: one process admits, another may settle.
    Without the admission (made before it), budgets name no period: such a recipe only settles
    with the estimate kept (a delta of 0), as the sweeper does."""
    periods = {id(st.limit): str(st.period) for st in admission.states} if admission is not None else {}
    groups = tuple(
        tuple(SettleLimit(lm.key, lm.tag, lm.kind, lm.counts_tokens,
                          lm.args[0] if lm.kind == "gcra" else periods.get(id(lm), ""),
                          lm.args[1] if lm.kind == "gcra" else "")
              for lm in group)
        for group in _groups(plan.limits))
    return SettleRecipe(lease_id, plan.estimate_tokens, groups, plan.prompt_tokens)


def _groups(limits: tuple[Limit, ...]) -> list[tuple[Limit, ...]]:
    """Limits by hash tag, in plan order: each group runs as one script on one slot."""
    by_tag: dict[str, list[Limit]] = {}
    for limit in limits:
        by_tag.setdefault(limit.tag, []).append(limit)
    return [tuple(g) for g in by_tag.values()]
