"""Every admitted request ends in exactly one usage record, and its lease is freed, even when
nothing tells the sidecar it ended (data plane v2, settlement/sweeper.py): a sidecar that was
killed mid-request and away when the request ended (its access-log entry lost) has the
admission swept, flagged ``unreported``, with the counters equal to the records."""

from __future__ import annotations

import http.client
import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from redis import Redis

from extproc.devstack.demo import DEMO_CONFIG
from extproc.ledger.records import SOURCE_NAMES, UsageRecord, end_name
from extproc.ledger.spec import USAGE_STREAM
from tests.e2e.stack import Stack, start_stack
from tests.support import Child, sidecar_command, wait_http

POLICY = """
quotas:
  sweep_after_seconds: 2
  sweep_interval_seconds: 1
  policies:
    - name: one
      match: {plan: sweep-test}
      concurrency: {limit: 1}
      budget: {limit: 1000000, period: day}
"""


def _redis(stack: Stack) -> Redis:
    return Redis.from_url(stack.redis.url)  # type: ignore[union-attr]


def _records(stack: Stack, tenant: str) -> list[Any]:
    with _redis(stack) as r:
        entries = r.xrange(USAGE_STREAM)
    return [UsageRecord.FromString(f[b"r"]) for _, f in entries if f[b"t"].decode() == tenant]


def _state(stack: Stack, tenant: str) -> tuple[int, int, int]:
    """Leases held, budget used, admissions still open (registered for the sweeper)."""
    with _redis(stack) as r:
        return (int(r.zcard(f"xq:{{{tenant}}}:c:one")), int(r.hget(f"xq:{{{tenant}}}:b:one", "u") or 0),
                int(r.zcard(f"xq:{{{tenant}}}:due")))


def _wait(check, what: str, seconds: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _held_stream(stack: Stack, token: str, hold: str) -> tuple[http.client.HTTPConnection, str]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.ext_proc, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "gpt-4o", "stream": True, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}),
        headers={"content-type": "application/json", "x-demo-hold": hold, "authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert resp.readline().startswith(b"data: ")  # the first event arrived; the rest is held
    return conn, resp.headers["x-extproc-decision-id"]


def test_a_request_whose_end_never_reaches_settlement_is_swept_once(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, config_text=DEMO_CONFIG.read_text().split("\nquotas:")[0] + POLICY)
    try:
        tenant, token = "swept-co", stack.token(tenant="swept-co", plan="sweep-test")
        conn, decision_id = _held_stream(stack, token, "sweep-1")
        leases, reserved, opened = _state(stack, tenant)
        assert (leases, opened) == (1, 1) and reserved > 500
        assert stack.request("GET", "/v1/models", token=token).status == 429  # the one slot is taken
        # The sidecar dies mid-request and is away when the request ends: nobody frees the
        # lease, and Envoy's access-log entry for the request has nowhere to go.
        stack.children[0].signal(signal.SIGKILL)
        stack.children[0].proc.wait(5)
        conn.close()
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{stack.ports.pool_b}/__demo/release/sweep-1", method="POST"), timeout=5).read()
        time.sleep(0.5)
        assert _state(stack, tenant)[0] == 1  # still pinned
        admin = stack.sidecar_admin  # type: ignore[attr-defined]
        restarted = Child("sidecar-restarted", sidecar_command(
            stack.config_path, stack.sidecars, admin, "--redis-url", stack.redis.url), tmp_path)  # type: ignore[union-attr]
        stack.children.append(restarted)
        wait_http(f"http://{admin}/readyz", proc=restarted.proc)
        # The sweeper settles it (sweep_after_seconds: 2): the slot is free, the admission closed.
        _wait(lambda: _state(stack, tenant)[0::2] == (0, 0), "the admission was never swept")
        _wait(lambda: len(_records(stack, tenant)) == 1, "no usage record")
        record = _records(stack, tenant)[0]
        assert record.decision_id == decision_id
        assert end_name(record) == "unreported" and SOURCE_NAMES[record.source] == "estimated"
        # The counters keep the estimate, and the record says so: they reconcile to the token.
        assert record.charged_tokens == reserved == _state(stack, tenant)[1]
        assert "settled by the sweeper" in restarted.log()
        deadline = time.monotonic() + 15
        while (resp := stack.request("GET", "/v1/models", token=token)).status != 200:
            assert resp.status == 503 and time.monotonic() < deadline, resp.body  # Envoy reconnecting
            time.sleep(0.2)
        time.sleep(2.5)  # a later sweep (or a late access-log entry) never counts it twice
        assert len(_records(stack, tenant)) == 1 + 1  # and the GET's own record
        assert _state(stack, tenant)[1] == reserved
    finally:
        stack.stop()
