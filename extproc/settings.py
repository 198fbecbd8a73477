"""Process settings (not policy): where to listen, how many workers, how long to drain.

Read once at start-up from the command line, with ``EXTPROC_*`` environment
variables as defaults. Policy (rules, routes) lives in the config file instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    config_path: Path
    listen: tuple[str, ...] = ("127.0.0.1:50051",)
    admin: str | None = "127.0.0.1:9464"
    workers: int = 1
    drain_seconds: float = 10.0
    shutdown_delay: float = 0.0
    reload_interval: float = 1.0
    log_level: str = "info"
    redis_url: str | None = None
    redis_timeout_ms: int = 50
    metrics_tenant_cap: int = 100
    log_allow_sample: float = 0.0
    #: Safety-net check of the live routing table (pub/sub announces new versions at once).
    routes_poll_seconds: float = 2.0
    #: Bearer token for the admin HTTP's records API (/v1/…); None: that API is off.
    admin_token: str | None = None

    def for_worker(self, index: int) -> Settings:
        """Worker ``index`` of N: TCP ports offset by index; sockets get a ``-index`` suffix."""
        if self.workers == 1:
            return replace(self, workers=1)
        admin = offset_address(self.admin, index) if self.admin else None
        return replace(
            self, listen=tuple(offset_address(a, index) for a in self.listen), admin=admin, workers=1
        )


def offset_address(address: str, index: int) -> str:
    if address.startswith("unix:"):
        path = Path(address[len("unix:"):])
        return f"unix:{path.with_name(f'{path.stem}-{index}{path.suffix}')}"
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + index}"


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def env_default(name: str, default: str) -> str:
    return os.environ.get(f"EXTPROC_{name}", default)
