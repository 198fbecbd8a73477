"""A redis.asyncio client from a URL: single node, Sentinel or Cluster.

- ``redis://[:password@]host:port/db`` and ``rediss://`` (TLS): one node.
- ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]``: the master
  that the Sentinels name (fails over with them).
- ``redis+cluster://[:password@]host:port[,host:port...]``: Redis Cluster. Every key of one
  tenant carries the same hash tag, so one script runs on one node unchanged.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel


def _hosts(netloc: str) -> tuple[str | None, list[tuple[str, int]]]:
    auth, _, hosts = netloc.rpartition("@")
    password = unquote(auth.partition(":")[2]) if auth else None
    out = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        out.append((host.strip("[]") or "127.0.0.1", int(port or 6379)))
    return password or None, out


def client_from_url(url: str, timeout_s: float) -> Any:
    common: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                              "health_check_interval": 0, "retry_on_timeout": False}
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        # Blocking pool: past max_connections a call waits (bounded by the call's own
        # timeout) instead of failing at once and counting against the breaker.
        pool = BlockingConnectionPool.from_url(url, max_connections=512, timeout=timeout_s * 4, **common)
        return Redis(connection_pool=pool)
    if parts.scheme == "redis+sentinel":
        password, hosts = _hosts(parts.netloc)
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel URL needs the service name: redis+sentinel://h:26379/mymaster")
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs={"socket_timeout": timeout_s}, password=password,
                            db=db, **common)
        return sentinel.master_for(path[0])
    if parts.scheme == "redis+cluster":
        password, hosts = _hosts(parts.netloc)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in hosts], password=password,
                            socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")


def quota_client(url: str, timeout_s: float) -> Any:
    """The quota store's client: the lean EVALSHA client (``quota.resp``) for a single node,
    redis-py for Sentinel, Cluster, TLS and Unix sockets, or everywhere with
    ``EXTPROC_QUOTA_CLIENT=redis-py`` (a way back, and the perf A/B)."""
    from extproc.quota.resp import LeanRedis, supports

    if supports(url) and os.environ.get("EXTPROC_QUOTA_CLIENT", "lean") != "redis-py":
        # The connection attempt outlives one call's timeout (it is shared and shielded).
        return LeanRedis(url, max(1.0, timeout_s))
    return client_from_url(url, timeout_s)
