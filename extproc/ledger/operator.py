"""``extproc explain`` / ``extproc usage`` and the admin HTTP's ``/v1/decisions``, ``/v1/usage``:
the same answers, as JSON documents and as text for a person."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict

from extproc.config.model import PolicyConfig
from extproc.ledger.explain import explain
from extproc.ledger.query import BudgetLeft, UsageReport, budgets_left, find_decision, usage_report


def _message(msg: Any) -> dict[str, Any] | None:
    if msg is None:
        return None
    doc: dict[str, Any] = MessageToDict(msg, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True,
                                        use_integers_for_enums=False)
    return doc


async def decision_document(client: Any, decision_id: str, config: PolicyConfig | None) -> dict[str, Any]:
    """``found`` false when there is no record of it (unknown, expired, or an unsampled allow)."""
    found = await find_decision(client, decision_id)
    sample = config.records.allow_sample if config else None
    return {"decision_id": decision_id, "found": found.decision is not None or found.usage is not None,
            "decision": _message(found.decision), "usage": _message(found.usage),
            "explain": explain(found, decision_id, sample)}


async def usage_document(client: Any, config: PolicyConfig | None, tenant: str, since_ms: int,
                         by: str, max_scan: int = 1_000_000) -> tuple[UsageReport, list[BudgetLeft]]:
    report = await usage_report(client, tenant, since_ms, by, max_scan=max_scan)
    budgets = await budgets_left(client, config.quotas, tenant, plans=report.plans) if config else []
    return report, budgets


def usage_json(report: UsageReport, budgets: list[BudgetLeft]) -> dict[str, Any]:
    return {**report.as_dict(), "budgets": [b.as_dict() for b in budgets]}


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def usage_text(report: UsageReport, budgets: list[BudgetLeft]) -> str:
    lines = [f"Usage of tenant {report.tenant!r} from {_when(report.since_ms)} to {_when(report.until_ms)}, "
             f"by {report.by}:"]
    header = ("", "requests", "prompt", "completion", "cached", "reasoning", "total", "charged", "estimated",
              "errors")
    table: list[tuple[str, ...]] = [header]
    for row in [*report.rows, report.total]:
        table.append((row.key, *(str(v) for v in (
            row.requests, row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.reasoning_tokens,
            row.total_tokens, row.charged_tokens, row.estimated, row.upstream_errors))))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        if i == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(c.ljust(widths[0]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)))
    units = report.total.cost_units
    if units:
        lines.append("Other units: " + ", ".join(f"{n} {unit}" for unit, n in sorted(units.items())))
    lines.append("estimated: requests whose usage was not reported (charged the estimate); errors: the "
                 "upstream failed (charged nothing).")
    if report.truncated:
        lines.append(f"PARTIAL: stopped after scanning {report.scanned} records; narrow --since.")
    if budgets:
        lines.append("")
        lines.append("Budgets now:")
        for b in budgets:
            lines.append(f"  - {b.policy}: {b.used} of {b.limit} {b.unit} used this {b.period}, "
                         f"{b.remaining} left, resets {_when(b.resets_at_unix_ms)} "
                         f"(applies to {b.applies_to})")
    return "\n".join(lines)
