"""The ``records`` section: how long decision and usage records are kept, how many allows."""

from __future__ import annotations

from typing import Any

from extproc.config.reader import Reader
from extproc.ledger.spec import RecordSettings

_FIELDS = {"enabled", "usage", "decisions", "max_pending"}


def _int(r: Reader, value: Any, where: str, default: int, low: int, high: int) -> int:
    number = r.typed(value, where, int, default)
    if not low <= number <= high:
        r.error(where, f"must be between {low} and {high}")
        return default
    return number


def parse_records(r: Reader, value: Any) -> RecordSettings:
    d = RecordSettings()
    spec = r.mapping(value, "records", _FIELDS)
    usage = r.mapping(spec.get("usage"), "records.usage", {"max_len", "max_age_seconds"})
    decisions = r.mapping(spec.get("decisions"), "records.decisions",
                          {"allow_sample", "allow_ttl_seconds", "deny_ttl_seconds"})
    sample = decisions.get("allow_sample", d.allow_sample)
    if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 <= sample <= 1:
        r.error("records.decisions.allow_sample", "must be a number from 0 to 1")
        sample = d.allow_sample
    year = 366 * 86400
    allow_ttl = _int(r, decisions.get("allow_ttl_seconds"), "records.decisions.allow_ttl_seconds",
                     d.allow_ttl_s, 60, year)
    deny_ttl = _int(r, decisions.get("deny_ttl_seconds"), "records.decisions.deny_ttl_seconds",
                    d.deny_ttl_s, 60, year)
    if deny_ttl < allow_ttl:
        r.error("records.decisions.deny_ttl_seconds",
                f"denials are kept at least as long as allows ({allow_ttl} s)")
    return RecordSettings(
        enabled=r.typed(spec.get("enabled"), "records.enabled", bool, d.enabled),
        usage_max_len=_int(r, usage.get("max_len"), "records.usage.max_len", d.usage_max_len, 1000, 10**9),
        usage_max_age_s=_int(r, usage.get("max_age_seconds"), "records.usage.max_age_seconds",
                             d.usage_max_age_s, 60, year),
        allow_sample=float(sample),
        allow_ttl_s=allow_ttl,
        deny_ttl_s=deny_ttl,
        max_pending=_int(r, spec.get("max_pending"), "records.max_pending", d.max_pending, 100, 10**7),
    )
