"""The live routing table in Redis: versioned, written atomically as a whole, with who/when/why.

Keys (one hash tag, so the publish script runs on one node of a Redis Cluster too):

- ``{extproc:routes}:version``: the current version, an integer that only grows;
- ``{extproc:routes}:tables``: hash, version → record JSON ``{version, epoch, created_at,
  previous, meta: {author, reason, digest, rollback_of?}, table: {...}}``;
- ``{extproc:routes}:log``: the versions kept, newest first (older records are deleted);
- ``{extproc:routes}:epoch``: a random id set with the first version. If the store is
  wiped and re-seeded, versions restart at 1 under a new epoch, and sidecars know
  the history changed instead of refusing a "smaller" version forever.

Every publish also sends the new version on the pub/sub channel ``extproc:routes``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Any

from extproc.config.model import PolicyConfig
from extproc.routing.document import load_table
from extproc.routing.table import RoutingTable, TableOrigin, TableSpec

PUBLISH_LUA = resources.files("extproc.routing").joinpath("lua/publish.lua").read_text()
_TAG = "{extproc:routes}"
VERSION_KEY, TABLES_KEY, LOG_KEY, EPOCH_KEY = (f"{_TAG}:{k}" for k in ("version", "tables", "log", "epoch"))
CHANNEL = "extproc:routes"
#: Versions kept for ``routes history`` and ``routes rollback``.
KEEP_VERSIONS = 100


def digest(table_json: str) -> str:
    return hashlib.sha256(table_json.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class StoredTable:
    version: int
    epoch: str
    created_at: float
    previous: int
    author: str
    reason: str
    digest: str
    document: dict[str, Any]
    rollback_of: int | None = None

    @classmethod
    def from_record(cls, raw: bytes | str) -> StoredTable:
        rec = json.loads(raw)
        meta = rec["meta"]
        return cls(int(rec["version"]), str(rec["epoch"]), float(rec["created_at"]), int(rec["previous"]),
                   str(meta.get("author", "")), str(meta.get("reason", "")), str(meta.get("digest", "")),
                   rec["table"], meta.get("rollback_of"))

    def spec(self, config: PolicyConfig) -> TableSpec:
        """The stored document validated against a policy file's pools. Raises ``ConfigError``."""
        return load_table(self.document, f"routing table version {self.version}", config.pools,
                          config.max_fallbacks)

    def table(self, config: PolicyConfig) -> RoutingTable:
        """The routing table to serve (validated as ``spec``), with where it came from."""
        origin = TableOrigin(self.version, "redis", self.epoch, self.author, self.reason, self.created_at)
        return RoutingTable(self.spec(config), origin)


class Outcome(Enum):
    PUBLISHED = 1
    EXISTS = 0  # a seed found a table already there
    CONFLICT = -1  # someone published since the caller read the version it expected


@dataclass(frozen=True, slots=True)
class PublishResult:
    outcome: Outcome
    version: int
    epoch: str


class RouteStore:
    """Reads and publishes table versions. ``client``: a redis.asyncio client (any topology)."""

    def __init__(self, client: Any, keep: int = KEEP_VERSIONS) -> None:
        self.client = client
        self.keep = keep
        self._publish = client.register_script(PUBLISH_LUA)

    async def head(self) -> tuple[int, str]:
        """(current version, epoch); (0, "") when no table was ever published."""
        version, epoch = await self.client.mget([VERSION_KEY, EPOCH_KEY])
        return int(version or 0), (epoch.decode() if isinstance(epoch, bytes) else epoch or "")

    async def get(self, version: int | None = None) -> StoredTable | None:
        """One version (default: the current one); None if it does not exist (or was trimmed)."""
        if version is None:
            version = (await self.head())[0]
            if not version:
                return None
        raw = await self.client.hget(TABLES_KEY, str(version))
        return StoredTable.from_record(raw) if raw else None

    async def history(self, limit: int = 20) -> list[StoredTable]:
        versions = await self.client.lrange(LOG_KEY, 0, max(0, limit - 1))
        if not versions:
            return []
        raws = await self.client.hmget(TABLES_KEY, versions)
        return [StoredTable.from_record(raw) for raw in raws if raw]

    async def publish(self, table_json: str, author: str, reason: str, expected: int | str | None,
                      rollback_of: int | None = None) -> PublishResult:
        """``expected``: the version the caller read (None: any; "absent": seed only if empty)."""
        meta: dict[str, Any] = {"author": author, "reason": reason, "digest": digest(table_json)}
        if rollback_of is not None:
            meta["rollback_of"] = rollback_of
        status, version, epoch = await self._publish(
            keys=[VERSION_KEY, TABLES_KEY, LOG_KEY, EPOCH_KEY],
            args=["" if expected is None else str(expected), json.dumps(meta, separators=(",", ":")),
                  table_json, self.keep, CHANNEL, secrets.token_hex(8)],
        )
        return PublishResult(Outcome(int(status)), int(version),
                             epoch.decode() if isinstance(epoch, bytes) else str(epoch))
