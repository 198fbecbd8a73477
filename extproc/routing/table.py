"""A routing table: ordered entries matching (workload class, model, tenant) → upstream pool.

Entries are tried in order and the first whose every set field matches wins. A
model pattern is an exact name or a prefix ending in ``*`` (``gpt-4o*``). Lookups
do no I/O: the table is an immutable snapshot swapped by reference on reload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from extproc.domain.classify import WorkloadClass


@dataclass(frozen=True, slots=True)
class RouteEntry:
    id: str
    pool: str
    workload: WorkloadClass | None = None
    model: str | None = None
    tenant: str | None = None

    def matches(self, workload: WorkloadClass, model: str | None, tenant: str) -> bool:
        if self.workload is not None and workload is not self.workload:
            return False
        if self.tenant is not None and tenant != self.tenant:
            return False
        if self.model is not None:
            if model is None:
                return False
            if self.model.endswith("*"):
                return model.startswith(self.model[:-1])
            return model == self.model
        return True


class RouteTable:
    """Immutable, ordered routing entries plus the set of pools Envoy knows."""

    def __init__(self, entries: Sequence[RouteEntry], pools: Sequence[str]) -> None:
        self.entries = tuple(entries)
        self.pools = frozenset(pools)
        # Exact-model entries indexed for the common case; the rest are scanned in order.
        self._by_model: dict[str, tuple[RouteEntry, ...]] = {}
        exact = {e.model for e in self.entries if e.model and not e.model.endswith("*")}
        for model in exact:
            self._by_model[model] = tuple(
                e for e in self.entries if e.model is None or e.model.endswith("*") or e.model == model
            )
        self._no_exact = tuple(e for e in self.entries if e.model is None or e.model.endswith("*"))

    def lookup(self, workload: WorkloadClass, model: str | None, tenant: str) -> RouteEntry | None:
        candidates = self._by_model.get(model, self._no_exact) if model else self._no_exact
        for entry in candidates:
            if entry.matches(workload, model, tenant):
                return entry
        return None
