"""The same admission and settlement scripts on a three-node Redis Cluster (hash-tagged keys)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.identity import Identity
from extproc.quota.plan import plan
from extproc.quota.redis_client import client_from_url
from extproc.quota.redis_store import RedisQuotaStore
from extproc.quota.spec import Budget, QuotaPolicy, QuotaSettings, Rate
from tests.redis_server import RedisServer
from tests.support import free_port

CHAT = Classification(WorkloadClass.INFERENCE, "gpt-4o", "r")
BODY = {"model": "gpt-4o", "messages": "hello", "max_tokens": 10}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("cluster")
    servers = []
    for i in range(3):
        port = free_port()
        while port + 10000 > 65535:
            port = free_port()
        servers.append(RedisServer(base / f"n{i}", port, "--cluster-enabled", "yes",
                                   "--cluster-config-file", f"nodes-{port}.conf",
                                   "--cluster-node-timeout", "2000").start())
    try:
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli (Debian redis-tools) is needed for the cluster test"
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{s.port}" for s in servers],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True,
                       timeout=60)
        deadline = time.monotonic() + 20
        while b"cluster_state:ok" not in subprocess.run(
                [cli, "-p", str(servers[0].port), "cluster", "info"], capture_output=True).stdout:
            assert time.monotonic() < deadline, "cluster did not converge"
            time.sleep(0.2)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    finally:
        for s in servers:
            s.stop()


async def test_admission_is_exact_and_settles_on_a_cluster(cluster: str) -> None:
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
