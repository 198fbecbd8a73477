"""Quotas through a real Envoy with a real redis-server: 429s that explain themselves, leases."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request

import pytest
from redis import Redis

from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


def test_rate_limit_429_explains_itself(stack: Stack) -> None:
    tok = stack.token(tenant="rl-tenant", plan="free")
    remaining = []
    for _ in range(60):
        resp = stack.request("GET", "/v1/models", token=tok)
        assert resp.status == 200, resp.body
        remaining.append(int(resp.headers["x-ratelimit-remaining-requests"]))
    assert remaining[0] == 59 and remaining[-1] == 0
    assert resp.headers["x-ratelimit-limit-requests"] == "60"
    assert resp.headers["ratelimit-policy"].startswith('"free-requests";q=60;w=60')
    denied = stack.request("GET", "/v1/models", token=tok)
    assert denied.status == 429
    error = denied.json()["error"]
    assert (error["type"], error["code"], error["policy"]) == ("rate_limit_error", "rate_limited", "free")
    assert (error["dimension"], error["limit"], error["window"]) == ("requests", 60, "60s")
    assert 1 <= int(denied.headers["retry-after"]) <= 2  # one request every second at 60/min
    assert denied.headers["x-ratelimit-remaining-requests"] == "0"
    assert denied.headers["ratelimit"].startswith('"free-requests";r=0')
    assert error["decision_id"] == denied.headers["x-extproc-decision-id"]
    # The same tenant through ext_authz shares the counters.
    assert stack.request("GET", "/v1/models", token=tok, port=stack.ports.ext_authz).status == 429
    # Another tenant on the same plan is unaffected.
    assert stack.request("GET", "/v1/models", token=stack.token(tenant="other", plan="free")).status == 200


def test_budget_exhaustion_is_distinguishable(stack: Stack) -> None:
    tok = stack.token(tenant="budget-tenant", plan="free")
    # While a stream runs, its 19,000-token reservation stands (it is trued up at the end).
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.ext_proc, timeout=10)
    conn.request("POST", "/v1/chat/completions", headers={
        "content-type": "application/json", "x-demo-hold": "budget", "authorization": f"Bearer {tok}"},
        body=json.dumps({"model": "gpt-4o", "messages": [], "max_tokens": 19_000, "stream": True}))
    big = conn.getresponse()
    assert big.status == 200 and big.readline().startswith(b"data: ")
    more = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": [], "max_tokens": 5_000},
                         token=tok)
    assert more.status == 429
    error = more.json()["error"]
    assert (error["type"], error["code"], error["window"]) == ("insufficient_quota", "budget_exhausted", "day")
    assert error["limit"] == 20_000 and error["used"] > 19_000
    assert "budget" in error["message"]
    _release(stack, "budget")
    big.read()
    conn.close()


def _held_stream(stack: Stack, token: str, hold: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.ext_proc, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "gpt-4o", "stream": True}),
                 headers={"content-type": "application/json", "x-demo-hold": hold,
                          "authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert resp.readline().startswith(b"data: ")  # first event arrived; the rest is held
    return conn, resp


def _release(stack: Stack, hold: str) -> None:
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.pool_b}/__demo/release/{hold}", method="POST"), timeout=5).read()


def _in_flight(stack: Stack, tenant: str, policy: str = "free") -> int:
    assert stack.redis is not None
    r = Redis.from_url(stack.redis.url)
    try:
        return int(r.zcard(f"xq:{{{tenant}}}:c:{policy}"))
    finally:
        r.close()


def _wait_in_flight(stack: Stack, tenant: str, want: int) -> None:
    deadline = time.monotonic() + 5
    while _in_flight(stack, tenant) != want:
        assert time.monotonic() < deadline, f"in-flight stayed {_in_flight(stack, tenant)}, want {want}"
        time.sleep(0.05)


def test_concurrency_lease_lasts_until_the_stream_ends(stack: Stack) -> None:
    tok = stack.token(tenant="cc-tenant", plan="free")
    first = _held_stream(stack, tok, "cc-1")
    second = _held_stream(stack, tok, "cc-2")
    assert _in_flight(stack, "cc-tenant") == 2  # streams still open: leases held
    third = stack.request("GET", "/v1/models", token=tok)
    assert third.status == 429 and third.json()["error"]["code"] == "concurrency_limited"
    _release(stack, "cc-1")
    assert first[1].read().rstrip().endswith(b"[DONE]")
    first[0].close()
    _wait_in_flight(stack, "cc-tenant", 1)  # released when the HTTP stream ended
    assert stack.request("GET", "/v1/models", token=tok).status == 200
    _release(stack, "cc-2")
    second[1].read()
    second[0].close()
    _wait_in_flight(stack, "cc-tenant", 0)


def test_client_aborts_mid_stream_leak_no_lease(stack: Stack) -> None:
    tok = stack.token(tenant="abort-tenant", plan="free")
    for i in range(5):  # more than the limit of 2: a leak would lock the tenant out
        conn, _ = _held_stream(stack, tok, f"abort-{i}")
        conn.sock.shutdown(socket.SHUT_RDWR)  # the client vanishes mid-stream
        conn.close()
        _release(stack, f"abort-{i}")
        _wait_in_flight(stack, "abort-tenant", 0)
    assert stack.request("GET", "/v1/models", token=tok).status == 200


def test_redis_outage_follows_each_policys_failure_mode(fresh_dir) -> None:
    from tests.e2e.stack import start_stack
    from tests.redis_server import RedisServer

    s = start_stack(fresh_dir)
    try:
        pro, free = s.token(tenant="acme", plan="pro"), s.token(tenant="globex", plan="free")
        assert s.request("GET", "/v1/models", token=pro).status == 200
        assert s.redis is not None
        port = s.redis.port
        s.redis.kill()
        for _ in range(5):
            local = s.request("GET", "/v1/models", token=pro)  # policy "pro": on_store_failure local
            assert local.status == 200
            assert local.headers["x-extproc-degraded"] == "quota-store-local"
            closed = s.request("GET", "/v1/models", token=free)  # policy "free": closed
            assert closed.status == 503
            assert closed.json()["error"]["code"] == "quota_store_unavailable"
            assert closed.headers["retry-after"] == "1"
        s.redis = RedisServer(fresh_dir / "redis2", port).start()
        deadline = time.monotonic() + 10
        while True:  # recovery without a restart, once the breaker lets a probe through
            resp = s.request("GET", "/v1/models", token=free)
            if resp.status == 200 and "x-extproc-degraded" not in resp.headers:
                break
            assert time.monotonic() < deadline, resp.body
            time.sleep(0.2)
    finally:
        s.stop()


CLAMP_POLICY = """
quotas:
  default_max_tokens: 100
  policies:
    - name: clamped
      match: {plan: trial}
      budget: {limit: 2000, period: day}
      clamp_max_tokens: true
"""


def _open_stream(stack: Stack, token: str, hold: str, max_tokens: int) -> tuple[http.client.HTTPConnection,
                                                                                 http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.ext_proc, timeout=10)
    conn.request("POST", "/v1/chat/completions", headers={
        "content-type": "application/json", "x-demo-hold": hold, "authorization": f"Bearer {token}"},
        body=json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": max_tokens, "stream": True}))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    return conn, resp


def test_max_tokens_is_clamped_to_the_budget_left(fresh_dir) -> None:
    from extproc.devstack.demo import DEMO_CONFIG
    from tests.e2e.stack import start_stack

    s = start_stack(fresh_dir, config_text=DEMO_CONFIG.read_text().split("\nquotas:")[0] + CLAMP_POLICY)
    try:
        tok = s.token(tenant="trial-co", plan="trial")
        # Streams still running: their reservations stand until they end.
        conn, first = _open_stream(s, tok, "clamp-1", 1500)
        assert first.getheader("x-demo-max-tokens") == "1500"
        # About 490 tokens are left: 1500 does not fit, so the request goes out with less.
        conn2, second = _open_stream(s, tok, "clamp-2", 1500)
        clamped = int(second.getheader("x-extproc-max-tokens-clamped"))
        assert 400 < clamped < 500 and second.getheader("x-demo-max-tokens") == str(clamped)
        # ext_authz cannot rewrite a body: there the same request is refused.
        third = s.request("POST", "/v1/chat/completions",
                          {"model": "gpt-4o", "messages": [], "max_tokens": 1500}, token=tok,
                          port=s.ports.ext_authz)
        assert third.status == 429 and third.json()["error"]["code"] == "budget_exhausted"
        # Nothing left worth sending: refused with the budget's 429.
        last = s.request("POST", "/v1/chat/completions",
                         {"model": "gpt-4o", "messages": [], "max_tokens": 1500}, token=tok)
        assert last.status == 429 and last.json()["error"]["code"] == "budget_exhausted"
        for c, resp, hold in ((conn, first, "clamp-1"), (conn2, second, "clamp-2")):
            _release(s, hold)
            assert b'"model": "gpt-4o"' in resp.read()  # the rest of the (rewritten) body arrived intact
            c.close()
    finally:
        s.stop()


def test_upstream_errors_release_their_leases(stack: Stack) -> None:
    tok = stack.token(tenant="err-tenant", plan="free")
    for status in ("500", "503", "429", "502", "500"):  # more failures than the limit of 2
        resp = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": []}, token=tok,
                             headers={"x-demo-status": status})
        assert resp.status == int(status)
        assert resp.headers["x-extproc-decision-id"]
    _wait_in_flight(stack, "err-tenant", 0)
    assert stack.request("GET", "/v1/models", token=tok).status == 200


def test_json_responses_true_up_token_budgets_to_the_real_usage(stack: Stack) -> None:
    """The reservation is the estimate (prompt + max_tokens); settlement charges what the
    model reported in the response's usage."""
    tok = stack.token(tenant="usage-co", plan="free")
    resp = stack.request("POST", "/v1/chat/completions",
                         {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000},
                         token=tok)
    assert resp.status == 200
    real = resp.json()["usage"]["total_tokens"]
    assert real < 100  # far below the 1000+ reserved
    assert stack.redis is not None
    r = Redis.from_url(stack.redis.url)
    deadline = time.monotonic() + 5
    try:
        while int(r.hget("xq:{usage-co}:b:free", "u") or 0) != real:
            assert time.monotonic() < deadline, r.hget("xq:{usage-co}:b:free", "u")
            time.sleep(0.05)
        # Streaming responses are not read yet: their reservation stands (flagged estimate).
        sse = stack.request("POST", "/v1/chat/completions",
                            {"model": "gpt-4o", "messages": [], "stream": True, "max_tokens": 500}, token=tok)
        assert sse.status == 200 and sse.body.rstrip().endswith(b"[DONE]")
    finally:
        r.close()
