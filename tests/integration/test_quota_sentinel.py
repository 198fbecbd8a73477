"""A redis+sentinel:// URL: the store finds the master through a real Sentinel."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.identity import Identity
from extproc.quota.plan import plan
from extproc.quota.redis_client import client_from_url
from extproc.quota.redis_store import RedisQuotaStore
from extproc.quota.spec import QuotaPolicy, QuotaSettings, Rate
from tests.support import free_port


async def test_admission_through_sentinel(redis_server, tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor demo 127.0.0.1 {redis_server.port} 1\n"
                    "sentinel down-after-milliseconds demo 5000\n")
    binary = shutil.which("redis-server")
    assert binary
    sentinel = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        store = RedisQuotaStore(client_from_url(f"redis+sentinel://127.0.0.1:{port}/demo", 1.0), 1.0)
        s = QuotaSettings((QuotaPolicy("rpm", requests=Rate(3, 60_000, 3)),))
        p = plan(s, Identity(tenant="acme"), Classification(WorkloadClass.INFERENCE, "m", "r"), None)
        deadline = time.monotonic() + 10
        while True:
            try:
                first = await store.admit(p, "a")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        results = [first] + [await store.admit(p, f"x{i}") for i in range(4)]
        assert [r.admitted for r in results] == [True, True, True, False, False]
        await store.client.aclose()
    finally:
        sentinel.terminate()
        sentinel.wait(5)


def test_sentinel_url_needs_a_service_name() -> None:
    with pytest.raises(ValueError, match="service name"):
        client_from_url("redis+sentinel://127.0.0.1:26379", 0.1)
