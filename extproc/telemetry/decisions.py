"""What happens after each decision: metrics, and the log line for denials and degraded decisions.

Label values come only from bounded sets (reason codes, classes, route ids and
listener names from config). Tenants are client-chosen, so tenant-level series are
capped: the first ``tenant_cap`` tenants seen get their own label, the rest ``other``.
"""

from __future__ import annotations

import logging
import random
from typing import Protocol

from prometheus_client import Counter, Histogram

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.telemetry.metrics import Children
from extproc.telemetry.timing import PhaseTimer
from extproc.telemetry.tracing import current_trace_id

log = logging.getLogger("extproc.decision")

DECISIONS = Counter(
    "extproc_decisions_total", "Decisions by outcome, reason code, workload class and route entry",
    ["adapter", "outcome", "reason", "workload_class", "route"],
)
DECISION_SECONDS = Histogram(
    "extproc_decision_duration_seconds",
    "Time in the decision pipeline per request, by phase (identify, classify, route, quota, total)",
    ["adapter", "phase"],
    buckets=(0.00002, 0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
             0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25),
)
ERRORS = Counter(
    "extproc_pipeline_errors_total", "Unexpected errors in the pipeline (answered fail-closed)",
    ["adapter"],
)
TENANT_DECISIONS = Counter(
    "extproc_tenant_decisions_total", "Decisions per tenant (top tenants; the rest are 'other')",
    ["tenant", "outcome"],
)
TOKENS_RESERVED = Counter(
    "extproc_tokens_reserved_total", "Tokens reserved at admission (estimates), by class and route",
    ["workload_class", "route"],
)


class TenantLabels:
    """Maps tenants to label values, at most ``cap`` distinct ones plus ``other``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[str] = set()

    def __call__(self, tenant: str | None) -> str:
        if not tenant:
            return "-"
        if tenant in self._seen:
            return tenant
        if len(self._seen) < self.cap:
            self._seen.add(tenant)
            return tenant
        return "other"


class DecisionRecorder(Protocol):
    """Keeps decision records (``ledger.writer.LedgerWriter``)."""

    def decision(self, decision: Decision, facts: RequestFacts, adapter: str) -> None: ...


class DecisionObserver:
    def __init__(self, adapter: str, tenant_cap: int = 100, allow_log_sample: float = 0.0,
                 recorder: DecisionRecorder | None = None) -> None:
        self._adapter = adapter
        self._recorder = recorder
        self._errors = ERRORS.labels(adapter)
        # Label sets are bounded: phases; reasons x classes x route ids; capped tenants.
        self._phase = Children(DECISION_SECONDS, adapter)
        self._decisions = Children(DECISIONS, adapter)
        self._tenant_decisions = Children(TENANT_DECISIONS)
        self._reserved = Children(TOKENS_RESERVED)
        self._tenant = TenantLabels(tenant_cap)
        self._allow_log_sample = allow_log_sample

    def observe(self, decision: Decision, facts: RequestFacts, timer: PhaseTimer) -> None:
        outcome = "allow" if decision.allowed else "deny"
        self._decisions(outcome, decision.reason.value, decision.workload.value, decision.route or "-").inc()
        for phase, seconds in timer.laps:
            self._phase(phase).observe(seconds)
        self._phase("total").observe(timer.total)
        self._tenant_decisions(self._tenant(decision.tenant), outcome).inc()
        if decision.quota is not None and decision.allowed:
            self._reserved(decision.workload.value, decision.route or "-").inc(
                decision.quota.plan.estimate_tokens)
        if self._recorder is not None:
            self._recorder.decision(decision, facts, self._adapter)
        if not decision.allowed or decision.degraded or (
                self._allow_log_sample and random.random() < self._allow_log_sample):
            self._log(decision, facts, outcome)

    def _log(self, decision: Decision, facts: RequestFacts, outcome: str) -> None:
        log.info(
            f"request {'denied' if not decision.allowed else 'allowed'}",
            extra={
                "decision_id": decision.decision_id,
                "trace_id": current_trace_id(),
                "outcome": outcome,
                "reason": decision.reason.value,
                "status": decision.status if not decision.allowed else 200,
                "detail": decision.message,
                "policy": decision.policy,
                "degraded": decision.degraded,
                "tenant": decision.tenant,
                "method": facts.method,
                "path": facts.path[:256],
                "workload_class": decision.workload.value,
                "model": decision.model,
                "route": decision.route,
                "route_version": decision.route_version,
                "upstream": decision.upstream,
                "adapter": self._adapter,
            },
        )

    def error(self) -> None:
        self._errors.inc()
