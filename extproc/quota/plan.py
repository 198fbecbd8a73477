"""Which limits apply to a request, and its cost estimate (pure)."""

from __future__ import annotations

import json
import time
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from extproc.domain.classify import Classification
from extproc.domain.identity import Identity
from extproc.quota.spec import Budget, QuotaPolicy, QuotaSettings, Rate, Unit

_MAX_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_PROMPT_FIELDS = ("messages", "prompt", "input", "system", "contents")


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
        and (p.workload is None or p.workload is cls.workload)
        and matches(p.model, cls.model)
        and matches(p.route, route)
    )


def completion_field(body: Mapping[str, Any]) -> str:
    """The field that caps the completion in this request (``max_tokens`` when none is set)."""
    return next((name for name in _MAX_TOKEN_FIELDS if name in body), "max_tokens")


def prompt_tokens(body: Mapping[str, Any] | None) -> int:
    """The prompt's share of an estimate: about 4 bytes a token (0 without a body)."""
    if body is None:
        return 0
    size = 0
    for name in _PROMPT_FIELDS:
        if name in body:
            value = body[name]
            size += len(value) if isinstance(value, str) else len(json.dumps(value, ensure_ascii=False))
    return max(1, size // 4)


def estimate_tokens(body: Mapping[str, Any] | None, default_max_tokens: int) -> int:
    """Prompt size (about 4 bytes a token) plus the completion budget the request asks for."""
    return _completion_tokens(body, default_max_tokens) + prompt_tokens(body)


def _completion_tokens(body: Mapping[str, Any] | None, default_max_tokens: int) -> int:
    """The completion cap the request asks for, or the default."""
    if body is not None:
        for name in _MAX_TOKEN_FIELDS:
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
    return default_max_tokens


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
         body: Mapping[str, Any] | None, now: datetime | None = None) -> QuotaPlan:
    """``now`` (tests): the instant whose time-zone offsets the budgets use; default the present."""
    own_tag = tenant_tag(identity.tenant)
    prompt = prompt_tokens(body)
    estimate = prompt + _completion_tokens(body, settings.default_max_tokens)
    limits: list[Limit] = []
    for p in settings.policies:
        if not applies(p, identity, cls, route):
            continue
        tag = own_tag if p.scope == "tenant" else f"global:{p.name}"
        if p.requests:
            limits.append(_rate(p, "requests", tag, p.requests, 1))
        if p.tokens:
            limits.append(_rate(p, "tokens", tag, p.tokens, estimate))
        if p.budget:
            cost = estimate if p.budget.unit is Unit.TOKENS else p.budget.default_cost
            limits.append(_budget(p, tag, p.budget, cost, now))
        if p.concurrency:
            limits.append(Limit(p, "concurrency", f"xq:{{{tag}}}:c:{p.name}", "concurrency",
                                (str(p.concurrency), str(p.lease_ttl_ms), "", ""),
                                p.concurrency, "in-flight", 1, tag))
    return QuotaPlan(own_tag, tuple(limits), estimate, prompt)
