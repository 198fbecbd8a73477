"""Envoy message codecs: header values in value or raw_value, internal header stripping, responses."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as authz_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.decision import Accounting, allow, deny
from extproc.domain.identity import ANONYMOUS
from extproc.domain.reasons import Reason
from extproc.envoy_api import ext_authz, ext_proc
from extproc.routing.table import Route, RouteEntry, WeightedPool


def headers_msg(pairs: list[tuple[str, str]], raw: bool, eos: bool = False) -> pb.HttpHeaders:
    values = [
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) if raw else base_pb2.HeaderValue(key=k, value=v)
        for k, v in pairs
    ]
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values), end_of_stream=eos)


PAIRS = [
    (":method", "POST"), (":path", "/v1/chat/completions?api-version=1"), (":authority", "GW.example.com:8080"),
    ("content-type", "application/json"), ("x-extproc-upstream", "pool-evil"), ("X-Extproc-Tenant", "root"),
    ("accept", "a"), ("accept", "b"), ("", "empty names are skipped"),
]


def test_reads_raw_value_and_value_alike() -> None:
    for raw in (True, False):
        facts = ext_proc.request_facts(headers_msg(PAIRS, raw), "default")
        assert facts.method == "POST"
        assert facts.path == "/v1/chat/completions"
        assert facts.host == "gw.example.com"
        assert facts.headers["content-type"] == "application/json"
        assert facts.headers["accept"] == "a,b"
        assert "x-extproc-upstream" not in facts.headers
        assert set(facts.stripped) == {"x-extproc-upstream", "x-extproc-tenant"}
    underscored = ext_proc.request_facts(headers_msg([("x-extproc_tenant", "root")], True), "d")
    assert underscored.stripped == ("x-extproc_tenant",)


def _parsed(answer: bytes) -> pb.ProcessingResponse:
    return pb.ProcessingResponse.FromString(answer)


def _allowed():
    cls = Classification(WorkloadClass.INFERENCE, "gpt-4o", "openai-chat")
    entry = RouteEntry("r1", (WeightedPool("pool-a"),), fallbacks=("pool-b",))
    route = Route(entry, "pool-a", "pool-a~pool-b", 1, 7)
    return allow("d1", cls, ANONYMOUS, route, "gpt-4o-2024-08-06")


def test_allow_sets_routing_headers_strips_the_rest_and_clears_route_cache() -> None:
    facts = ext_proc.request_facts(headers_msg([*PAIRS, ("x-extproc-debug", "1")], True), "default")
    resp = _parsed(ext_proc.decided(_allowed(), facts, "headers"))
    common = resp.request_headers.response
    assert common.clear_route_cache
    sets = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
    assert sets["x-extproc-upstream"] == "pool-a~pool-b"  # the failover cluster
    assert sets["x-extproc-route"] == "r1"
    assert sets["x-extproc-route-version"] == "7"
    assert sets["x-extproc-failover"] == sets["x-envoy-max-retries"] == "1"
    assert sets["x-extproc-model-served"] == "gpt-4o-2024-08-06"
    assert sets["x-extproc-tenant"] == "anonymous"
    assert sets["x-extproc-decision-id"] == "d1"
    assert list(common.header_mutation.remove_headers) == ["x-extproc-debug"]
    meta = resp.dynamic_metadata.fields["extproc"].struct_value.fields
    assert meta["tenant"].string_value == "anonymous" and meta["route"].string_value == "r1"
    assert meta["route_version"].string_value == "7" and meta["upstream"].string_value == "pool-a~pool-b"
    body_resp = _parsed(ext_proc.decided(_allowed(), facts, "body"))
    assert body_resp.request_body.response.clear_route_cache


def test_read_body_asks_for_buffered_partial() -> None:
    facts = ext_proc.request_facts(headers_msg(PAIRS, True), "default")
    resp = _parsed(ext_proc.read_body(facts))
    assert resp.HasField("mode_override")
    assert resp.mode_override.request_body_mode == resp.mode_override.BUFFERED_PARTIAL
    # The response is never sent to the sidecar (its headers come from dynamic metadata).
    assert resp.mode_override.response_header_mode == resp.mode_override.SKIP
    # Cleared already here (see read_body): a body that arrives late must not meet a stale route.
    common = resp.request_headers.response
    assert common.clear_route_cache
    assert set(common.header_mutation.remove_headers) == {"x-extproc-upstream", "x-extproc-tenant"}


def test_denial_is_an_immediate_response_with_json() -> None:
    decision = deny("d2", Reason.UNKNOWN_WORKLOAD, "nothing matches")
    resp = _parsed(ext_proc.decided(decision, ext_proc.request_facts(headers_msg(PAIRS, True), "x"), "headers"))
    imm = resp.immediate_response
    assert imm.status.code == 404
    headers = {h.header.key: h.header.raw_value.decode() for h in imm.headers.set_headers}
    assert headers == {"content-type": "application/json", "x-extproc-decision-id": "d2"}
    assert json.loads(imm.body)["error"] == {
        "type": "invalid_request_error", "code": "unknown_workload", "message": "nothing matches",
        "decision_id": "d2",
    }


def test_ext_authz_request_and_responses() -> None:
    req = authz_pb.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "POST", "/v1/embeddings", "gw:1"
    http.headers.update({"content-type": "application/json", "x-extproc-class": "training",
                         "x-extproc-other": "x", ":path": "/v1/embeddings"})
    http.raw_body = b'{"model": "m"}'
    facts, body, complete = ext_authz.request_facts(req, "authz")
    assert (facts.method, facts.path, facts.host, body, complete) == ("POST", "/v1/embeddings", "gw", http.raw_body, True)
    assert set(facts.stripped) == {"x-extproc-class", "x-extproc-other"}
    ok = authz_pb.CheckResponse.FromString(ext_authz.response(_allowed(), facts))
    assert ok.status.code == 0
    assert {h.header.key: h.header.value for h in ok.ok_response.headers}["x-extproc-upstream"] == "pool-a~pool-b"
    # A header we set is overwritten, never also removed (Envoy removes after setting).
    assert list(ok.ok_response.headers_to_remove) == ["x-extproc-other"]
    assert ok.ok_response.response_headers_to_add[0].header.value == "d1"
    denied = authz_pb.CheckResponse.FromString(ext_authz.response(deny("d3", Reason.INVALID_JSON, "bad"), facts))
    assert denied.status.code == 7 and denied.denied_response.status.code == 400
    assert json.loads(denied.denied_response.body)["error"]["code"] == "invalid_json"


# The answers are written as wire bytes (envoy_api/wire.py). The reference: the same answers
# built field by field with the generated classes, as the codec did before.
def _option(k: str, v: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
                                      append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)


def _reference_metadata(decision) -> struct_pb2.Struct:
    inner = struct_pb2.Struct(fields={k: struct_pb2.Value(string_value=v) for k, v in decision.metadata().items()})
    return struct_pb2.Struct(fields={"extproc": struct_pb2.Value(struct_value=inner)})


def _reference_decided(decision, facts, phase: str) -> pb.ProcessingResponse:
    upstream = decision.upstream_headers()
    mutation = pb.HeaderMutation(set_headers=[_option(k, v) for k, v in upstream],
                                 remove_headers=[h for h in facts.stripped if h not in dict(upstream)])
    common = pb.CommonResponse(header_mutation=mutation, clear_route_cache=True)
    if decision.body_rewrite is not None and phase == "body":
        common.body_mutation.body = decision.body_rewrite
        common.header_mutation.remove_headers.append("content-length")
    if phase == "headers":
        return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common),
                                     dynamic_metadata=_reference_metadata(decision))
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common),
                                 dynamic_metadata=_reference_metadata(decision))


def test_wire_answers_equal_the_messages_built_field_by_field() -> None:
    cls = Classification(WorkloadClass.INFERENCE, "gpt-4o", "openai-chat")
    route = Route(RouteEntry("r1", (WeightedPool("pool-a"),)), "pool-a", "pool-a", 0, 3)
    long_value = "é" * 300  # lengths over 127 take two varint bytes; non-ASCII counts bytes
    plain = allow("d1", cls, ANONYMOUS, route, "gpt-4o",
                  response_headers=(("x-ratelimit-remaining-requests", "9"), ("x-long", long_value)))
    rewritten = allow("d2", cls, ANONYMOUS, route, "gpt-4o-mini", body_rewrite=b'{"model":"gpt-4o-mini"}',
                      recipe='{"lease":"d2"}' + "x" * 200, accounting=Accounting.READ)
    facts = ext_proc.request_facts(headers_msg(PAIRS, True), "default")
    clean = ext_proc.request_facts(headers_msg([(":method", "GET"), (":path", "/v1/models")], True, True), "d")
    for decision in (plain, rewritten, _allowed()):
        for f in (facts, clean):
            for phase in ("headers", "body"):
                assert _parsed(ext_proc.decided(decision, f, phase)) == _reference_decided(decision, f, phase)
    # An empty header mutation is still sent: Envoy ignores clear_route_cache without one.
    read = _parsed(ext_proc.read_body(clean))
    assert read.request_headers.response.HasField("header_mutation")
    assert read == pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(), clear_route_cache=True)),
        mode_override=read.mode_override)
    # The client's headers travel as metadata, for Envoy's formatters (envoy/gateway.yaml).
    meta = _parsed(ext_proc.decided(plain, facts, "headers")).dynamic_metadata.fields["extproc"].struct_value
    assert meta.fields["hdr.x-ratelimit-remaining-requests"].string_value == "9"
    assert meta.fields["hdr.x-long"].string_value == long_value
    denied = _parsed(ext_proc.decided(deny("d3", Reason.UNKNOWN_WORKLOAD, "no"), facts, "headers"))
    assert denied.immediate_response.status.code == 404
    assert denied.dynamic_metadata == _reference_metadata(deny("d3", Reason.UNKNOWN_WORKLOAD, "no"))
    assert _parsed(ext_proc.passthrough("response_body")) == pb.ProcessingResponse(response_body=pb.BodyResponse())


def test_ext_authz_wire_answer_equals_the_message_built_field_by_field() -> None:
    http_facts = ext_proc.request_facts(headers_msg(PAIRS, True), "authz")
    for decision in (_allowed(), allow("d4", Classification(WorkloadClass.INFERENCE, "m", "r"), ANONYMOUS,
                                       Route(RouteEntry("r2", (WeightedPool("p"),)), "p", "p", 0, 1), "m",
                                       response_headers=(("x-ratelimit-remaining-requests", "7"),))):
        def option(k: str, v: str) -> base_pb2.HeaderValueOption:
            return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v),
                                              append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
        upstream = decision.upstream_headers()
        expected = authz_pb.CheckResponse(
            status=status_pb2.Status(code=0),
            ok_response=authz_pb.OkHttpResponse(
                headers=[option(k, v) for k, v in upstream],
                headers_to_remove=[h for h in http_facts.stripped if h not in dict(upstream)],
                response_headers_to_add=[option(k, v) for k, v in decision.client_headers()]),
            dynamic_metadata=struct_pb2.Struct(
                fields={k: struct_pb2.Value(string_value=v) for k, v in decision.metadata().items()}))
        assert authz_pb.CheckResponse.FromString(ext_authz.response(decision, http_facts)) == expected


def test_wire_denials_equal_the_messages_built_field_by_field() -> None:
    facts = ext_proc.request_facts(headers_msg(PAIRS, True), "default")
    denial = deny("d5", Reason.RATE_LIMITED, "slow down: é" + "x" * 200, headers=(("retry-after", "3"),),
                  policy="rpm", details=(("limit", 10),))
    ext_proc_expected = pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=429),
            headers=pb.HeaderMutation(set_headers=[_option(k, v) for k, v in denial.denial_headers()]),
            body=denial.error_body(), details="extproc_rate_limited"),
        dynamic_metadata=_reference_metadata(denial))
    assert _parsed(ext_proc.decided(denial, facts, "body")) == ext_proc_expected

    def value_option(k: str, v: str) -> base_pb2.HeaderValueOption:
        return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v),
                                          append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
    ext_authz_expected = authz_pb.CheckResponse(
        status=status_pb2.Status(code=7, message="rate_limited"),
        denied_response=authz_pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=429),
            headers=[value_option(k, v) for k, v in denial.denial_headers()],
            body=denial.error_body().decode()),
        dynamic_metadata=struct_pb2.Struct(
            fields={k: struct_pb2.Value(string_value=v) for k, v in denial.metadata().items()}))
    assert authz_pb.CheckResponse.FromString(ext_authz.response(denial, facts)) == ext_authz_expected
