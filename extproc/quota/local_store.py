"""The ``local`` failure mode: an in-process limiter at each limit divided by the replica count.

Same semantics as the Lua scripts (GCRA rates, calendar budgets, concurrency
leases), kept in this process's memory. It only decides while the shared store
is unavailable; its counts are not carried back to Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

from extproc.quota.plan import Limit, QuotaPlan
from extproc.quota.store import Admission, LimitState, OpenAdmission, admits_later

_EPS = 1e-6


def _period(kind: str, now_ms: int, offset_s: int) -> tuple[int, int]:
    local = datetime.fromtimestamp(now_ms / 1000 + offset_s, tz=UTC)
    if kind == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        pid = int(start.timestamp()) // 86400
        end = start.timestamp() + 86400
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
            month=start.month + 1)
        pid = start.year * 12 + start.month
        end = nxt.timestamp()
    return pid, int((end - offset_s) * 1000)


class LocalLimiter:
    def __init__(self, replicas: int = 1, clock: Callable[[], float] = time.time) -> None:
        self.replicas = max(1, replicas)
        self._clock = clock
        self._debt: dict[str, tuple[float, int]] = {}
        self._budget: dict[str, tuple[int, int]] = {}
        self._leases: dict[str, dict[str, float]] = {}

    def _share(self, n: int) -> int:
        return max(1, n // self.replicas)

    def _check(self, limit: Limit, now: int) -> tuple[LimitState, Callable[[], None] | None]:
        a, b, c, d = limit.args
        if limit.kind == "gcra":  # the same "debt" form as admit.lua
            period_ms, lim, burst, cost = int(a), self._share(int(b)), self._share(int(c)), int(d)
            t = period_ms / lim
            tolerance = burst * t
            debt, at = self._debt.get(limit.key, (0.0, now))
            debt = max(0.0, debt - (now - at))
            new_debt = debt + cost * t
            used = math.ceil(debt / t - _EPS)
            if new_debt <= tolerance + _EPS:
                def apply() -> None:
                    self._debt[limit.key] = (new_debt, now)
                return LimitState(limit, True, math.floor((tolerance - new_debt) / t + _EPS), 0,
                                  math.ceil(new_debt), used), apply
            retry = -1 if cost > burst else math.ceil(new_debt - tolerance - _EPS)
            return LimitState(limit, False, max(0, math.floor((tolerance - debt) / t + _EPS)), retry,
                              math.ceil(debt), used), None
        if limit.kind == "budget":
            lim, cost = self._share(int(a)), int(b)
            pid, end = _period(c, now, int(d))
            stored = self._budget.get(limit.key)
            used = stored[1] if stored and stored[0] == pid else 0
            if used + cost <= lim:
                def apply_budget() -> None:
                    self._budget[limit.key] = (pid, used + cost)
                return LimitState(limit, True, lim - used - cost, 0, end - now, used), apply_budget
            retry = -1 if cost > lim else end - now
            return LimitState(limit, False, max(0, lim - used), retry, end - now, used), None
        lim = self._share(int(a))
        leases = {k: v for k, v in self._leases.get(limit.key, {}).items() if v > now}
        self._leases[limit.key] = leases
        if len(leases) < lim:
            return LimitState(limit, True, lim - len(leases) - 1, 0, 0, len(leases)), None
        return LimitState(limit, False, 0, 1000, 0, len(leases)), None

    async def admit(self, plan: QuotaPlan, lease_id: str, opened: OpenAdmission | None = None) -> Admission:
        """``opened`` is not kept: in-process state dies with the process (nothing to sweep)."""
        now = int(self._clock() * 1000)
        states, applies = [], []
        blocking = None
        for limit in plan.limits:
            state, apply = self._check(limit, now)
            states.append(state)
            if state.allowed:
                applies.append((limit, apply))
            elif limit.policy.enforce and (blocking is None or admits_later(state, blocking)):
                blocking = state
        if blocking is None:
            for limit, apply in applies:
                if apply is not None:
                    apply()
                if limit.kind == "concurrency":
                    self._leases[limit.key][lease_id] = now + int(limit.args[1])
        return Admission(blocking is None, tuple(states), blocking, now, degraded="local")

    async def settle(self, plan: QuotaPlan, lease_id: str, admission: Admission,
                     actual_tokens: int | None) -> bool:
        for limit in plan.limits:
            if limit.kind == "concurrency":
                self._leases.get(limit.key, {}).pop(lease_id, None)
        return True
