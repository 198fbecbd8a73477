"""Records (pure parts): the checked-in schema matches protos/, how usage is measured, the
allow sampling, and `explain` for an allow, each kind of denial and degraded decisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from extproc.config.reader import Reader
from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.decision import Decision, allow, deny
from extproc.domain.facts import RequestFacts
from extproc.domain.identity import Identity
from extproc.domain.params import read_params
from extproc.domain.reasons import Reason
from extproc.domain.usage import ResponseEnd, Usage, measure_response, measure_stream
from extproc.ledger.explain import explain
from extproc.ledger.query import Found, parse_since
from extproc.ledger.records import SOURCE_NAMES, Timing, decision_record, usage_record
from extproc.ledger.spec import keeps_allowed
from extproc.ledger.v1 import ledger_pb2
from extproc.quota.plan import plan
from extproc.quota.service import QuotaTicket
from extproc.quota.spec import Budget, QuotaPolicy, QuotaSettings, Rate, Unit
from extproc.quota.store import Admission, LimitState
from extproc.routing.document import parse_table
from extproc.routing.table import RoutingTable

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtdXNlciJ9.c2lnbmF0dXJl"
ALICE = Identity("acme", subject="alice", plan="pro", scopes=frozenset({"inference"}),
                 issuer="https://issuer.example", verified=True)
CHAT = Classification(WorkloadClass.INFERENCE, "gpt-4o", "openai-chat")
FACTS = RequestFacts("POST", "/v1/chat/completions", "api.example", {"authorization": f"Bearer {TOKEN}"})


def test_checked_in_python_matches_the_proto_file(tmp_path: Path) -> None:
    out = tmp_path / "ledger.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}",
                    f"--descriptor_set_out={out}", "extproc/ledger/v1/ledger.proto"], check=True, cwd=ROOT)
    from google.protobuf import descriptor_pb2

    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in compiled.message_type:  # descriptor sets add json names; generated code omits them
        for field in message.field:
            field.ClearField("json_name")
    checked_in = descriptor_pb2.FileDescriptorProto.FromString(ledger_pb2.DESCRIPTOR.serialized_pb)
    assert compiled == checked_in, "protos/ changed: run `make protos` and commit the result"


def test_usage_is_measured_reported_first_never_zero_for_streams() -> None:
    reported = Usage(100, 20, cached_tokens=40, reasoning_tokens=5)
    assert measure_response(200, reported, 500) == measure_stream(200, reported, 90, 3)
    assert measure_response(200, reported, 500).total_tokens == 120
    assert measure_response(502, reported, 500).source == "upstream_error"
    assert measure_response(200, None, 500).total_tokens == 500  # the estimate the counters keep
    assert measure_response(0, None, 0).source == "configured"  # nothing to count tokens of
    gone = measure_stream(200, None, 90, 7)  # client left: prompt share + completion seen
    assert (gone.source, gone.total_tokens, gone.usage) == ("estimated", 97, Usage(90, 7))
    assert measure_stream(200, None, 0, 0).total_tokens == 1  # never zero
    assert measure_stream(503, None, 90, 7).total_tokens == 0


def test_allow_sampling_is_decided_by_the_id_alike_in_every_process() -> None:
    from extproc.domain.ids import new_decision_id

    ids = [new_decision_id() for _ in range(20000)]
    kept = [i for i in ids if keeps_allowed(i, 0.1)]
    assert 0.08 < len(kept) / len(ids) < 0.12
    assert all(keeps_allowed(i, 0.1) for i in kept)  # the same answer every time
    assert all(keeps_allowed(i, 1.0) for i in ids[:100]) and not any(keeps_allowed(i, 0.0) for i in ids[:100])


def _route() -> object:
    r = Reader()
    spec = parse_table(r, {"routes": [{"id": "chat", "class": "inference", "pool": "pool-a"}]}, "routing",
                       ("pool-a",), 1)
    assert not r.errors
    table = RoutingTable(spec)
    route = table.lookup(WorkloadClass.INFERENCE, "gpt-4o", "acme", "pro")
    assert route is not None
    return route


def _admission(policy: QuotaPolicy, allowed: bool, used: int, remaining: int, retry: int,
               degraded: str | None = None) -> tuple[QuotaTicket, Admission]:
    p = plan(QuotaSettings((policy,)), ALICE, CHAT, "chat", read_params({"messages": [], "max_tokens": 100}))
    states = tuple(LimitState(lm, allowed, remaining, retry, 30_000, used, 0) for lm in p.limits)
    admission = Admission(allowed, states, None if allowed else states[0], 0, degraded)
    return QuotaTicket(p, admission), admission


def _story(decision: Decision, usage: object = None) -> str:
    record = decision_record(decision, FACTS, adapter="ext_proc", trace_id="abc123", now_ms=1_795_000_000_000)
    assert TOKEN.encode() not in record.SerializeToString()  # identity facts, never the token
    return explain(Found(record, usage), decision.decision_id)  # type: ignore[arg-type]


def test_explain_an_allow_with_its_usage() -> None:
    ticket, _ = _admission(QuotaPolicy("pro", budget=Budget(1000, "day")), True, 130, 870, 0)
    decision = allow("01allow", CHAT, ALICE, _route(), "gpt-4o", quota=ticket)  # type: ignore[arg-type]
    usage = usage_record(decision.metadata(), measure_response(200, Usage(80, 40), 130), charged_tokens=120,
                         status=200, streamed=False, end=ResponseEnd.COMPLETE, timing=Timing(0.0, 0.2, 0.2, 0.5),
                         adapter="ext_proc", now_ms=1_795_000_000_500)
    text = _story(decision, usage)
    assert "ALLOWED" in text and "tenant 'acme', subject 'alice', plan 'pro'" in text
    assert "classified as inference by rule 'openai-chat', model 'gpt-4o'" in text
    assert "entry 'chat' of routing table version 0 → upstream pool-a" in text
    assert "pro (budget, 1000 per day)" in text and "within the limit" in text
    assert "80 prompt + 40 completion = 120 tokens" in text and "as the upstream reported it" in text
    assert "Charged to the tenant's token quotas: 120 tokens" in text


@pytest.mark.parametrize(("reason", "expect"), [
    (Reason.MALFORMED_TOKEN, "DENIED with HTTP 401 (malformed_token)"),
    (Reason.TOKEN_EXPIRED, "authentication failed"),
    (Reason.UNKNOWN_WORKLOAD, "DENIED with HTTP 404 (unknown_workload)"),
    (Reason.NO_ROUTE, "nowhere to send"),
    (Reason.BODY_TOO_LARGE, "DENIED with HTTP 413"),
    (Reason.INVALID_JSON, "DENIED with HTTP 400"),
    (Reason.IDENTITY_PROVIDER_UNAVAILABLE, "DENIED with HTTP 503"),
])
def test_explain_denials_before_any_quota(reason: Reason, expect: str) -> None:
    text = _story(deny("01deny", reason, "what the client was told"))
    assert expect in text and "what the client was told" in text
    if reason is not Reason.UNKNOWN_WORKLOAD:
        assert "not classified (refused before classification)" in text


def test_explain_an_access_rule_denial() -> None:
    d = deny("01forbid", Reason.INSUFFICIENT_SCOPE, "needs scope training", CHAT, ALICE, policy="training-needs-scope")
    text = _story(d)
    assert "DENIED with HTTP 403" in text and "not allowed" in text
    assert "Decided by: access rule 'training-needs-scope'" in text


@pytest.mark.parametrize(("policy", "reason", "needle"), [
    (QuotaPolicy("rpm", requests=Rate(60, 60_000, 60)), Reason.RATE_LIMITED, "rpm (requests, 60 per 60s)"),
    (QuotaPolicy("day", budget=Budget(1000, "day", unit=Unit.TOKENS)), Reason.BUDGET_EXHAUSTED,
     "day (budget, 1000 per day)"),
    (QuotaPolicy("slots", concurrency=2), Reason.CONCURRENCY_LIMITED, "slots (concurrency, 2 per in-flight)"),
])
def test_explain_each_kind_of_quota_denial(policy: QuotaPolicy, reason: Reason, needle: str) -> None:
    _, admission = _admission(policy, False, 60, 0, 1500)
    d = deny("01quota", reason, "over quota", CHAT, ALICE, policy=policy.name, admission=admission)
    text = _story(d)
    assert "DENIED with HTTP 429" in text and "a quota limit was reached" in text
    assert needle in text and "OVER the limit" in text and "it would fit again in 1.5 s" in text
    assert f"Decided by: quota policy '{policy.name}'" in text


def test_explain_degraded_decisions() -> None:
    _, admission = _admission(QuotaPolicy("rpm", requests=Rate(60, 60_000, 60)), False, 0, 0, 0, "closed")
    closed = deny("01closed", Reason.QUOTA_STORE_UNAVAILABLE, "quota store unavailable", CHAT, ALICE,
                  degraded="closed", admission=admission)
    assert "fail closed" in _story(closed) and "HTTP 503" in _story(closed)
    ticket, _ = _admission(QuotaPolicy("rpm", requests=Rate(60, 60_000, 60)), True, 0, 0, 0, "open")
    opened = allow("01open", CHAT, ALICE, _route(), "gpt-4o", quota=ticket, degraded="open")  # type: ignore[arg-type]
    text = _story(opened)
    assert "ALLOWED" in text and "fail open" in text


def test_explain_without_records_says_why_there_may_be_none() -> None:
    text = explain(Found(None, None), "01nothing", 0.1)
    assert "No record of decision 01nothing" in text and "one request in 10" in text


def test_since_accepts_durations_and_instants() -> None:
    assert parse_since("1h", now_ms=10_000_000) == 10_000_000 - 3_600_000
    assert parse_since("2026-11-23T00:00:00Z") == 1_795_392_000_000
    with pytest.raises(ValueError):
        parse_since("yesterday")


def test_usage_record_schema_fields() -> None:
    names = {f.name for f in ledger_pb2.UsageRecord.DESCRIPTOR.fields}
    assert {"tenant", "subject", "workload_class", "model_requested", "model_served", "upstream",
            "route_version", "decision_id", "tokens", "cost_units", "source", "status", "ttfb_ms", "ttft_ms",
            "total_ms"} <= names


def test_a_class_measured_in_other_units_records_its_configured_cost() -> None:
    video = Classification(WorkloadClass.VIDEO, "sora", "video")
    policy = QuotaPolicy("video-seconds", budget=Budget(3600, "day", unit=Unit.SECONDS, default_cost=30))
    p = plan(QuotaSettings((policy,)), ALICE, video, "video", read_params({"prompt": "a cat"}))
    state = LimitState(p.limits[0], True, 3570, 0, 30_000, 30, 0)
    ticket = QuotaTicket(p, Admission(True, (state,), None, 0))
    decision = allow("01video", video, ALICE, _route(), "sora", quota=ticket)  # type: ignore[arg-type]
    assert decision.cost == ("seconds", 30)
    record = usage_record(decision.metadata(), measure_response(200, None, 0), charged_tokens=0, status=200,
                          streamed=False, end=ResponseEnd.COMPLETE, timing=Timing(0.0), adapter="ext_proc", now_ms=0,
                          cost=decision.cost)
    assert (record.cost_unit, record.cost_units, SOURCE_NAMES[record.source]) == ("seconds", 30, "configured")
    assert "Cost: 30 seconds." in explain(Found(None, record), "01video")


def test_absurd_token_counts_are_not_usage() -> None:
    from tests.sse_reference import usage_from_object

    assert usage_from_object({"prompt_tokens": 2**70, "completion_tokens": 1}) is None
    assert usage_from_object({"input_tokens": 5, "output_tokens": 2**60}) is None


def test_a_record_with_a_value_the_schema_cannot_hold_is_still_built() -> None:
    """Regression (hardening #8): a cost of 10**300 dropped the decision record ("could not be
    built") and wrote the 300-digit number to the error log. Counts saturate instead."""
    huge = 10**300
    _, admission = _admission(QuotaPolicy("tpm", tokens=Rate(1000, 60_000, 1000)), False, 0, 1000, -1)
    limit = admission.states[0].limit
    from dataclasses import replace

    bad_limit = replace(limit, cost=huge)
    bad_state = replace(admission.states[0], limit=bad_limit, used=huge)
    bad = Admission(False, (bad_state,), bad_state, 0)
    decision = deny("01huge", Reason.RATE_LIMITED, "over", CHAT, ALICE, admission=bad)
    record = decision_record(decision, FACTS, adapter="ext_proc", trace_id=None, now_ms=0)
    assert record.policies[0].cost == record.policies[0].used == (1 << 63) - 1
    usage = usage_record({"decision_id": "01huge", "route_version": str(huge)}, measure_response(200, None, huge),
                         charged_tokens=huge, status=200, streamed=False, end=ResponseEnd.NOT_OBSERVED,
                         timing=Timing(0.0), adapter="ext_authz", now_ms=0)
    assert usage.charged_tokens == usage.tokens.total == usage.route_version == (1 << 63) - 1


def test_log_lines_bound_what_they_copy() -> None:
    import json as json_module
    import logging

    from extproc.telemetry.logging import MAX_FIELD_CHARS, JsonFormatter

    record = logging.LogRecord("extproc.test", logging.ERROR, __file__, 1, "x" * 5000, None, None)
    record.detail = "9" * 5000
    record.number = 10**300
    record.kids = ["a", "b"]
    line = JsonFormatter().format(record)
    doc = json_module.loads(line)
    assert len(doc["msg"]) < MAX_FIELD_CHARS + 40 and len(doc["detail"]) < MAX_FIELD_CHARS + 40
    assert "9" * 100 not in doc["number"] and doc["kids"] == ["a", "b"]
