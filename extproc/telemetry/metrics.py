"""Metric definitions shared across packages. Label values come from config names and enums only."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """A metric's children by label values, each looked up once: ``labels()`` validates its
    arguments on every call and costs more than the ``inc()`` after it. As bounded as the
    label values it is given. ``fixed``: leading label values shared by every child."""

    def __init__(self, metric: M, *fixed: str) -> None:
        self._metric: M = metric
        self._fixed = fixed
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*self._fixed, *values)
        return child


JWKS_FETCHES = Counter(
    "extproc_jwks_fetches_total", "JWKS (and discovery) fetches by issuer and result",
    ["issuer", "result"],
)
ISSUER_KEYS = Gauge("extproc_issuer_keys", "Usable verification keys per issuer", ["issuer"],
                    multiprocess_mode="max")
ISSUER_HEALTHY = Gauge(
    "extproc_issuer_healthy", "1 when the issuer's last JWKS fetch succeeded (static JWKS: always)",
    ["issuer"], multiprocess_mode="min",
)
TOKEN_CACHE = Counter(
    "extproc_token_cache_total", "Verified-token cache lookups by result", ["result"],
)

REDIS_SECONDS = Histogram(
    "extproc_redis_command_duration_seconds", "Redis script latency by operation", ["op"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
REDIS_ERRORS = Counter("extproc_redis_errors_total", "Redis failures by operation and error", ["op", "error"])
BREAKER_OPEN = Gauge("extproc_quota_breaker_open", "1 while the quota store's circuit breaker is open",
                     multiprocess_mode="max")
STREAMS_OPEN = Gauge("extproc_ext_proc_streams_open", "ext_proc streams in flight",
                     multiprocess_mode="livesum")
CONFIG_INFO = Gauge("extproc_config_info", "The policy config version being served (value 1)", ["version"],
                    multiprocess_mode="max")
CONFIG_RELOADS = Counter("extproc_config_reloads_total", "Config reload attempts by result", ["result"])
DEGRADED = Counter(
    "extproc_degraded_decisions_total", "Decisions made without the shared quota store, by failure mode",
    ["mode"],
)
QUOTA_DENIALS = Counter("extproc_quota_denials_total", "Quota denials by policy and dimension",
                        ["policy", "dimension", "enforced"])

ROUTES_VERSION = Gauge("extproc_routes_version", "Routing table version served (0: the policy file's seed)",
                       multiprocess_mode="liveall")
ROUTES_IN_SYNC = Gauge("extproc_routes_in_sync",
                       "1 when the last check of the live routing table in Redis succeeded",
                       multiprocess_mode="livemin")
ROUTES_LAST_SYNC = Gauge("extproc_routes_last_sync_timestamp_seconds",
                         "When the live routing table was last checked successfully",
                         multiprocess_mode="livemin")
ROUTES_UPDATES = Counter("extproc_routes_updates_total",
                         "Routing table versions seen, by result (applied, rejected)", ["result"])
USAGE_SETTLEMENTS = Counter(
    "extproc_usage_settlements_total",
    "Requests settled, by source: from their access-log entry (reported, estimated, upstream_error, "
    "configured), by the sweeper when their end never arrived (swept), or not (already_settled: "
    "it came second; store_unavailable: left to the sweeper)", ["source"])
SWEEPS = Counter(
    "extproc_sweeps_total",
    "Sweeps of admissions whose end never reached settlement, by outcome: done, skipped (another "
    "sidecar held the lock), error", ["outcome"])
RECORDS = Counter(
    "extproc_records_total",
    "Decision and usage records by result: written to Redis, dropped (buffer full while Redis "
    "was unreachable) or invalid (a value the schema cannot hold)", ["kind", "result"])
RECORDS_PENDING = Gauge("extproc_records_pending", "Records waiting to be written to Redis",
                        multiprocess_mode="livesum")
RECORDS_FLUSH_ERRORS = Counter("extproc_records_flush_errors_total",
                               "Failed batch writes of records (kept and retried)")
