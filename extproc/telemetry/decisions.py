"""What happens after each decision: metrics and the denial log line.

Label values come only from bounded sets (reason codes, classes, listener names
from config), never from raw client input.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram

from extproc.domain.classify import WorkloadClass
from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.domain.reasons import Reason

log = logging.getLogger("extproc.decision")

DECISIONS = Counter(
    "extproc_decisions_total", "Decisions by outcome, reason code and workload class",
    ["adapter", "outcome", "reason", "workload_class"],
)
DECISION_SECONDS = Histogram(
    "extproc_decision_duration_seconds", "Time spent in the decision pipeline per request",
    ["adapter"],
    buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
ERRORS = Counter(
    "extproc_pipeline_errors_total", "Unexpected errors in the pipeline (answered fail-closed)",
    ["adapter"],
)


class DecisionObserver:
    def __init__(self, adapter: str) -> None:
        self._adapter = adapter
        self._seconds = DECISION_SECONDS.labels(adapter)
        self._errors = ERRORS.labels(adapter)
        self._counters: dict[tuple[Reason, WorkloadClass], Counter] = {}

    def observe(self, decision: Decision, facts: RequestFacts, seconds: float) -> None:
        key = (decision.reason, decision.workload)
        counter = self._counters.get(key)
        if counter is None:  # bounded: reasons x classes
            outcome = "allow" if decision.allowed else "deny"
            counter = DECISIONS.labels(self._adapter, outcome, decision.reason.value, decision.workload.value)
            self._counters[key] = counter
        counter.inc()
        self._seconds.observe(seconds)
        if not decision.allowed:
            log.info(
                "request denied",
                extra={
                    "decision_id": decision.decision_id,
                    "reason": decision.reason.value,
                    "status": decision.status,
                    "detail": decision.message,
                    "method": facts.method,
                    "path": facts.path[:256],
                    "workload_class": decision.workload.value,
                    "adapter": self._adapter,
                },
            )

    def error(self) -> None:
        self._errors.inc()
