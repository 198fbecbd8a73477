"""The routing table: (tenant or plan, workload class, model) → upstream pool(s). Pure, no I/O.

Matching (README "Routing"): the request's model is first resolved through the
table's aliases (``gpt-4o`` → ``gpt-4o-2024-08-06``), then the **most specific**
matching entry wins, compared field by field in this order:

1. who: ``tenant`` beats ``plan`` beats neither;
2. model: an exact name beats a prefix (``gpt-4o*``), a longer prefix beats a shorter
   one, any prefix beats no model;
3. class: an entry naming the workload class beats one that does not.

Two entries with the same criteria are refused when the table is validated, so
exactly one entry wins. An entry spreads traffic over weighted pools (draining
pools get none) and may name ordered fallbacks; the chosen pool plus its fallbacks
is one Envoy cluster (an aggregate cluster named ``pool~fallback``) that Envoy
retries through on 5xx/429 (envoy/README.md "Fallbacks").

A table is an immutable snapshot: lookups read precomputed tuples, and a new
version is swapped in by reference.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from extproc.domain.classify import WorkloadClass

#: Separator between pools in the name of a failover (aggregate) cluster.
CHAIN_SEPARATOR = "~"


def failover_cluster(chain: Sequence[str]) -> str:
    """The Envoy cluster for a pool and its ordered fallbacks (the pool itself if none)."""
    return CHAIN_SEPARATOR.join(chain)


def failover_chains(pools: Sequence[str], max_fallbacks: int) -> list[tuple[str, ...]]:
    """Every ordered chain of a pool and 1..max_fallbacks others: Envoy needs a cluster for each."""
    return [chain for n in range(2, max_fallbacks + 2) for chain in itertools.permutations(pools, n)]


@dataclass(frozen=True, slots=True)
class WeightedPool:
    pool: str
    weight: int = 100


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One row of the table: what it matches and where the traffic goes."""

    id: str
    pools: tuple[WeightedPool, ...]
    workload: WorkloadClass | None = None
    model: str | None = None  # exact name, or a prefix ending in ``*``
    tenant: str | None = None
    plan: str | None = None
    rewrite_model: str | None = None  # the model name the upstream receives
    fallbacks: tuple[str, ...] = ()

    def matches(self, workload: WorkloadClass, model: str | None, tenant: str, plan: str) -> bool:
        """The hot-path test (``mismatch`` says the same in words, for explain)."""
        if self.tenant is not None and tenant != self.tenant:
            return False
        if self.plan is not None and plan != self.plan:
            return False
        if self.workload is not None and workload is not self.workload:
            return False
        if self.model is None:
            return True
        if model is None:
            return False
        if self.model.endswith("*"):
            return model.startswith(self.model[:-1])
        return model == self.model

    def mismatch(self, workload: WorkloadClass, model: str | None, tenant: str, plan: str) -> str | None:
        """Why this entry does not match (None: it matches). Used by lookups and by explain."""
        if self.tenant is not None and tenant != self.tenant:
            return f"tenant is {tenant!r}, entry wants {self.tenant!r}"
        if self.plan is not None and plan != self.plan:
            return f"plan is {plan!r}, entry wants {self.plan!r}"
        if self.model is not None:
            if model is None:
                return f"request names no model, entry wants {self.model!r}"
            if self.model.endswith("*"):
                if not model.startswith(self.model[:-1]):
                    return f"model {model!r} does not start with {self.model[:-1]!r}"
            elif model != self.model:
                return f"model is {model!r}, entry wants {self.model!r}"
        if self.workload is not None and workload is not self.workload:
            return f"class is {workload.value}, entry wants {self.workload.value}"
        return None

    @property
    def criteria(self) -> tuple[str | None, str | None, str | None, WorkloadClass | None]:
        """What the entry matches on; two entries with equal criteria are duplicates."""
        return (self.tenant, self.plan, self.model, self.workload)

    @property
    def specificity(self) -> tuple[int, int, int, int]:
        """Larger is more specific; the table tries entries in descending order."""
        who = 2 if self.tenant is not None else 1 if self.plan is not None else 0
        if self.model is None:
            model, prefix = 0, 0
        elif self.model.endswith("*"):
            model, prefix = 1, len(self.model) - 1
        else:
            model, prefix = 2, 0
        return (who, model, prefix, 1 if self.workload is not None else 0)


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A routing table as an operator writes it (config seed or ``extproc routes apply``)."""

    entries: tuple[RouteEntry, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    draining: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: the entry, the pool picked, and the cluster Envoy routes to."""

    entry: RouteEntry
    pool: str
    #: The Envoy cluster: the pool, or ``pool~fallback…`` (an aggregate cluster) with fallbacks.
    cluster: str
    #: Retries Envoy may make through the fallbacks (0: no fallback).
    retries: int
    version: int


@dataclass(frozen=True, slots=True)
class TableOrigin:
    """Where a table came from, for status pages, metrics and decision records."""

    version: int = 0
    source: str = "config"  # "config": the policy file's seed; "redis": the live table
    epoch: str = ""
    author: str = ""
    reason: str = ""
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class _Choices:
    """An entry's precomputed pick: cumulative weights over the pools that take traffic."""

    cumulative: tuple[int, ...]
    routes: tuple[Route, ...]

    def pick(self, rand: Callable[[], float]) -> Route:
        if len(self.routes) == 1:
            return self.routes[0]
        x = rand() * self.cumulative[-1]
        return self.routes[bisect.bisect_right(self.cumulative, x)]


def _choices(entry: RouteEntry, draining: frozenset[str], version: int) -> _Choices | None:
    """Draining pools get no new traffic; their weight goes to the others, or to the fallbacks."""
    live = [wp for wp in entry.pools if wp.pool not in draining and wp.weight > 0]
    fallbacks = [p for p in entry.fallbacks if p not in draining]
    if not live:
        if not fallbacks:
            return None
        live, fallbacks = [WeightedPool(fallbacks[0])], fallbacks[1:]
    cumulative, routes, total = [], [], 0
    for wp in live:
        total += wp.weight
        cumulative.append(total)
        chain = [wp.pool, *fallbacks]
        routes.append(Route(entry, wp.pool, failover_cluster(chain), len(chain) - 1, version))
    return _Choices(tuple(cumulative), tuple(routes))


@dataclass(frozen=True, slots=True)
class Explanation:
    """What ``extproc routes explain`` prints: every entry tried, in precedence order."""

    model_requested: str | None
    model_resolved: str | None
    tried: tuple[tuple[RouteEntry, str | None], ...]  # (entry, why it did not match or None)
    winner: RouteEntry | None
    pools: tuple[tuple[str, str, float], ...] = field(default=())  # (pool, cluster, share)


class RoutingTable:
    """Immutable: entries sorted most specific first, exact models indexed."""

    def __init__(self, spec: TableSpec, origin: TableOrigin | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.spec = spec
        self.origin = origin or TableOrigin()
        self.version = self.origin.version
        self.aliases: Mapping[str, str] = dict(spec.aliases)
        self._rand = rand
        # Stable sort: equal specificity keeps document order (only disjoint entries tie).
        self.ordered = tuple(sorted(spec.entries, key=lambda e: e.specificity, reverse=True))
        self._choices = {e.id: _choices(e, spec.draining, self.version) for e in self.ordered}
        exact = {e.model for e in self.ordered if e.model and not e.model.endswith("*")}
        self._no_exact = tuple(e for e in self.ordered if e.model is None or e.model.endswith("*"))
        self._by_model = {m: tuple(e for e in self.ordered if e.model == m or e in self._no_exact)
                          for m in exact}

    def resolve(self, model: str | None) -> str | None:
        """The canonical model name: aliases resolved (one level; chains are refused)."""
        if model is None:
            return None
        return self.aliases.get(model, model)

    def _candidates(self, model: str | None) -> tuple[RouteEntry, ...]:
        return self._by_model.get(model, self._no_exact) if model else self._no_exact

    def lookup(self, workload: WorkloadClass, model: str | None, tenant: str, plan: str = "") -> Route | None:
        """The route for a request whose model is already resolved; None: nothing matches."""
        for entry in self._candidates(model):
            if entry.matches(workload, model, tenant, plan):
                choices = self._choices[entry.id]
                return choices.pick(self._rand) if choices else None
        return None

    def explain(self, workload: WorkloadClass, model: str | None, tenant: str, plan: str = "") -> Explanation:
        resolved = self.resolve(model)
        tried: list[tuple[RouteEntry, str | None]] = []
        winner = None
        for entry in self.ordered:
            why = entry.mismatch(workload, resolved, tenant, plan)
            tried.append((entry, why))
            if why is None:
                winner = entry
                break
        pools: list[tuple[str, str, float]] = []
        choices = self._choices.get(winner.id) if winner else None
        if choices:
            previous = 0
            for cum, route in zip(choices.cumulative, choices.routes, strict=True):
                pools.append((route.pool, route.cluster, (cum - previous) / choices.cumulative[-1]))
                previous = cum
        return Explanation(model, resolved, tuple(tried), winner, tuple(pools))


def routes_nowhere(entry: RouteEntry, draining: Iterable[str]) -> bool:
    """Every pool and fallback of the entry is draining: the entry could route nothing."""
    return _choices(entry, frozenset(draining), 0) is None
