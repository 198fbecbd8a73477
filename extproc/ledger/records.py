"""Decision and usage records as the protobuf messages of ``protos/extproc/ledger/v1`` (pure).

A usage record is built from the decision's facts as a flat string map (``Decision.metadata()``,
which is also what Envoy's access log brings to settlement, possibly in another process, and
what an admission registers for the sweeper), so whichever settles it builds the same record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.domain.usage import Measured, ResponseEnd
from extproc.ledger.v1 import ledger_pb2 as pb

UsageRecord = pb.UsageRecord
DecisionRecord = pb.DecisionRecord
PolicyEvaluation = pb.PolicyEvaluation

SOURCES = {
    "reported": pb.USAGE_SOURCE_REPORTED,
    "estimated": pb.USAGE_SOURCE_ESTIMATED,
    "upstream_error": pb.USAGE_SOURCE_UPSTREAM_ERROR,
    "configured": pb.USAGE_SOURCE_CONFIGURED,
}
SOURCE_NAMES = {value: name for name, value in SOURCES.items()}
ENDS = {
    ResponseEnd.COMPLETE: pb.RESPONSE_END_COMPLETE,
    ResponseEnd.INTERRUPTED: pb.RESPONSE_END_INTERRUPTED,
    ResponseEnd.NO_RESPONSE: pb.RESPONSE_END_NO_RESPONSE,
    ResponseEnd.NOT_OBSERVED: pb.RESPONSE_END_NOT_OBSERVED,
    ResponseEnd.UNREPORTED: pb.RESPONSE_END_UNREPORTED,
}
END_NAMES = {value: end.value for end, value in ENDS.items()}
_MAX_PATH = 256
_INT64_MAX = (1 << 63) - 1


def _text(value: str) -> str:
    """A string for the record: text that is not valid UTF-8 (a lone surrogate from a JSON
    escape) has those characters replaced, never costing the record."""
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")


def _int64(value: int) -> int:
    """A count for an int64 field: a value the schema cannot hold is saturated, never allowed to
    cost the record (a record with a bad value is still a record)."""
    return max(-_INT64_MAX - 1, min(_INT64_MAX, int(value)))


@dataclass(frozen=True, slots=True)
class Timing:
    """Monotonic instants (``time.monotonic()``) of one request as a stream saw it."""

    started: float
    headers: float | None = None  # response headers
    first_body: float | None = None  # first response body bytes (a stream's first token)
    ended: float | None = None

    def ms(self, at: float | None) -> int:
        return 0 if at is None else max(0, round((at - self.started) * 1000))


def usage_record(meta: Mapping[str, str], measured: Measured, *, charged_tokens: int, status: int,
                 streamed: bool, end: ResponseEnd, timing: Timing, adapter: str, now_ms: int,
                 cost: tuple[str, int] | None = None) -> pb.UsageRecord:
    """``meta``: the decision's metadata (``Decision.metadata()``). ``cost``: the configured
    cost unit and units charged, for classes measured in other units than tokens."""
    usage = measured.usage
    record = pb.UsageRecord(
        decision_id=meta.get("decision_id", ""),
        time_unix_ms=now_ms,
        tenant=meta.get("tenant", ""),
        subject=meta.get("subject", ""),
        workload_class=meta.get("class", ""),
        model_requested=meta.get("model", ""),
        model_served=meta.get("model_served", ""),
        upstream=meta.get("upstream", ""),
        route=meta.get("route", ""),
        route_version=_int64(int(meta.get("route_version") or 0)),
        source=SOURCES[measured.source],
        charged_tokens=_int64(charged_tokens),
        status=status,
        streamed=streamed,
        ttfb_ms=timing.ms(timing.headers),
        ttft_ms=timing.ms(timing.first_body),
        total_ms=timing.ms(timing.ended),
        end=ENDS[end],
        adapter=adapter,
        degraded=meta.get("degraded", ""),
        plan=meta.get("plan", ""),
    )
    tokens = record.tokens
    tokens.total = _int64(measured.total_tokens)
    if usage is not None:
        tokens.prompt, tokens.completion = _int64(usage.prompt_tokens), _int64(usage.completion_tokens)
        tokens.cached, tokens.reasoning = _int64(usage.cached_tokens), _int64(usage.reasoning_tokens)
    if cost is not None:
        record.cost_unit, record.cost_units = cost[0], _int64(cost[1])
    return record


def decision_record(decision: Decision, facts: RequestFacts, *, adapter: str, trace_id: str | None,
                    now_ms: int) -> pb.DecisionRecord:
    record = pb.DecisionRecord(
        decision_id=decision.decision_id,
        time_unix_ms=now_ms,
        adapter=adapter,
        listener=facts.listener,
        allowed=decision.allowed,
        reason=decision.reason.value,
        status=decision.status,
        message=_text(decision.message),
        tenant=_text(decision.tenant or ""),
        method=_text(facts.method),
        path=_text(facts.path[:_MAX_PATH]),
        host=_text(facts.host),
        workload_class=decision.workload.value,
        classification_rule=decision.rule or "",
        model_requested=decision.model or "",
        model_served=decision.model_served or "",
        route=decision.route or "",
        route_version=_int64(decision.route_version or 0),
        upstream=decision.upstream or "",
        deciding_policy=decision.policy or "",
        degraded=decision.degraded or "",
        estimate_tokens=_int64(decision.estimate_tokens),
        trace_id=trace_id or "",
        max_tokens_clamped=decision.clamped,
    )
    identity = decision.identity
    if identity is not None:
        record.subject, record.plan = _text(identity.subject), _text(identity.plan)
        record.issuer = _text(identity.issuer)
        record.scopes.extend(sorted(_text(scope) for scope in identity.scopes))
        record.verified = identity.verified
    if decision.admission is not None:
        for state in decision.admission.states:
            limit = state.limit
            record.policies.add(
                policy=limit.policy.name, dimension=limit.dimension, limit=_int64(limit.limit),
                window=limit.window, cost=_int64(limit.cost), used=_int64(state.used),
                remaining=_int64(state.remaining), reset_ms=_int64(state.reset_ms),
                retry_ms=_int64(state.retry_ms), allowed=state.allowed, enforced=limit.policy.enforce)
    return record


def charged_tokens(decision: Decision, measured: Measured, counts_tokens: bool, settled: bool | None) -> int:
    """Tokens the shared quota counters hold for this request: the measured usage once settled;
    the admission's estimate when the store could not be reached to true it up (``settled``
    None); nothing when no token limit applied or the shared store did not decide (degraded)."""
    if not counts_tokens or decision.degraded:
        return 0
    return measured.total_tokens if settled is not None else decision.estimate_tokens


def end_name(record: pb.UsageRecord) -> str:
    """How the record's response ended, in words (records of earlier releases: their own text)."""
    return END_NAMES.get(record.end) or record.ended or "unknown"
