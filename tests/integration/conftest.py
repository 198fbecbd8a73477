from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.support import free_port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("cluster")
    servers = []
    for i in range(3):
        port = free_port()
        # The bus port defaults to port + 10000, inside the kernel's ephemeral range, where an
        # outgoing connection may hold it: pick it like any other port.
        servers.append(RedisServer(base / f"n{i}", port, "--cluster-enabled", "yes",
                                   "--cluster-port", str(free_port()),
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
