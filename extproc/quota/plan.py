"""Which limits apply to a request, and its cost estimate (pure)."""

from __future__ import annotations

import time
import zoneinfo
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from urllib.parse import quote

from extproc.domain.classify import Classification, TokenUse
from extproc.domain.identity import Identity
from extproc.domain.params import NO_PARAMS, RequestParams, token_demand
from extproc.quota.spec import Budget, QuotaPolicy, QuotaSettings, Rate, Unit


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit, ready for the store: key, kind and arguments, and the policy it came from."""

    policy: QuotaPolicy
    dimension: str  # "requests" | "tokens" | "budget" | "concurrency"
    key: str
    kind: str  # "gcra" | "budget" | "concurrency"
    args: tuple[str, str, str, str]
    limit: int
    window: str  # for headers and messages: "60s", "day", "month", "in-flight"
    cost: int
    tag: str  # the hash tag of its key: the tenant's, or "global:POLICY" for a global policy

    @property
    def counts_tokens(self) -> bool:
        """A token rate or a token budget: real usage can true its reservation up."""
        budget = self.policy.budget
        return self.dimension == "tokens" or (
            self.dimension == "budget" and budget is not None and budget.unit is Unit.TOKENS)


@dataclass(frozen=True, slots=True)
class QuotaPlan:
    tenant_tag: str
    limits: tuple[Limit, ...]
    estimate_tokens: int
    #: The prompt's share of the estimate (a stream that ends without usage is charged this
    #: plus what it was seen to generate).
    prompt_tokens: int = 0

    def __bool__(self) -> bool:
        return bool(self.limits)

    @property
    def has_leases(self) -> bool:
        """A concurrency cap applies: a lease must be released when the request ends."""
        return any(lm.kind == "concurrency" for lm in self.limits)

    @property
    def counts_tokens(self) -> bool:
        return any(lm.counts_tokens for lm in self.limits)

    def cost_units(self) -> tuple[str, int] | None:
        """The configured cost of a request measured in other units than tokens (seconds of
        video, jobs…): the unit and cost of the first such budget that applied to it."""
        for limit in self.limits:
            budget = limit.policy.budget
            if limit.dimension == "budget" and budget is not None and not limit.counts_tokens:
                return budget.unit.value, limit.cost
        return None

    def without_leases(self) -> QuotaPlan:
        return replace(self, limits=tuple(lm for lm in self.limits if lm.kind != "concurrency"))


@lru_cache(maxsize=4096)
def tenant_tag(tenant: str) -> str:
    """The Redis hash tag of a tenant: every key of one tenant lands in one cluster slot.

    Percent-encoding of the tenant's UTF-8 bytes, ``%`` included, keeping only letters, digits
    and ``_.-~@``: one-to-one over every string an IdP can issue (two tenants never share a
    key), and never ``{``, ``}`` (the hash tag's delimiters) or ``:`` (so no tenant spells a
    global policy's tag, ``global:POLICY``). ``acme-corp.eu`` stays ``acme-corp.eu``."""
    return quote(tenant, safe="@", errors="surrogatepass")


def matches(pattern: str | None, value: str | None) -> bool:
    """A policy condition: absent (matches all), exact, or a ``prefix*``."""
    if pattern is None:
        return True
    if value is None:
        return False
    return value.startswith(pattern[:-1]) if pattern.endswith("*") else value == pattern


def applies(p: QuotaPolicy, identity: Identity, cls: Classification, route: str | None) -> bool:
    return (
        matches(p.tenant, identity.tenant)
        and matches(p.plan, identity.plan)
        and (p.workload is None or cls.workload.within(p.workload))
        and matches(p.model, cls.model)
        and matches(p.route, route)
    )


@lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


#: Zone → (the minute it was computed for, its offset then). Offsets change only on whole
#: minutes (DST and zone rules), so one computation serves every request of that minute.
_offsets: dict[str, tuple[int, int]] = {}


def utc_offset_seconds(timezone: str, now: datetime | None = None) -> int:
    """The zone's current UTC offset (DST-aware at the moment of the request)."""
    if now is None:
        minute = int(time.time()) // 60
        known = _offsets.get(timezone)
        if known is not None and known[0] == minute:
            return known[1]
        offset = _offset(timezone, datetime.fromtimestamp(minute * 60, _zone(timezone)))
        _offsets[timezone] = (minute, offset)
        return offset
    return _offset(timezone, now)


def _offset(timezone: str, now: datetime) -> int:
    offset = now.astimezone(_zone(timezone)).utcoffset()
    return int(offset.total_seconds()) if offset else 0


def _rate(policy: QuotaPolicy, dim: str, tag: str, rate: Rate, cost: int) -> Limit:
    return Limit(policy, dim, f"xq:{{{tag}}}:{dim[0]}:{policy.name}", "gcra",
                 (str(rate.period_ms), str(rate.limit), str(rate.burst), str(cost)),
                 rate.limit, f"{rate.window_s}s", cost, tag)


def _budget(policy: QuotaPolicy, tag: str, budget: Budget, cost: int, now: datetime | None) -> Limit:
    offset = utc_offset_seconds(budget.timezone, now)
    return Limit(policy, "budget", f"xq:{{{tag}}}:b:{policy.name}", "budget",
                 (str(budget.limit), str(cost), budget.period, str(offset)),
                 budget.limit, budget.period, cost, tag)


def plan(settings: QuotaSettings, identity: Identity, cls: Classification, route: str | None,
         params: RequestParams = NO_PARAMS, now: datetime | None = None) -> QuotaPlan:
    """``params``: what the body asks for (``domain.params``). ``now`` (tests): the instant whose
    time-zone offsets the budgets use; default the present. An API that consumes no tokens
    (``TokenUse.NONE``: model lists, token counting) is neither checked against nor charged to
    token limits."""
    own_tag = tenant_tag(identity.tenant)
    demand = token_demand(params, cls.tokens, settings.default_max_tokens)
    estimate = demand.total
    tokens = cls.tokens is not TokenUse.NONE
    limits: list[Limit] = []
    for p in settings.policies:
        if not applies(p, identity, cls, route):
            continue
        tag = own_tag if p.scope == "tenant" else f"global:{p.name}"
        if p.requests:
            limits.append(_rate(p, "requests", tag, p.requests, 1))
        if p.tokens and tokens:
            limits.append(_rate(p, "tokens", tag, p.tokens, estimate))
        if p.budget and p.budget.unit is not Unit.TOKENS:
            limits.append(_budget(p, tag, p.budget, p.budget.default_cost, now))
        elif p.budget and tokens:
            limits.append(_budget(p, tag, p.budget, estimate, now))
        if p.concurrency:
            limits.append(Limit(p, "concurrency", f"xq:{{{tag}}}:c:{p.name}", "concurrency",
                                (str(p.concurrency), str(p.lease_ttl_ms), "", ""),
                                p.concurrency, "in-flight", 1, tag))
    return QuotaPlan(own_tag, tuple(limits), estimate, demand.prompt)
