"""The request pipeline: classify → identify → route → Decision, from facts and a snapshot."""

from __future__ import annotations

import json

import pytest

from extproc.config.loader import parse
from extproc.config.model import Snapshot
from extproc.domain.classify import WorkloadClass
from extproc.domain.facts import RequestFacts
from extproc.domain.reasons import Reason
from extproc.identity.authenticator import JwtAuthenticator
from extproc.pipeline import AwaitingBody, Pipeline
from tests.support import open_policy_text


class Fixed:
    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot


def pipeline(text: bytes | None = None) -> Pipeline:
    config = parse(text or open_policy_text().encode(), "test.yaml")
    return Pipeline(Fixed(Snapshot(config)), JwtAuthenticator())


def facts(method: str = "POST", path: str = "/v1/chat/completions", eos: bool = False,
          listener: str = "default", **headers: str) -> RequestFacts:
    return RequestFacts(method, path, "gw.local", dict(headers), eos, listener)


async def decide(p: Pipeline, f: RequestFacts, body: object = None, raw: bytes | None = None,
                 truncated: bool = False):
    out = await p.on_request_headers(f)
    if isinstance(out, AwaitingBody):
        data = raw if raw is not None else json.dumps(body).encode()
        return await p.on_request_body(f, out, data, truncated)
    return out


async def test_chat_request_is_routed_by_model() -> None:
    p = pipeline()
    mini = await decide(p, facts(), {"model": "gpt-4o-mini", "messages": []})
    assert mini.allowed and mini.upstream == "pool-a" and mini.route == "gpt-4o-mini"
    big = await decide(p, facts(), {"model": "gpt-4o", "messages": []})
    assert big.allowed and big.upstream == "pool-b"
    assert big.workload is WorkloadClass.INFERENCE and big.model == "gpt-4o"
    assert big.tenant == "anonymous"
    assert mini.decision_id != big.decision_id
    assert ("x-extproc-upstream", "pool-b") in big.upstream_headers()


async def test_headers_only_rule_decides_without_body() -> None:
    out = await pipeline().on_request_headers(facts("POST", "/v1/files"))
    assert not isinstance(out, AwaitingBody)
    assert out.allowed and out.workload is WorkloadClass.TRAINING and out.upstream == "pool-b"


async def test_unknown_is_denied_404_unless_listener_allows() -> None:
    out = await pipeline().on_request_headers(facts("GET", "/admin/secret", eos=True))
    assert not isinstance(out, AwaitingBody)
    assert out.reason is Reason.UNKNOWN_WORKLOAD and out.status == 404
    body = json.loads(out.error_body())
    assert body["error"]["code"] == "unknown_workload"
    assert body["error"]["decision_id"] == out.decision_id
    assert "GET /admin/secret" in body["error"]["message"]

    allowing = pipeline(b"""
listeners: {internal: {unknown_requests: allow}}
routing: {pools: [p], routes: [{id: all, pool: p}]}
""")
    out = await allowing.on_request_headers(facts("GET", "/admin/x", eos=True, listener="internal"))
    assert not isinstance(out, AwaitingBody) and out.allowed and out.workload is WorkloadClass.UNKNOWN
    out = await allowing.on_request_headers(facts("GET", "/admin/x", eos=True, listener="default"))
    assert not isinstance(out, AwaitingBody) and out.reason is Reason.UNKNOWN_WORKLOAD


async def test_no_route_is_a_clear_404() -> None:
    p = pipeline(b"routing: {pools: [p], routes: [{model: only-this, pool: p}]}")
    out = await decide(p, facts(), {"model": "gpt-4o"})
    assert out.reason is Reason.NO_ROUTE and out.status == 404
    assert "model=gpt-4o" in out.message and "routing table version 0" in out.message


ALIASED = b"""
routing:
  pools: [p, q]
  aliases: {gpt-4o: gpt-4o-2024-08-06}
  routes:
    - {id: pinned, model: gpt-4o-2024-08-06, pool: p, fallbacks: [q], rewrite_model: gpt-4o-2024-11-20}
quotas:
  policies:
    - {name: pinned-model, match: {model: gpt-4o-2024-08-06}, requests: {limit: 1, per: minute},
       on_store_failure: local}
"""


async def test_alias_route_rewrite_and_fallback_reach_the_decision() -> None:
    p = pipeline(ALIASED)
    ext_proc = RequestFacts("POST", "/v1/chat/completions", "gw", {}, False, "default", can_rewrite_body=True)
    out = await decide(p, ext_proc, {"model": "gpt-4o", "max_tokens": 5})
    assert out.allowed and out.route == "pinned" and out.route_version == 0
    assert (out.upstream, out.retries) == ("p~q", 1)
    assert out.model == "gpt-4o" and out.model_served == "gpt-4o-2024-11-20"
    assert json.loads(out.body_rewrite) == {"model": "gpt-4o-2024-11-20", "max_tokens": 5}
    headers = dict(out.upstream_headers())
    assert headers["x-extproc-model-served"] == "gpt-4o-2024-11-20" and headers["x-envoy-max-retries"] == "1"
    assert out.metadata()["route_version"] == "0"
    # The quota policy names the canonical model: the alias does not get around it.
    again = await decide(p, ext_proc, {"model": "gpt-4o"})
    assert again.reason is Reason.RATE_LIMITED and again.policy == "pinned-model"


async def test_ext_authz_cannot_rewrite_the_body_but_still_names_the_served_model() -> None:
    p = pipeline(ALIASED.replace(b"limit: 1,", b"limit: 100,"))
    f = RequestFacts("POST", "/v1/chat/completions", "gw", {}, False, "default", can_rewrite_body=False)
    out = await decide(p, f, {"model": "gpt-4o"})
    assert out.allowed and out.body_rewrite is None and out.model_served == "gpt-4o-2024-11-20"


async def test_oversized_or_truncated_body_is_413() -> None:
    p = pipeline(b"request_body: {max_bytes: 100}\nrouting: {pools: [p], routes: [{pool: p}]}")
    big = await decide(p, facts(), raw=b"{" + b" " * 200 + b"}")
    assert big.reason is Reason.BODY_TOO_LARGE and big.status == 413
    cut = await decide(p, facts(), raw=b'{"model": "x"', truncated=True)  # ext_authz's partial body
    assert cut.reason is Reason.BODY_TOO_LARGE


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"string"', b"\xff\xfe", b'{"a": 1} trailing',
                                 b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000])
async def test_non_json_body_is_400(raw: bytes) -> None:
    out = await decide(pipeline(), facts(), raw=raw)
    assert out.reason is Reason.INVALID_JSON and out.status == 400
    assert json.loads(out.error_body())["error"]["type"] == "invalid_request_error"


async def test_empty_body_is_not_an_error() -> None:
    out = await decide(pipeline(), facts(), raw=b"")
    assert out.allowed and out.model is None and out.upstream == "pool-a"


async def test_snapshot_is_fixed_for_the_request_across_phases() -> None:
    holder = Fixed(Snapshot(parse(open_policy_text().encode(), "open.yaml")))
    p = Pipeline(holder, JwtAuthenticator())
    pending = await p.on_request_headers(facts())
    assert isinstance(pending, AwaitingBody)
    holder.current = Snapshot(parse(b"routing: {pools: [z], routes: [{pool: z}]}", "new.yaml"))
    out = await p.on_request_body(facts(), pending, b'{"model": "gpt-4o"}')
    assert out.upstream == "pool-b"  # decided with the snapshot the request started with


async def test_large_bodies_parse_off_the_loop_and_still_classify() -> None:
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * (600 << 10)}]}
    out = await decide(pipeline(), facts(), big)
    assert out.allowed and out.upstream == "pool-b"


async def test_forms_are_read_for_their_model() -> None:
    from tests.unit.test_request_body import FORM_TYPE, TRANSCRIPTION

    f = RequestFacts("POST", "/v1/audio/transcriptions", "gw", {"content-type": FORM_TYPE}, False, "default",
                     can_rewrite_body=True)
    out = await decide(pipeline(), f, raw=TRANSCRIPTION.replace(b"whisper-1", b"Gpt-4o"))
    assert out.allowed and out.model == "gpt-4o" and out.upstream == "pool-b"
    # The form's model field is rewritten in place to the name decided on.
    assert b'name="model"\r\n\r\ngpt-4o\r\n' in out.body_rewrite and out.body_rewrite.startswith(b"--")


MODEL_RULES = b"""
listeners: {default: {unknown_requests: deny}}
access:
  - {name: gpt-4o-is-paid, match: {model: GPT-4o}, require: {plans: [pro]}}
  - {name: inference-is-paid, match: {class: inference}, require: {plans: [pro, edge-only]}}
routing:
  pools: [p, q]
  routes:
    - {id: gpt-4o, model: gpt-4o, pool: q}
    - {id: inference, class: inference, pool: p}
    - {id: edge, class: edge_inference, pool: p}
    - {id: rag, class: rag, pool: p}
"""


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "MULTIPART/Form-Data; boundary=x",
                                          "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("rewrites", [True, False])
async def test_a_mislabelled_json_body_is_refused_not_decided_blind(content_type: str, rewrites: bool) -> None:
    """Regression (hardening #1): with a non-JSON content type the body was never read, so the
    model rule that refuses this caller never saw gpt-4o, and the upstream served it."""
    f = RequestFacts("POST", "/v1/chat/completions", "gw", {"content-type": content_type}, False, "default",
                     can_rewrite_body=rewrites)
    out = await decide(pipeline(MODEL_RULES), f, {"model": "gpt-4o", "messages": []})
    assert not out.allowed and out.status in (400, 415)
    assert out.reason in (Reason.INVALID_FORM, Reason.UNSUPPORTED_MEDIA_TYPE)


@pytest.mark.parametrize("model", ["GPT-4o", "gpt-4O", "Gpt-4o"])
async def test_case_variants_are_the_same_model_to_every_rule(model: str) -> None:
    """Regression (hardening #2): ``GPT-4o`` matched no model rule and fell through to the class
    route. Now every rule sees gpt-4o, and the upstream gets the name that was decided on."""
    ext_proc = RequestFacts("POST", "/v1/chat/completions", "gw", {}, False, "default", can_rewrite_body=True)
    denied = await decide(pipeline(MODEL_RULES), ext_proc, {"model": model, "messages": []})
    assert denied.reason is Reason.PLAN_NOT_ALLOWED and denied.policy == "gpt-4o-is-paid"
    p = pipeline(MODEL_RULES[:MODEL_RULES.index(b"access:")] + MODEL_RULES[MODEL_RULES.index(b"routing:"):])
    out = await decide(p, ext_proc, {"model": model, "messages": []})
    assert out.allowed and out.route == "gpt-4o" and out.model == "gpt-4o"
    assert json.loads(out.body_rewrite)["model"] == "gpt-4o"
    # ext_authz cannot rewrite the body: a spelling the upstream would read differently is a 400.
    ext_authz = RequestFacts("POST", "/v1/chat/completions", "gw", {}, False, "authz")
    refused = await decide(p, ext_authz, {"model": model, "messages": []})
    assert refused.reason is Reason.INVALID_MODEL and "'gpt-4o'" in refused.message


async def test_the_edge_marker_never_escapes_inference_policies() -> None:
    """Regression (hardening #4): ``x-inference-target: edge`` (or an ``edge.*`` host) made a chat
    request edge_inference, outside every policy keyed on class inference."""
    p = pipeline(MODEL_RULES.replace(b"{name: gpt-4o-is-paid", b"{name: unused"))
    for headers, host in (({"x-inference-target": "edge"}, "gw"), ({}, "edge.gw.example")):
        f = RequestFacts("POST", "/v1/chat/completions", host, headers, False, "default")
        out = await decide(p, f, {"model": "phi-3", "messages": []})
        assert out.workload is WorkloadClass.EDGE_INFERENCE
        assert out.reason is Reason.PLAN_NOT_ALLOWED and out.policy == "inference-is-paid"
    # Embeddings cannot be marked edge at all (edge inference is inference for policy).
    marked = RequestFacts("POST", "/v1/embeddings", "gw", {"x-inference-target": "edge"}, False, "default")
    rag = await decide(p, marked, {"model": "e5", "input": "x"})
    assert rag.allowed and rag.workload is WorkloadClass.RAG


async def test_apis_that_generate_nothing_reserve_no_tokens() -> None:
    """Regression (hardening #6): ``GET /v1/models`` reserved 256 tokens and count_tokens 264."""
    p = pipeline(b"""
routing: {pools: [p], routes: [{pool: p}]}
quotas:
  default_max_tokens: 256
  policies: [{name: all, budget: {limit: 1000, period: day}, on_store_failure: open}]
""")
    models = await p.on_request_headers(facts("GET", "/v1/models", eos=True))
    assert not isinstance(models, AwaitingBody) and models.allowed and models.estimate_tokens == 0
    count = await decide(p, facts("POST", "/v1/messages/count_tokens"),
                         {"model": "claude-3-5-sonnet", "messages": [{"role": "user", "content": "hi"}]})
    assert count.allowed and count.estimate_tokens == 0


async def test_edge_markers_do_not_turn_other_paths_into_inference() -> None:
    marked = facts("DELETE", "/internal/admin/x", eos=True, **{"x-inference-target": "edge"})
    out = await pipeline().on_request_headers(marked)
    assert not isinstance(out, AwaitingBody) and out.reason is Reason.UNKNOWN_WORKLOAD
    chat = await decide(pipeline(), facts(**{"x-inference-target": "edge"}), {"model": "phi-3"})
    assert chat.workload is WorkloadClass.EDGE_INFERENCE


async def test_authentication_modes_per_listener() -> None:
    from tests.jwt_factory import AUDIENCE, ISSUER, TestKey, claims, token

    key = TestKey.make("ec256", "k1")
    policy = f"""
identity:
  issuers:
    - name: idp
      issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      algorithms: [ES256]
      jwks: {{keys: [{json.dumps(key.jwk())}]}}
listeners:
  default: {{authentication: required}}
  partner: {{authentication: optional}}
  open: {{authentication: none}}
routing: {{pools: [p], routes: [{{pool: p}}]}}
""".encode()
    from extproc.identity.authenticator import JwtAuthenticator as Real

    auth = Real()
    config = parse(policy, "auth.yaml")
    auth.configure(config.issuers)
    p = Pipeline(Fixed(Snapshot(config)), auth)
    good = f"Bearer {token(key, 'ES256', claims())}"
    try:
        none = await p.on_request_headers(facts("GET", "/v1/models", eos=True))
        assert not isinstance(none, AwaitingBody) and none.status == 401
        assert ("www-authenticate", 'Bearer realm="extproc"') in none.headers
        ok = await p.on_request_headers(facts("GET", "/v1/models", eos=True, authorization=good))
        assert not isinstance(ok, AwaitingBody) and ok.allowed and ok.tenant == "acme"
        # optional: no token is anonymous, a bad token is still refused
        anon = await p.on_request_headers(facts("GET", "/v1/models", eos=True, listener="partner"))
        assert not isinstance(anon, AwaitingBody) and anon.allowed and anon.tenant == "anonymous"
        bad = await p.on_request_headers(facts("GET", "/v1/models", eos=True, listener="partner",
                                               authorization="Bearer x.y.z"))
        assert not isinstance(bad, AwaitingBody) and bad.reason is Reason.MALFORMED_TOKEN
        challenge = dict(bad.headers)["www-authenticate"]
        assert 'error="invalid_token"' in challenge and "error_description=" in challenge
        # none: tokens are not even looked at
        ignored = await p.on_request_headers(facts("GET", "/v1/models", eos=True, listener="open",
                                                   authorization="Bearer x.y.z"))
        assert not isinstance(ignored, AwaitingBody) and ignored.allowed and ignored.tenant == "anonymous"
    finally:
        await auth.close()


def test_tenant_labels_are_capped() -> None:
    from extproc.telemetry.decisions import TenantLabels

    labels = TenantLabels(cap=3)
    assert [labels(t) for t in ("a", "b", "c", "d", "a", "e", None)] == ["a", "b", "c", "other", "a", "other", "-"]


async def test_openai_streams_are_asked_for_their_usage_on_ext_proc_only() -> None:
    p = pipeline()
    ext_proc = RequestFacts("POST", "/v1/chat/completions", "gw", {}, False, "default", can_rewrite_body=True)
    out = await decide(p, ext_proc, {"model": "gpt-4o", "stream": True, "stream_options": {"x": 1}})
    assert json.loads(out.body_rewrite)["stream_options"] == {"x": 1, "include_usage": True}
    asked = await decide(p, ext_proc, {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}})
    assert asked.body_rewrite is None
    unstreamed = await decide(p, ext_proc, {"model": "gpt-4o"})
    assert unstreamed.body_rewrite is None
    ext_authz = RequestFacts("POST", "/v1/chat/completions", "gw", {}, False, "default")
    assert (await decide(p, ext_authz, {"model": "gpt-4o", "stream": True})).body_rewrite is None
    # No quota store and no records: nothing to settle, so the usage reader is not asked for.
    assert out.recipe is None and "x-extproc-usage" not in dict(out.upstream_headers())
