"""Streamed usage through a real Envoy: the usage filter reads SSE without holding it back,
the quota is trued up to the reported usage, and streams that end badly are charged an
estimate, once, with their lease released."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request

import pytest
from redis import Redis

from extproc.quota.plan import tenant_tag
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


def budget_used(stack: Stack, tenant: str, policy: str = "pro") -> int:
    r = Redis.from_url(stack.redis.url)  # type: ignore[union-attr]
    try:
        return int(r.hget(f"xq:{{{tenant_tag(tenant)}}}:b:{policy}", "u") or 0)
    finally:
        r.close()


def in_flight(stack: Stack, tenant: str, policy: str = "pro") -> int:
    r = Redis.from_url(stack.redis.url)  # type: ignore[union-attr]
    try:
        return int(r.zcard(f"xq:{{{tenant_tag(tenant)}}}:c:{policy}"))
    finally:
        r.close()


def wait_for(check, what: str, seconds: float = 4.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def stream(stack: Stack, tenant: str, body: dict, hold: str | None = None):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.ext_proc, timeout=10)
    headers = {"content-type": "application/json", "authorization": f"Bearer {stack.token(tenant=tenant, plan='pro')}"}
    if hold:
        headers["x-demo-hold"] = hold
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    return conn, resp


def events(raw: bytes) -> list[dict]:
    out = []
    for line in raw.splitlines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def test_streamed_usage_is_reported_to_the_client_and_settles_the_budget(stack: Stack) -> None:
    body = {"model": "gpt-4o", "stream": True, "max_tokens": 500,
            "messages": [{"role": "user", "content": "Tell me about gateways. " * 20}]}
    conn, resp = stream(stack, "sse-reported", body)
    chunks = events(resp.read())
    conn.close()
    # The client did not ask for usage; the gateway did, so the last chunk carries it.
    assert "x-extproc-usage" not in json.loads(resp.headers["x-demo-extproc-headers"])  # Envoy's only
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["total_tokens"] > 0
    wait_for(lambda: budget_used(stack, "sse-reported") == usage["total_tokens"],
             f"budget not trued up to {usage['total_tokens']}: {budget_used(stack, 'sse-reported')}")
    wait_for(lambda: in_flight(stack, "sse-reported") == 0, "lease not released")
    time.sleep(1.0)  # past a few access-log flushes: nothing settles it a second time
    assert budget_used(stack, "sse-reported") == usage["total_tokens"]


def test_client_that_asked_for_usage_gets_it_once(stack: Stack) -> None:
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}, "messages": []}
    conn, resp = stream(stack, "sse-asked", body)
    chunks = events(resp.read())
    conn.close()
    assert sum(1 for c in chunks if c.get("usage")) == 1


def test_client_gone_mid_stream_is_charged_an_estimate_once_and_releases_the_lease(stack: Stack) -> None:
    body = {"model": "gpt-4o", "stream": True, "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    conn, resp = stream(stack, "sse-gone", body, hold="gone-1")
    assert resp.readline().startswith(b"data: ")  # the first token arrived; the rest is held
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.pool_b}/__demo/release/gone-1", method="POST"), timeout=5).read()
    wait_for(lambda: in_flight(stack, "sse-gone") == 0, "lease not released")
    # Settled from the access log: not the whole reservation, the prompt and what was generated.
    wait_for(lambda: 0 < budget_used(stack, "sse-gone") < 1000, "not settled to an estimate")
    charged = budget_used(stack, "sse-gone")
    time.sleep(1.0)
    assert budget_used(stack, "sse-gone") == charged  # never twice


def test_upstream_error_on_a_stream_is_not_charged(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.ext_proc, timeout=10)
    conn.request("POST", "/v1/chat/completions", headers={
        "content-type": "application/json", "x-demo-status": "500",
        "authorization": f"Bearer {stack.token(tenant='sse-error', plan='pro')}"},
        body=json.dumps({"model": "gpt-4o", "stream": True, "max_tokens": 300, "messages": []}))
    resp = conn.getresponse()
    assert resp.status == 500
    resp.read()
    conn.close()
    wait_for(lambda: in_flight(stack, "sse-error") == 0, "lease not released")
    wait_for(lambda: budget_used(stack, "sse-error") == 0, "an upstream failure was charged")


def test_upstream_reset_mid_stream_is_charged_an_estimate_once(stack: Stack) -> None:
    body = {"model": "gpt-4o", "stream": True, "max_tokens": 800, "messages": [{"role": "user", "content": "hi"}]}
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.ext_proc, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={
        "content-type": "application/json", "x-demo-reset": "after-first",
        "authorization": f"Bearer {stack.token(tenant='sse-reset', plan='pro')}"})
    resp = conn.getresponse()
    assert resp.status == 200  # the headers went out before the upstream died
    with pytest.raises(http.client.IncompleteRead):
        resp.read()  # Envoy resets the client's stream: no [DONE]
    conn.close()
    wait_for(lambda: in_flight(stack, "sse-reset") == 0, "lease not released")
    # The prompt's share and the one chunk seen, not the reservation.
    wait_for(lambda: 0 < budget_used(stack, "sse-reset") < 800, "not settled to an estimate")
    charged = budget_used(stack, "sse-reset")
    time.sleep(1.0)
    assert budget_used(stack, "sse-reset") == charged  # never twice
