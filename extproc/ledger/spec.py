"""How records are kept: the ``records`` section of the policy file (hot reloaded)."""

from __future__ import annotations

from dataclasses import dataclass

from extproc.domain.ids import CROCKFORD

#: Redis keys. The usage stream is one key (one cluster slot); a decision's record lives under
#: its own id's hash tag, so lookups by id are one call and records spread over the cluster.
USAGE_STREAM = "extproc:usage"
DECISION_KEY_PREFIX = "xd:"


def decision_key(decision_id: str) -> str:
    return f"{DECISION_KEY_PREFIX}{{{decision_id}}}"


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """Defaults keep a busy gateway's Redis bounded: every usage record for a week (capped by
    length too), every denial for a week, one allowed decision in ten for a day."""

    enabled: bool = True
    usage_max_len: int = 1_000_000
    usage_max_age_s: int = 7 * 86400
    allow_sample: float = 0.1
    allow_ttl_s: int = 86400
    deny_ttl_s: int = 7 * 86400
    #: Records waiting for Redis (e.g. while it is down), per process; beyond, new ones are
    #: dropped and counted (``extproc_records_dropped_total``).
    max_pending: int = 50_000


def keeps_allowed(decision_id: str, sample: float) -> bool:
    """Whether an allowed decision's record is kept: decided by the id's random tail, so every
    process (the deciding stream, the access log's settlement) agrees without telling each other."""
    if sample >= 1.0:
        return True
    if sample <= 0.0:
        return False
    tail = 0
    for ch in decision_id[-4:]:
        tail = tail * 32 + max(0, CROCKFORD.find(ch))
    return tail < sample * 32**4
