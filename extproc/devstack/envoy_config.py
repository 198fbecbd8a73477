"""Render the Envoy bootstrap templates in ``envoy/`` with concrete ports and sidecar endpoints."""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from extproc.routing.table import failover_chains, failover_cluster

ENVOY_DIR = Path(__file__).resolve().parents[2] / "envoy"
GATEWAY_TEMPLATE = ENVOY_DIR / "gateway.yaml"
AUTH_GUARD_LUA = ENVOY_DIR / "auth_guard.lua"
USAGE_LUA = ENVOY_DIR / "usage.lua"


@dataclass(frozen=True)
class AuthGuard:
    """The auth guard's thresholds (envoy/README.md "Auth guard"): a source address with
    ``failures`` 401s within ``window_s`` seconds (per Envoy worker) is limited."""

    failures: int = 20
    window_s: int = 10

    def lua(self) -> str:
        """The Lua source with its settings, as a JSON string (a YAML scalar)."""
        settings = f"local MAX_FAILS, WINDOW_S = {int(self.failures)}, {int(self.window_s)}\n"
        return json.dumps(settings + AUTH_GUARD_LUA.read_text())


@dataclass(frozen=True)
class EnvoyPorts:
    ext_proc: int = 8080
    ext_authz: int = 8081
    admin: int = 9901
    pool_a: int = 9501
    pool_b: int = 9502
    ops: int = 9902


def sidecar_endpoints(addresses: Sequence[str]) -> str:
    """``127.0.0.1:50051`` / ``unix:/path`` → an inline (flow-style) ``lb_endpoints`` list."""
    items = []
    for address in addresses:
        if address.startswith("unix:"):
            sock: dict[str, object] = {"pipe": {"path": address[len("unix:"):]}}
        else:
            host, _, port = address.rpartition(":")
            sock = {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}
        items.append({"endpoint": {"address": sock}})
    return json.dumps(items)


def pool_clusters(pools: dict[str, tuple[str, int]], max_fallbacks: int = 1) -> str:
    """Upstream pool clusters and their failover clusters, one flow-style list item per line
    (indented for ``clusters:``)."""
    clusters: list[dict[str, object]] = []
    for name, (host, port) in pools.items():
        clusters.append({
            "name": name, "type": "STRICT_DNS", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]},
        })
    for chain in failover_chains(list(pools), max_fallbacks):
        # An aggregate cluster: its member clusters become priorities 0, 1, ... in order.
        clusters.append({
            "name": failover_cluster(chain), "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED",
            "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": list(chain)}},
        })
    return "\n".join(f"  - {json.dumps(cluster)}" for cluster in clusters)


def render(
    sidecars: Sequence[str],
    ports: EnvoyPorts | None = None,
    template: Path = GATEWAY_TEMPLATE,
    buffer_limit_bytes: int = (1 << 20) + (64 << 10),
    message_timeout: str = "1s",
    route_timeout: str = "300s",
    access_log_path: str = "/dev/stdout",
    listen_address: str = "127.0.0.1",
    otlp: tuple[str, int] = ("127.0.0.1", 4317),
    trace_sampling_percent: float = 100.0,
    pools: dict[str, tuple[str, int]] | None = None,
    max_fallbacks: int = 1,
    request_timeout: str = "60s",
    auth_guard: AuthGuard | None = None,
) -> str:
    """The gateway bootstrap. ``pools`` default to the demo's pool-a and pool-b on loopback."""
    p = asdict(ports or EnvoyPorts())
    values: dict[str, object] = {
        "LISTEN_ADDRESS": listen_address,
        "EXT_PROC_PORT": p["ext_proc"],
        "EXT_AUTHZ_PORT": p["ext_authz"],
        "ADMIN_PORT": p["admin"],
        "OPS_PORT": p["ops"],
        "POOL_CLUSTERS": pool_clusters(pools or {"pool-a": ("127.0.0.1", p["pool_a"]),
                                                 "pool-b": ("127.0.0.1", p["pool_b"])}, max_fallbacks),
        "MAX_FALLBACKS": max(1, max_fallbacks),
        "SIDECAR_ENDPOINTS": sidecar_endpoints(sidecars),
        "BUFFER_LIMIT_BYTES": buffer_limit_bytes,
        "MESSAGE_TIMEOUT": message_timeout,
        "ROUTE_TIMEOUT": route_timeout,
        "ACCESS_LOG_PATH": access_log_path,
        "OTLP_HOST": otlp[0],
        "OTLP_PORT": otlp[1],
        "TRACE_SAMPLING_PERCENT": trace_sampling_percent,
        "REQUEST_TIMEOUT": request_timeout,
        "AUTH_GUARD_LUA": (auth_guard or AuthGuard()).lua(),
        "USAGE_LUA": json.dumps(USAGE_LUA.read_text()),
    }
    return string.Template(template.read_text()).substitute(values)
