"""What a quota store answers, and the interface the pipeline uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from extproc.quota.plan import Limit, QuotaPlan


class StoreUnavailable(Exception):
    """The shared store did not answer in time (or the breaker is open)."""


@dataclass(frozen=True, slots=True)
class LimitState:
    limit: Limit
    allowed: bool
    remaining: int
    retry_ms: int  # -1: can never fit (the request alone exceeds the limit's burst)
    reset_ms: int
    used: int
    period: int = 0  # budget period id the admission charged (0 for other kinds)


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    states: tuple[LimitState, ...]
    blocking: LimitState | None
    at_ms: int
    #: None when the shared store decided; else the failure mode that decided instead.
    degraded: str | None = None


@dataclass(frozen=True, slots=True)
class OpenAdmission:
    """What an admission registers for the sweeper: after ``sweep_after_ms`` without its end
    reaching settlement, it is settled from ``facts`` (``settlement.sweeper``)."""

    sweep_after_ms: int
    facts: str  # ASCII JSON


class QuotaStore(Protocol):
    async def admit(self, plan: QuotaPlan, lease_id: str, opened: OpenAdmission | None = None) -> Admission:
        """``opened``: registered with the admission, if it admits (settling removes it)."""

    async def settle(self, plan: QuotaPlan, lease_id: str, admission: Admission,
                     actual_tokens: int | None) -> bool: ...


def admits_later(a: LimitState, b: LimitState) -> bool:
    """``a`` admits again later than ``b`` (a retry of -1 means never)."""
    ra = float("inf") if a.retry_ms < 0 else a.retry_ms
    rb = float("inf") if b.retry_ms < 0 else b.retry_ms
    return ra > rb


def states_from_reply(limits: tuple[Limit, ...], reply: list[int]) -> Admission:
    """Decode the admission script's flat reply for these limits."""
    blocking_index, at_ms = int(reply[0]), int(reply[1])
    if blocking_index < 0:
        raise StoreUnavailable("admission reached Redis after its deadline; nothing consumed")
    states = []
    for i, limit in enumerate(limits):
        allowed, remaining, retry, reset, used, period = (int(v) for v in reply[2 + i * 6: 8 + i * 6])
        states.append(LimitState(limit, bool(allowed), remaining, retry, reset, used, period))
    blocking = states[blocking_index - 1] if blocking_index else None
    return Admission(blocking is None, tuple(states), blocking, at_ms)
