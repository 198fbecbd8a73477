"""Quota policies as configured, and the limits one request is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from extproc.domain.classify import WorkloadClass


class FailureMode(StrEnum):
    OPEN = "open"  # Redis unreachable: admit, marked degraded
    CLOSED = "closed"  # Redis unreachable: refuse with 503
    LOCAL = "local"  # Redis unreachable: in-process limiter at limit / replicas


class Unit(StrEnum):
    TOKENS = "tokens"
    REQUESTS = "requests"
    SECONDS = "seconds"
    GPU_SECONDS = "gpu_seconds"
    JOBS = "jobs"


PERIODS_MS = {"second": 1000, "minute": 60_000, "hour": 3_600_000}


@dataclass(frozen=True, slots=True)
class Rate:
    limit: int
    period_ms: int
    burst: int

    @property
    def window_s(self) -> int:
        return self.period_ms // 1000


@dataclass(frozen=True, slots=True)
class Budget:
    limit: int
    period: str  # "day" | "month"
    timezone: str = "UTC"
    unit: Unit = Unit.TOKENS
    #: Cost charged at admission for units not measured from the request (seconds, jobs…).
    default_cost: int = 1


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    name: str
    tenant: str | None = None  # exact or prefix*
    plan: str | None = None
    workload: WorkloadClass | None = None
    model: str | None = None
    route: str | None = None
    requests: Rate | None = None
    tokens: Rate | None = None
    budget: Budget | None = None
    concurrency: int | None = None
    lease_ttl_ms: int = 600_000
    enforce: bool = True
    #: "tenant": every tenant has its own counters. "global": one set shared by every
    #: request the policy matches (e.g. a model's total capacity).
    scope: str = "tenant"
    on_store_failure: FailureMode = FailureMode.CLOSED
    clamp_max_tokens: bool = False


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    policies: tuple[QuotaPolicy, ...] = ()
    #: Estimated completion tokens when a request names no max_tokens.
    default_max_tokens: int = 1024
    #: Sidecar replicas sharing the quotas (the ``local`` failure mode divides limits by it).
    replicas: int = 1
    #: An admission whose end has not reached settlement this long after it is settled by the
    #: sweeper (with its estimate, flagged): longer than any request can last in Envoy.
    sweep_after_ms: int = 420_000
    #: How often the sweeper looks (one sidecar at a time, by a lock in Redis).
    sweep_interval_ms: int = 5_000
