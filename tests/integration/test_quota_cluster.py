"""The same admission and settlement scripts on a three-node Redis Cluster (hash-tagged keys)."""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.identity import Identity
from extproc.domain.params import read_params
from extproc.quota.plan import plan
from extproc.quota.redis_client import client_from_url
from extproc.quota.redis_store import RedisQuotaStore
from extproc.quota.spec import Budget, QuotaPolicy, QuotaSettings, Rate

CHAT = Classification(WorkloadClass.INFERENCE, "gpt-4o", "r")
BODY = read_params({"model": "gpt-4o", "messages": "hello", "max_tokens": 10})


async def test_admission_is_exact_and_settles_on_a_cluster(redis_cluster_url: str) -> None:
    cluster = redis_cluster_url
    store = RedisQuotaStore(client_from_url(cluster, 2.0), 2.0)
    assert isinstance(store.client, RedisCluster)
    await store.start()
    s = QuotaSettings((QuotaPolicy("rpm", requests=Rate(20, 60_000, 20)),
                       QuotaPolicy("day", budget=Budget(10**6, "day")),
                       QuotaPolicy("cc", concurrency=50)))
    try:
        # Many tenants, so their keys spread over all three nodes' slots.
        tenants = [Identity(tenant=f"tenant-{i}", plan="pro") for i in range(12)]
        for ident in tenants:
            p = plan(s, ident, CHAT, "r1", BODY)
            results = await asyncio.gather(*(store.admit(p, f"{ident.tenant}-{j}") for j in range(40)))
            assert sum(r.admitted for r in results) == 20, ident.tenant
            admitted = [r for r in results if r.admitted]
            assert await store.settle(p, f"{ident.tenant}-0", admitted[0], actual_tokens=5)
            assert not await store.settle(p, f"{ident.tenant}-0", admitted[0], actual_tokens=5)
        nodes = store.client.get_nodes()
        assert len(nodes) == 3
        # SCRIPT FLUSH on every node: the next calls reload the scripts without an error.
        for node in nodes:
            await store.client.execute_command("SCRIPT FLUSH", target_nodes=node)
        p = plan(s, Identity(tenant="after-flush", plan="pro"), CHAT, "r1", BODY)
        assert (await store.admit(p, "x")).admitted
    finally:
        await store.client.aclose()
