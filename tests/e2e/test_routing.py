"""The live routing table through a real Envoy and a two-process sidecar: fallbacks, aliases,
updates under load, invalid tables and a Redis outage."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from extproc.cli import main as cli
from tests.e2e.stack import Response, Stack, start_stack

pytestmark = pytest.mark.e2e

BASE = """
routes:
  - {id: inference, class: inference, pool: pool-a}
  - {id: mini, model: gpt-4o-mini, pool: pool-a, fallbacks: [pool-b]}
  - {id: big, model: gpt-4o, pool: pool-a}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Poll interval far beyond any wait here: new versions must arrive by pub/sub.
    s = start_stack(tmp_path_factory.mktemp("routing"), workers=2, sidecar_args=("--routes-poll-seconds", "60"))
    yield s
    s.stop()


def apply(stack: Stack, table: str, reason: str) -> int:
    path = stack.dir / f"table-{time.monotonic_ns()}.yaml"
    path.write_text(table)
    code = cli(["routes", "apply", str(path), "--reason", reason, "--config", str(stack.config_path),
                "--redis-url", stack.redis.url])  # type: ignore[union-attr]
    assert code == 0
    return int(redis_cli(stack, "GET", "{extproc:routes}:version"))


def statuses(stack: Stack) -> list[dict[str, Any]]:
    out = []
    for admin in stack.sidecar_admins:  # type: ignore[attr-defined]
        with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as r:
            out.append(json.loads(r.read()))
    return out


def wait_all_on(stack: Stack, version: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while {s["routes"]["version"] for s in statuses(stack)} != {version}:
        assert time.monotonic() < deadline, f"not every worker on version {version}: {statuses(stack)}"
        time.sleep(0.05)


def seen(resp: Response) -> dict[str, str]:
    return json.loads(resp.headers["x-demo-extproc-headers"])


def test_every_worker_serves_the_seed_then_applied_tables(stack: Stack) -> None:
    wait_all_on(stack, 1)  # seeded once from the policy file, by whichever worker came first
    assert all(s["routes"]["source"] == "redis" and s["routes"]["in_sync"] for s in statuses(stack))
    wait_all_on(stack, apply(stack, BASE, "fallback tests"))


def test_fallback_pool_answers_when_the_first_fails(stack: Stack) -> None:
    fail_a = {"x-demo-status": "503", "x-demo-status-pools": "pool-a"}
    resp = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini"}, headers=fail_a)
    assert resp.status == 200 and resp.headers["x-demo-pool"] == "pool-b"
    assert seen(resp)["x-extproc-upstream"] == "pool-a~pool-b" and seen(resp)["x-extproc-route"] == "mini"
    assert "x-extproc-failover" not in seen(resp)  # a route selector, removed before the upstream
    deadline = time.monotonic() + 10
    while not (logged := [e for e in stack.access_log() if e["decision_id"] == resp.headers["x-extproc-decision-id"]]):
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.1)
    assert (logged[0]["upstream"], logged[0]["route"], logged[0]["route_version"]) == ("pool-a~pool-b", "mini", "2")
    assert (logged[0]["upstream_cluster"], logged[0]["attempts"]) == ("pool-a~pool-b", 2)
    assert logged[0]["upstream_host"].endswith(f":{stack.ports.pool_b}")  # the pool that answered
    limited = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini"},
                            headers={"x-demo-status": "429", "x-demo-status-pools": "pool-a"})
    assert limited.status == 200 and limited.headers["x-demo-pool"] == "pool-b"
    # No fallback on this entry: the client gets pool-a's failure, nothing retried elsewhere.
    alone = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o"}, headers=fail_a)
    assert alone.status == 503 and alone.headers["x-demo-pool"] == "pool-a"
    # Every pool of the chain fails: the last one's answer, after exactly one retry.
    both = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini"},
                         headers={"x-demo-status": "503"})
    assert both.status == 503 and both.headers["x-demo-pool"] == "pool-b"
    assert stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini"}).headers["x-demo-pool"] == "pool-a"


def test_fallback_on_the_ext_authz_listener(stack: Stack) -> None:
    resp = stack.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini"}, port=stack.ports.ext_authz,
                         headers={"x-demo-status": "503", "x-demo-status-pools": "pool-a"})
    assert resp.status == 200 and resp.headers["x-demo-pool"] == "pool-b"


@pytest.mark.parametrize("listener", ["ext_proc", "ext_authz"])
def test_alias_and_model_rewrite(stack: Stack, listener: str) -> None:
    version = apply(stack, BASE + """
  - {id: pinned, model: gpt-4o-2024-08-06, pool: pool-b, rewrite_model: gpt-4o-2024-11-20}
aliases: {gpt-4o-latest: gpt-4o-2024-08-06}
""", f"alias test {listener}")
    wait_all_on(stack, version)
    port = stack.ports.ext_proc if listener == "ext_proc" else stack.ports.ext_authz
    resp = stack.chat("gpt-4o-latest", port=port)
    assert resp.status == 200 and resp.headers["x-demo-pool"] == "pool-b"
    upstream = seen(resp)
    assert upstream["x-extproc-route"] == "pinned" and upstream["x-extproc-route-version"] == str(version)
    assert upstream["x-extproc-model"] == "gpt-4o-latest"
    assert upstream["x-extproc-model-served"] == "gpt-4o-2024-11-20"
    # ext_proc rewrites the body; ext_authz cannot, the upstream only gets the header.
    expected = "gpt-4o-2024-11-20" if listener == "ext_proc" else "gpt-4o-latest"
    assert resp.json()["model"] == expected


def test_table_updates_under_load_drop_nothing_and_arrive_within_a_second(stack: Stack) -> None:
    start = apply(stack, BASE, "before the load")
    wait_all_on(stack, start)
    results: list[tuple[float, int, int]] = []  # (sent at, status, route version)
    stop = threading.Event()

    def client() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            resp = stack.chat("gpt-4o-mini")
            version = int(seen(resp)["x-extproc-route-version"]) if resp.status == 200 else -1
            results.append((sent, resp.status, version))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    applied: list[tuple[float, int]] = []
    try:
        time.sleep(1.0)
        for i, table in enumerate([
            BASE.replace("pool: pool-a, fallbacks: [pool-b]", "pool: pool-b, fallbacks: [pool-a]"),
            BASE.replace("pool: pool-a, fallbacks: [pool-b]", "pools: [{pool: pool-a, weight: 50}, {pool: pool-b, weight: 50}]"),
            BASE + "draining: [pool-b]\n",
        ]):
            t0 = time.monotonic()
            applied.append((t0, apply(stack, table, f"change {i} under load")))
            time.sleep(1.5)
        # A table a careless writer put straight into Redis, naming a pool Envoy does not know.
        bad = json.dumps({"routes": [{"id": "mini", "model": "gpt-4o-mini", "pool": "pool-zzz"}]})
        last_good = applied[-1][1]
        rejected = last_good + 1
        redis_cli(stack, "EVAL", "redis.call('SET', KEYS[1], ARGV[1]); "
                  "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]); redis.call('PUBLISH', 'extproc:routes', ARGV[1])",
                  "2", "{extproc:routes}:version", "{extproc:routes}:tables", str(rejected),
                  json.dumps({"version": rejected, "epoch": statuses(stack)[0]["routes"]["epoch"], "created_at": 0,
                              "previous": last_good, "meta": {"author": "careless"}, "table": json.loads(bad)}))
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(40)
    assert results, "no requests were made"
    statuses_seen = {status for _, status, _ in results}
    assert statuses_seen == {200}, f"failed requests during table updates: {statuses_seen}"
    for t0, version in applied:
        late = [v for sent, _, v in results if sent > t0 + 1.0]
        assert late and min(late) >= version, f"version {version} not served by every worker within 1 s"
    assert rejected not in {v for _, _, v in results}
    for s in statuses(stack):
        assert s["routes"]["version"] == last_good and s["routes"]["rejected_version"] == rejected
        assert "unknown pool 'pool-zzz'" in s["routes"]["rejected_errors"][0]
    print(f"{len(results)} requests, all 200, across {len(applied)} table updates and one rejected table")


def redis_cli(stack: Stack, *args: str) -> str:
    import subprocess

    out = subprocess.run(["redis-cli", "-p", str(stack.redis.port), *args],  # type: ignore[union-attr]
                         capture_output=True, text=True, check=True, timeout=10)
    return out.stdout


def test_redis_outage_keeps_serving_the_last_good_table(stack: Stack) -> None:
    version = statuses(stack)[0]["routes"]["version"]
    stack.redis.stop()  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while any(s["routes"]["in_sync"] for s in statuses(stack)):
        # The 60 s poll would be too slow: pub/sub's connection loss triggers a check at once.
        assert time.monotonic() < deadline, "Redis loss not noticed"
        time.sleep(0.1)
    for _ in range(10):
        resp = stack.chat("gpt-4o-mini")
        assert resp.status == 200 and seen(resp)["x-extproc-route-version"] == str(version)
    assert all(s["routes"]["last_error"] for s in statuses(stack))
