"""Records through a real Envoy: every allowed request leaves one usage record, every denial a
decision record; for a tenant over a mixed run the records add up to what the quota counters
charged; `extproc explain`, `extproc usage` and the admin API answer from them."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from extproc.ledger.records import SOURCE_NAMES, UsageRecord, end_name
from extproc.ledger.spec import USAGE_STREAM
from extproc.ledger.v1.ledger_pb2 import (
    RESPONSE_END_COMPLETE,
    RESPONSE_END_INTERRUPTED,
    RESPONSE_END_NOT_OBSERVED,
)
from extproc.quota.plan import tenant_tag
from tests.e2e.stack import Stack, start_stack

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("records")
    token_file = tmp / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    # The demo policy keeps every allowed decision's record (allow_sample: 1.0).
    s = start_stack(tmp / "stack", sidecar_args=("--admin-token-file", str(token_file)))
    yield s
    s.stop()


def _redis(stack: Stack) -> Redis:
    return Redis.from_url(stack.redis.url)  # type: ignore[union-attr]


def budget_used(stack: Stack, tenant: str, policy: str) -> int:
    with _redis(stack) as r:
        return int(r.hget(f"xq:{{{tenant_tag(tenant)}}}:b:{policy}", "u") or 0)


def usage_records(stack: Stack, tenant: str) -> list[Any]:
    with _redis(stack) as r:
        entries = r.xrange(USAGE_STREAM)
    return [UsageRecord.FromString(f[b"r"]) for _, f in entries if f[b"t"].decode() == tenant]


def wait_for(check, what: str, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def post(stack: Stack, token: str, body: dict, headers: dict | None = None,
         port: int | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port or stack.ports.ext_proc, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={
        "content-type": "application/json", "authorization": f"Bearer {token}", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extproc", *args, "--redis-url", stack.redis.url,  # type: ignore[union-attr]
                           "--config", str(stack.config_path)], capture_output=True, text=True, timeout=30)


def admin(stack: Stack, path: str, token: str | None = ADMIN_TOKEN) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://{stack.sidecar_admin}{path}")  # type: ignore[attr-defined]
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_records_reconcile_with_the_counters_over_a_mixed_run(stack: Stack) -> None:
    tenant = "recon"
    token = stack.token(tenant=tenant, plan="pro")
    prompt = [{"role": "user", "content": "Where did my tokens go? " * 10}]
    ids: dict[str, str] = {}
    # JSON answers with usage (trued up to it), and one the upstream fails (charged nothing).
    for i in range(3):
        status, headers, _ = post(stack, token, {"model": "gpt-4o", "messages": prompt, "max_tokens": 200})
        assert status == 200
        ids[f"json-{i}"] = headers["x-extproc-decision-id"]
    status, headers, _ = post(stack, token, {"model": "gpt-4o", "messages": prompt}, {"x-demo-status": "500"})
    assert status == 500
    ids["json-500"] = headers["x-extproc-decision-id"]
    # Streams: read to the end (reported usage), the upstream failing, and a client that leaves
    # after the first token (estimated from what was seen).
    for i in range(2):
        status, headers, _ = post(stack, token, {"model": "gpt-4o", "messages": prompt, "stream": True})
        assert status == 200
        ids[f"sse-{i}"] = headers["x-extproc-decision-id"]
    status, headers, _ = post(stack, token, {"model": "gpt-4o", "messages": prompt, "stream": True},
                              {"x-demo-status": "500"})
    assert status == 500
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.ext_proc, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "gpt-4o", "messages": prompt, "stream": True, "max_tokens": 900}), headers={
        "content-type": "application/json", "authorization": f"Bearer {token}", "x-demo-hold": "recon-gone"})
    resp = conn.getresponse()
    ids["sse-gone"] = resp.getheader("x-extproc-decision-id")
    assert resp.readline().startswith(b"data: ")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.pool_b}/__demo/release/recon-gone", method="POST"), timeout=5).read()
    # A stream answered without a body: the usage reader sees nothing, settlement charges the
    # prompt's share of the estimate and writes the record.
    status, headers, _ = post(stack, token, {"model": "gpt-4o", "messages": prompt, "stream": True,
                                             "max_tokens": 40}, {"x-demo-status": "204"})
    assert status == 204
    ids["sse-204"] = headers["x-extproc-decision-id"]
    # ext_authz never sees the response: its record is the estimate the counters keep.
    status, headers, _ = post(stack, token, {"model": "gpt-4o", "messages": prompt, "max_tokens": 50},
                              port=stack.ports.ext_authz)
    assert status == 200
    allowed = 10
    # Denials leave decision records, no usage.
    status, headers, _ = post(stack, "not-a-token", {"model": "gpt-4o", "messages": prompt})
    assert status == 401
    ids["401"] = headers["x-extproc-decision-id"]

    wait_for(lambda: len(usage_records(stack, tenant)) >= allowed, "usage records missing")
    time.sleep(1.0)  # past a few access-log flushes: nothing may be settled or recorded twice
    records = usage_records(stack, tenant)
    assert len(records) == allowed
    assert len({r.decision_id for r in records}) == allowed
    by_id = {r.decision_id: r for r in records}
    sources = {name: SOURCE_NAMES[by_id[ids[name]].source] for name in ("json-0", "json-500", "sse-0", "sse-gone")}
    assert sources == {"json-0": "reported", "json-500": "upstream_error", "sse-0": "reported",
                       "sse-gone": "estimated"}
    no_body = by_id[ids["sse-204"]]
    # Its end was seen (a 204 ends in its headers); the usage was not (estimated).
    assert (end_name(no_body), SOURCE_NAMES[no_body.source], no_body.status) == ("complete", "estimated", 204)
    assert no_body.charged_tokens == no_body.tokens.total > 40  # the estimate (prompt + max_tokens), kept
    gone = by_id[ids["sse-gone"]]
    assert 0 < gone.tokens.total < 900 and gone.streamed and gone.end == RESPONSE_END_INTERRUPTED
    ok = by_id[ids["sse-0"]]
    assert ok.status == 200 and ok.end == RESPONSE_END_COMPLETE and ok.total_ms >= ok.ttft_ms >= ok.ttfb_ms >= 0
    assert ok.tokens.prompt > 0 and ok.tokens.completion > 0 and ok.route and ok.upstream
    assert by_id[ids["json-500"]].charged_tokens == 0
    assert {by_id[ids[f"json-{i}"]].end for i in range(3)} == {RESPONSE_END_COMPLETE}
    authz = [r for r in records if r.adapter == "ext_authz"]
    assert len(authz) == 1 and authz[0].end == RESPONSE_END_NOT_OBSERVED
    assert not any(r.ended for r in records)  # the old free-text field is no longer written
    # The reconciliation: what the records say was charged is what the counter holds.
    counter = budget_used(stack, tenant, "pro")
    assert counter > 0
    assert sum(r.charged_tokens for r in records) == counter

    # The same answer from the CLI and the admin API.
    out = cli(stack, "usage", "--tenant", tenant, "--since", "1h", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["total"]["requests"] == allowed and doc["total"]["charged_tokens"] == counter
    assert doc["plans"] == ["pro"] and [b["policy"] for b in doc["budgets"]] == ["pro"]  # not free's
    pro = next(b for b in doc["budgets"] if b["policy"] == "pro")
    assert pro["used"] == counter and pro["remaining"] == pro["limit"] - counter
    text = cli(stack, "usage", "--tenant", tenant, "--by", "class")
    assert text.returncode == 0 and "inference" in text.stdout and "Budgets now:" in text.stdout
    status, body = admin(stack, f"/v1/usage?tenant={tenant}&since=1h&by=day")
    assert status == 200 and body["total"]["charged_tokens"] == counter

    # Explain: a denial, an allow with its usage.
    out = cli(stack, "explain", ids["401"])
    assert out.returncode == 0, out.stderr
    assert "DENIED with HTTP 401 (malformed_token)" in out.stdout
    out = cli(stack, "explain", ids["sse-0"])
    assert "ALLOWED" in out.stdout and "as the upstream reported it" in out.stdout
    assert "Quota policies evaluated" in out.stdout and "pro (budget" in out.stdout
    status, body = admin(stack, f"/v1/decisions/{ids['json-500']}")
    assert status == 200 and body["usage"]["source"] == "USAGE_SOURCE_UPSTREAM_ERROR"
    assert body["decision"]["tenant"] == tenant and "token" not in json.dumps(body["decision"]).lower().replace(
        "estimate_tokens", "").replace("max_tokens_clamped", "")


def test_every_delivered_json_response_is_recorded_complete(stack: Stack) -> None:
    """Regression (hardening #9): fully delivered JSON responses (200, usage reported, the whole
    body at the client) were sometimes recorded as ``aborted``: Envoy resets the ext_proc stream
    when the request is over, and that reset overwrote the end the stream had seen."""
    tenant = "ends"
    token = stack.token(tenant=tenant, plan="pro")
    ids = []
    for _ in range(30):
        status, headers, body = post(stack, token, {"model": "gpt-4o-mini", "messages": [{"role": "user",
                                                                                         "content": "hi"}]})
        assert status == 200 and json.loads(body)["usage"]["total_tokens"] > 0
        ids.append(headers["x-extproc-decision-id"])
    wait_for(lambda: len(usage_records(stack, tenant)) >= len(ids), "usage records missing")
    by_id = {r.decision_id: r for r in usage_records(stack, tenant)}
    ends = [end_name(by_id[i]) for i in ids]
    assert ends == ["complete"] * len(ids)
    assert {SOURCE_NAMES[by_id[i].source] for i in ids} == {"reported"}


def test_admin_records_api_needs_the_admin_token(stack: Stack) -> None:
    assert admin(stack, "/v1/usage?tenant=x", token=None)[0] == 401
    assert admin(stack, "/v1/usage?tenant=x", token="wrong")[0] == 401
    status, body = admin(stack, "/v1/decisions/01unknown")
    assert status == 404 and body["found"] is False
    assert admin(stack, "/v1/usage")[0] == 400


def test_explain_names_the_quota_policy_that_refused(stack: Stack) -> None:
    token = stack.token(tenant="recon-free", plan="free")
    status, headers, _ = post(stack, token, {"model": "gpt-4o", "messages": [], "max_tokens": 50000})
    assert status == 429
    decision_id = headers["x-extproc-decision-id"]
    wait_for(lambda: cli(stack, "explain", decision_id).returncode == 0, "no decision record")
    out = cli(stack, "explain", decision_id).stdout
    assert "DENIED with HTTP 429 (budget_exhausted)" in out
    assert "Decided by: quota policy 'free'" in out
    assert "OVER the limit" in out and "never (the request alone is larger than the limit)" in out
