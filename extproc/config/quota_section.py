"""The ``quotas:`` config section."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

from extproc.config.reader import Reader
from extproc.domain.classify import WorkloadClass, folded_model
from extproc.quota.spec import PERIODS_MS, Budget, FailureMode, QuotaPolicy, QuotaSettings, Rate, Unit

_POLICY_FIELDS = {"name", "match", "requests", "tokens", "budget", "concurrency", "enforce",
                  "on_store_failure", "clamp_max_tokens", "scope"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _int(r: Reader, value: Any, where: str, low: int = 1, high: int = 10**12) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        r.error(where, f"expected a whole number, got {value!r}")
        return None
    if not low <= value <= high:
        r.error(where, f"must be between {low} and {high}")
        return None
    return value


def _rate(r: Reader, value: Any, where: str) -> Rate | None:
    if value is None:
        return None
    f = r.mapping(value, where, {"limit", "per", "burst"})
    limit = _int(r, f.get("limit"), f"{where}.limit")
    per = f.get("per", "minute")
    if per not in PERIODS_MS:
        r.error(f"{where}.per", f"{per!r} is not one of: {', '.join(PERIODS_MS)}")
        return None
    burst = _int(r, f.get("burst", limit), f"{where}.burst") if limit else None
    if limit is None or burst is None:
        return None
    return Rate(limit, PERIODS_MS[per], burst)


def _budget(r: Reader, value: Any, where: str) -> Budget | None:
    if value is None:
        return None
    f = r.mapping(value, where, {"limit", "period", "timezone", "unit", "default_cost"})
    limit = _int(r, f.get("limit"), f"{where}.limit")
    period = f.get("period", "day")
    if period not in ("day", "month"):
        r.error(f"{where}.period", f"{period!r} is not one of: day, month")
    tz = f.get("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(str(tz))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        r.error(f"{where}.timezone", f"unknown time zone {tz!r} (IANA names like Europe/Paris)")
        tz = "UTC"
    unit = r.choice(f.get("unit", "tokens"), f"{where}.unit", Unit, ", ".join(u.value for u in Unit))
    default_cost = _int(r, f.get("default_cost", 1), f"{where}.default_cost")
    if limit is None or unit is None or default_cost is None or period not in ("day", "month"):
        return None
    return Budget(limit, period, str(tz), unit, default_cost)


def parse_quotas(r: Reader, value: Any, route_ids: set[str]) -> QuotaSettings:
    f = r.mapping(value, "quotas", {"policies", "default_max_tokens", "replicas", "sweep_after_seconds",
                                    "sweep_interval_seconds"})
    default_max = _int(r, f.get("default_max_tokens", 1024), "quotas.default_max_tokens", 1, 10**7) or 1024
    replicas = _int(r, f.get("replicas", 1), "quotas.replicas", 1, 10**4) or 1
    sweep_after = _int(r, f.get("sweep_after_seconds", 420), "quotas.sweep_after_seconds", 1, 604800) or 420
    sweep_interval = _int(r, f.get("sweep_interval_seconds", 5), "quotas.sweep_interval_seconds", 1, 3600)
    policies: list[QuotaPolicy] = []
    names: set[str] = set()
    for i, item in enumerate(r.seq(f.get("policies"), "quotas.policies")):
        where = f"quotas.policies[{i}]"
        before = len(r.errors)
        p = r.mapping(item, where, _POLICY_FIELDS)
        name = r.typed(p.get("name"), f"{where}.name", str, "")
        if not _NAME.match(name):
            r.error(f"{where}.name",
                    "required: letters, digits, '_', '.', '-' (it becomes part of Redis keys)")
        elif name in names:
            r.error(f"{where}.name", f"duplicate policy name {name!r}")
        names.add(name)
        match = r.mapping(p.get("match"), f"{where}.match", {"tenant", "plan", "class", "model", "route"})
        workload = None
        if "class" in match:
            workload = r.choice(match["class"], f"{where}.match.class", WorkloadClass,
                                ", ".join(w.value for w in WorkloadClass))
        strings = {k: r.typed(match.get(k), f"{where}.match.{k}", str, None)
                   for k in ("tenant", "plan", "model", "route")}
        if strings["route"] is not None and strings["route"] not in route_ids:
            r.error(f"{where}.match.route", f"unknown route id {strings['route']!r}")
        requests = _rate(r, p.get("requests"), f"{where}.requests")
        tokens = _rate(r, p.get("tokens"), f"{where}.tokens")
        budget = _budget(r, p.get("budget"), f"{where}.budget")
        concurrency = lease_ttl = None
        if p.get("concurrency") is not None:
            c = r.mapping(p.get("concurrency"), f"{where}.concurrency", {"limit", "lease_ttl_seconds"})
            concurrency = _int(r, c.get("limit"), f"{where}.concurrency.limit")
            lease_ttl = _int(r, c.get("lease_ttl_seconds", 600), f"{where}.concurrency.lease_ttl_seconds",
                             1, 86400)
        if not any((requests, tokens, budget, concurrency)) and len(r.errors) == before:
            r.error(where, "set at least one of requests, tokens, budget, concurrency")
        mode = r.choice(p.get("on_store_failure", "closed"), f"{where}.on_store_failure", FailureMode,
                        "open, closed, local")
        enforce = r.typed(p.get("enforce"), f"{where}.enforce", bool, True)
        clamp = r.typed(p.get("clamp_max_tokens"), f"{where}.clamp_max_tokens", bool, False)
        scope = p.get("scope", "tenant")
        if scope not in ("tenant", "global"):
            r.error(f"{where}.scope", f"{scope!r} is not one of: tenant, global")
        if len(r.errors) > before:
            continue
        policies.append(QuotaPolicy(
            name=name, tenant=strings["tenant"], plan=strings["plan"], workload=workload,
            model=folded_model(strings["model"] or None), route=strings["route"],
            requests=requests, tokens=tokens,
            budget=budget, concurrency=concurrency, lease_ttl_ms=(lease_ttl or 600) * 1000,
            enforce=enforce, on_store_failure=mode or FailureMode.CLOSED, clamp_max_tokens=clamp,
            scope=str(scope),
        ))
    return QuotaSettings(tuple(policies), default_max, replicas, sweep_after_ms=sweep_after * 1000,
                         sweep_interval_ms=(sweep_interval or 5) * 1000)
