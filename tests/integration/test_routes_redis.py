"""The live routing table against a real redis-server: seed, publish, pub/sub, rejection, outage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from extproc.config.loader import parse
from extproc.config.model import Snapshot
from extproc.domain.classify import WorkloadClass as W
from extproc.quota.redis_client import client_from_url
from extproc.routing.document import canonical_json, load_table
from extproc.routing.store import Outcome, RouteStore
from extproc.routing.sync import RouteSync
from tests.redis_server import RedisServer

POLICY = b"""
routing:
  pools: [pool-a, pool-b]
  routes:
    - {id: seed-inference, class: inference, pool: pool-a}
"""
SNAPSHOT = Snapshot(parse(POLICY, "policy.yaml"))
POOLS = ("pool-a", "pool-b")


def table_json(pool: str, route_id: str = "live") -> str:
    return canonical_json(load_table({"routes": [{"id": route_id, "class": "inference", "pool": pool}]},
                                     "t", POOLS, 1))


def routed_pool(sync: RouteSync) -> str | None:
    route = sync.current.lookup(W.INFERENCE, None, "acme")
    return route.pool if route else None


async def eventually(check: Callable[[], bool | Awaitable[bool]], seconds: float = 5.0) -> None:
    """Bounded wait for something asynchronous (a pub/sub delivery); fails after ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RouteStore]:
    client = client_from_url(redis_server.url, 2.0)
    yield RouteStore(client, keep=3)
    await client.aclose()


async def test_first_sidecar_seeds_from_the_policy_file_and_others_find_it(store: RouteStore) -> None:
    first, second = RouteSync(store, SNAPSHOT), RouteSync(store, SNAPSHOT)
    assert first.current.origin.source == "config" and routed_pool(first) == "pool-a"
    assert await first.refresh() is True
    assert (first.current.version, first.current.origin.source, first.current.origin.author) == (1, "redis", "seed")
    assert await second.refresh() is True
    assert second.current.version == 1 and second.current.origin.epoch == first.current.origin.epoch
    assert (await store.head())[0] == 1  # seeded once
    assert first.status()["in_sync"] is True


async def test_publish_is_versioned_and_conflicting_writers_are_refused(store: RouteStore) -> None:
    one = await store.publish(table_json("pool-a"), "alice", "initial", expected="absent")
    assert (one.outcome, one.version) == (Outcome.PUBLISHED, 1)
    again = await store.publish(table_json("pool-b"), "seed", "seed", expected="absent")
    assert again.outcome is Outcome.EXISTS and (await store.get()).document == json.loads(table_json("pool-a"))  # type: ignore[union-attr]
    two = await store.publish(table_json("pool-b"), "bob", "move to b", expected=1)
    stale = await store.publish(table_json("pool-a"), "carol", "based on v1", expected=1)
    assert (two.outcome, two.version) == (Outcome.PUBLISHED, 2)
    assert (stale.outcome, stale.version) == (Outcome.CONFLICT, 2)
    for i in range(3, 6):
        await store.publish(table_json("pool-a", f"r{i}"), "bob", f"change {i}", expected=None)
    history = await store.history(10)
    assert [h.version for h in history] == [5, 4, 3]  # keep=3: older versions trimmed
    assert await store.get(1) is None
    assert history[-1].previous == 2 and history[0].author == "bob" and history[0].reason == "change 5"
    assert history[0].created_at > 1.7e9


async def test_new_version_arrives_by_pubsub_and_invalid_one_is_rejected(store: RouteStore) -> None:
    # A poll interval far beyond the wait below: only pub/sub can deliver in time.
    sync = RouteSync(store, SNAPSHOT, poll_seconds=60)
    task = asyncio.create_task(sync.run())
    try:
        await eventually(lambda: sync.current.version == 1 and sync.state.pubsub)
        await store.publish(table_json("pool-b"), "ops", "move inference", expected=1)
        await eventually(lambda: sync.current.version == 2)
        assert routed_pool(sync) == "pool-b"
        # A table naming a pool this sidecar's Envoy does not know (published by a writer that
        # skipped validation): rejected, and the last good table stays.
        bad = json.dumps({"routes": [{"id": "x", "pool": "pool-zzz"}]})
        await store.publish(bad, "mallory", "typo", expected=2)
        await eventually(lambda: sync.state.rejected_version == 3)
        assert sync.current.version == 2 and routed_pool(sync) == "pool-b"
        assert "unknown pool 'pool-zzz'" in sync.status()["rejected_errors"][0]
        await store.publish(table_json("pool-a"), "ops", "fixed", expected=3)
        await eventually(lambda: sync.current.version == 4)
        assert routed_pool(sync) == "pool-a"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_redis_outage_keeps_the_last_good_table(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    client = client_from_url(server.url, 0.5)
    sync = RouteSync(RouteStore(client), SNAPSHOT, poll_seconds=60)
    try:
        await sync.refresh()
        await sync.store.publish(table_json("pool-b"), "ops", "b", expected=1)
        assert await sync.refresh() is True
        server.stop()
        assert await sync.refresh() is False
        status = sync.status()
        assert status["in_sync"] is False and status["version"] == 2 and status["last_error"]
        assert routed_pool(sync) == "pool-b"
        # Restarted empty (no persistence): a new history. The sidecar re-seeds and follows it.
        server = RedisServer(tmp_path / "r2", server.port).start()
        await eventually(sync.refresh)
        assert sync.current.version == 1 and routed_pool(sync) == "pool-a"
        assert sync.status()["in_sync"] is True
    finally:
        await client.aclose()
        server.stop()


async def test_versions_never_go_backwards_within_a_history(store: RouteStore) -> None:
    sync = RouteSync(store, SNAPSHOT)
    await sync.refresh()
    await store.publish(table_json("pool-b"), "ops", "b", expected=1)
    await sync.refresh()
    # Someone rewinds the version counter by hand: the sidecar keeps its newer table.
    await store.client.set("{extproc:routes}:version", 1)
    assert await sync.refresh() is False
    assert sync.current.version == 2 and routed_pool(sync) == "pool-b"


async def test_routing_table_on_redis_cluster(redis_cluster_url: str) -> None:
    client = client_from_url(redis_cluster_url, 2.0)
    try:
        await client.delete("{extproc:routes}:version", "{extproc:routes}:tables", "{extproc:routes}:log",
                            "{extproc:routes}:epoch")
        sync = RouteSync(RouteStore(client), SNAPSHOT)
        assert await sync.refresh() is True and sync.current.version == 1
        await sync.store.publish(table_json("pool-b"), "ops", "b", expected=1)
        assert await sync.refresh() is True and routed_pool(sync) == "pool-b"
    finally:
        await client.aclose()
