"""Reading records back: one decision by id, a tenant's usage over a period, budgets left.

Shared by ``extproc explain`` / ``extproc usage`` and the admin HTTP (``/v1/decisions/{id}``,
``/v1/usage``). Usage queries scan the usage stream from now back to ``since`` (newest first,
in pages), so their cost grows with the traffic of the period; ``max_scan`` bounds it and
the answer says when it was reached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from extproc.ledger.records import SOURCE_NAMES, DecisionRecord, UsageRecord
from extproc.ledger.spec import USAGE_STREAM, decision_key
from extproc.quota.plan import matches, tenant_tag, utc_offset_seconds
from extproc.quota.spec import QuotaSettings

GROUPINGS = ("model", "class", "day", "route", "none")
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Found:
    """A decision's records: either may be missing (expired, sampled out, never written)."""

    decision: DecisionRecord | None
    usage: UsageRecord | None


async def find_decision(client: Any, decision_id: str) -> Found:
    data = await client.hmget(decision_key(decision_id), "d", "u")
    decision = usage = None
    if data[0]:
        decision = DecisionRecord.FromString(data[0])
    if data[1]:
        usage = UsageRecord.FromString(data[1])
    return Found(decision, usage)


@dataclass(slots=True)
class UsageRow:
    key: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    charged_tokens: int = 0
    estimated: int = 0  # requests whose usage was estimated
    upstream_errors: int = 0
    cost_units: dict[str, int] = field(default_factory=dict)

    def add(self, r: UsageRecord) -> None:
        self.requests += 1
        t = r.tokens
        self.prompt_tokens += t.prompt
        self.completion_tokens += t.completion
        self.cached_tokens += t.cached
        self.reasoning_tokens += t.reasoning
        self.total_tokens += t.total
        self.charged_tokens += r.charged_tokens
        source = SOURCE_NAMES.get(r.source, "")
        self.estimated += source == "estimated"
        self.upstream_errors += source == "upstream_error"
        if r.cost_unit:
            self.cost_units[r.cost_unit] = self.cost_units.get(r.cost_unit, 0) + r.cost_units

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class UsageReport:
    tenant: str
    since_ms: int
    until_ms: int
    by: str
    rows: list[UsageRow]
    total: UsageRow
    scanned: int
    #: The scan stopped at ``max_scan`` entries before reaching ``since``: totals are partial.
    truncated: bool = False
    duplicates: int = 0
    #: The plans the tenant's requests had in the period (token claims can change plans).
    plans: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "since_unix_ms": self.since_ms, "until_unix_ms": self.until_ms,
                "by": self.by, "rows": [row.as_dict() for row in self.rows], "total": self.total.as_dict(),
                "scanned": self.scanned, "truncated": self.truncated, "plans": sorted(self.plans)}


def _group(r: UsageRecord, by: str) -> str:
    if by == "model":
        return r.model_served or r.model_requested or "-"
    if by == "class":
        return r.workload_class or "-"
    if by == "route":
        return r.route or "-"
    if by == "day":
        return datetime.fromtimestamp(r.time_unix_ms / 1000, UTC).date().isoformat()
    return "all"


async def usage_report(client: Any, tenant: str, since_ms: int, by: str = "model",
                       until_ms: int | None = None, max_scan: int = 1_000_000) -> UsageReport:
    """Sum the tenant's usage records written in [since_ms, until_ms]. Each decision counts
    once (a retried batch may have appended a record twice)."""
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {', '.join(GROUPINGS)}")
    until_ms = until_ms or int(time.time() * 1000)
    rows: dict[str, UsageRow] = {}
    total = UsageRow("total")
    seen: set[str] = set()
    plans: set[str] = set()
    scanned = duplicates = 0
    upper: str = str(until_ms)
    truncated = False
    while True:
        page = await client.xrevrange(USAGE_STREAM, max=upper, min=str(since_ms), count=_PAGE)
        for _id, fields in page:
            scanned += 1
            if fields.get(b"t", b"").decode() != tenant:
                continue
            record = UsageRecord.FromString(fields[b"r"])
            if record.decision_id in seen:
                duplicates += 1
                continue
            seen.add(record.decision_id)
            plans.add(record.plan)
            key = _group(record, by)
            rows.setdefault(key, UsageRow(key)).add(record)
            total.add(record)
        if len(page) < _PAGE:
            break
        if scanned >= max_scan:
            truncated = True
            break
        upper = "(" + (page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0])
    ordered = sorted(rows.values(), key=lambda row: (-row.total_tokens, row.key))
    if by == "day":
        ordered.sort(key=lambda row: row.key)
    return UsageReport(tenant, since_ms, until_ms, by, ordered, total, scanned, truncated, duplicates, plans)


@dataclass(frozen=True, slots=True)
class BudgetLeft:
    policy: str
    unit: str
    period: str
    limit: int
    used: int
    remaining: int
    resets_at_unix_ms: int
    applies_to: str  # the policy's other conditions (plan, class, model, route), or "all requests"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _period(kind: str, now: datetime) -> tuple[int, datetime]:
    """The budget period containing ``now`` (a local, zone-aware time): the same id the admission
    script computes (days since the epoch, or year*12+month), and when it ends."""
    if kind == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        day = (start.date() - datetime(1970, 1, 1).date()).days
        return day, start + timedelta(days=1)
    month_end = (now.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0,
                                                                  microsecond=0)
    return now.year * 12 + now.month, month_end


async def budgets_left(client: Any, quotas: QuotaSettings, tenant: str, now: datetime | None = None,
                       plans: set[str] | None = None) -> list[BudgetLeft]:
    """Every per-tenant budget policy that can apply to ``tenant`` (and, when ``plans`` are
    known from its records, to one of those plans), with what is left of it now."""
    out = []
    tag = tenant_tag(tenant)
    for p in quotas.policies:
        budget = p.budget
        if budget is None or p.scope != "tenant" or not matches(p.tenant, tenant):
            continue
        if plans and p.plan is not None and not any(matches(p.plan, plan) for plan in plans):
            continue
        offset = utc_offset_seconds(budget.timezone, now)
        local = (now or datetime.now(UTC)).astimezone(UTC) + timedelta(seconds=offset)
        period_id, ends = _period(budget.period, local.replace(tzinfo=None))
        stored = await client.hmget(f"xq:{{{tag}}}:b:{p.name}", "p", "u")
        used = int(stored[1] or 0) if stored[0] is not None and int(stored[0]) == period_id else 0
        ends_ms = int((ends - timedelta(seconds=offset)).replace(tzinfo=UTC).timestamp() * 1000)
        conditions = [f"{name}={value}" for name, value in (
            ("plan", p.plan), ("class", p.workload.value if p.workload else None), ("model", p.model),
            ("route", p.route)) if value]
        out.append(BudgetLeft(p.name, budget.unit.value, budget.period, budget.limit, used,
                              max(0, budget.limit - used), ends_ms, ", ".join(conditions) or "all requests"))
    return out


def parse_since(text: str, now_ms: int | None = None) -> int:
    """``1h``, ``30m``, ``7d``, ``90s`` ago, or an ISO-8601 instant → unix ms."""
    now_ms = now_ms or int(time.time() * 1000)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return now_ms - int(text[:-1]) * units[text[-1]] * 1000
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a duration like 1h, 30m, 7d or an ISO-8601 time, got {text!r}") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return int(instant.timestamp() * 1000)
