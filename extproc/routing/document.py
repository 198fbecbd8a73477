"""A routing table as a document: parse and validate it, and write it back in canonical form.

The same document is the ``routing`` section of the policy file (the seed), the
file given to ``extproc routes apply`` and what Redis stores (canonical JSON). It
is validated against the pools Envoy knows (``routing.pools`` in the policy file)
before it is published and again before a sidecar swaps it in; every problem is
reported with its field path, and a table with any problem is never used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from extproc.config.reader import ConfigError, Reader
from extproc.domain.classify import WorkloadClass, folded_model
from extproc.routing.table import RouteEntry, TableSpec, WeightedPool, routes_nowhere

TABLE_FIELDS = {"routes", "aliases", "draining"}
_ENTRY_FIELDS = {"id", "class", "model", "tenant", "plan", "pool", "pools", "rewrite_model", "fallbacks"}
_MODEL = re.compile(r"^[A-Za-z0-9._:/@+-]{1,256}$")
_CLASSES = ", ".join(w.value for w in WorkloadClass)


def parse_table(r: Reader, doc: Mapping[str, Any], where: str, pools: Sequence[str],
                max_fallbacks: int) -> TableSpec:
    """Read ``routes``/``aliases``/``draining`` from ``doc``; problems go to ``r.errors``."""
    at = (lambda field: f"{where}.{field}") if where else (lambda field: field)
    known = set(pools)
    aliases = _aliases(r, doc.get("aliases"), at("aliases"))
    draining = r.strings(doc.get("draining"), at("draining"), unique=True)
    for i, pool in enumerate(draining):
        if pool not in known:
            r.error(f"{at('draining')}[{i}]", _unknown_pool(pool, pools))
    entries: list[RouteEntry] = []
    seen_ids: dict[str, str] = {}
    seen_criteria: dict[tuple[Any, ...], str] = {}
    for i, item in enumerate(r.seq(doc.get("routes"), at("routes"))):
        here = f"{at('routes')}[{i}]"
        entry = _entry(r, item, here, i, known, pools, max_fallbacks)
        if entry is None:
            continue
        if entry.id in seen_ids:
            r.error(f"{here}.id", f"duplicate route id {entry.id!r} (also {seen_ids[entry.id]})")
        seen_ids.setdefault(entry.id, here)
        if entry.criteria in seen_criteria:
            r.error(here, f"matches exactly what {seen_criteria[entry.criteria]} matches; "
                          "one of the two could never be chosen")
        seen_criteria.setdefault(entry.criteria, here)
        if entry.model in aliases:
            r.error(f"{here}.model", f"{entry.model!r} is an alias of {aliases[entry.model]!r}; models are "
                                     "matched after aliases are resolved, so this entry never matches "
                                     f"(match {aliases[entry.model]!r} instead)")
        if routes_nowhere(entry, draining):
            r.error(here, "every pool and fallback of this entry is draining: it would route nothing")
        entries.append(entry)
    return TableSpec(tuple(entries), tuple(aliases.items()), frozenset(draining))


def _unknown_pool(pool: str, pools: Sequence[str]) -> str:
    return f"unknown pool {pool!r}: Envoy has no cluster for it (routing.pools: {', '.join(pools)})"


def _aliases(r: Reader, value: Any, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, target in r.free_mapping(value, where).items():
        if not isinstance(target, str) or not _MODEL.match(target) or not _MODEL.match(name):
            r.error(f"{where}.{name}", f"expected model names, got {name!r}: {target!r}")
        elif target == name:
            r.error(f"{where}.{name}", "an alias of itself")
        else:
            out[name.lower()] = target.lower()  # as requests' models are matched (``folded_model``)
    for name, target in out.items():
        if target in out:
            r.error(f"{where}.{name}", f"{target!r} is itself an alias (of {out[target]!r}); "
                                       "aliases resolve one level, name the final model")
    return out


def _entry(r: Reader, item: Any, here: str, index: int, known: set[str], pools: Sequence[str],
           max_fallbacks: int) -> RouteEntry | None:
    if not isinstance(item, dict):
        r.error(here, f"expected a mapping, got {type(item).__name__}")
        return None
    f = r.mapping(item, here, _ENTRY_FIELDS)
    rid = r.typed(f.get("id"), f"{here}.id", str, f"route-{index}")
    workload = None
    if "class" in f:
        workload = r.choice(f["class"], f"{here}.class", WorkloadClass, _CLASSES)
    model = r.typed(f.get("model"), f"{here}.model", str, None)
    if model is not None and (model.strip("*") == "" or not _MODEL.match(model.rstrip("*"))
                              or "*" in model.rstrip("*")):
        r.error(f"{here}.model", f"{model!r}: expected a model name or a prefix ending in '*' "
                                 "(omit the field to match any model)")
    model = folded_model(model)
    tenant = r.typed(f.get("tenant"), f"{here}.tenant", str, None)
    plan = r.typed(f.get("plan"), f"{here}.plan", str, None)
    if tenant is not None and plan is not None:
        r.error(here, "set tenant or plan, not both (a tenant already has one plan)")
    rewrite = r.typed(f.get("rewrite_model"), f"{here}.rewrite_model", str, None)
    if rewrite is not None and not _MODEL.match(rewrite):
        r.error(f"{here}.rewrite_model", f"{rewrite!r} is not a model name")
    weighted = _pools(r, f, here, known, pools)
    fallbacks = r.strings(f.get("fallbacks"), f"{here}.fallbacks")
    primaries = {wp.pool for wp in weighted}
    seen: set[str] = set()
    for i, pool in enumerate(fallbacks):
        if pool not in known:
            r.error(f"{here}.fallbacks[{i}]", _unknown_pool(pool, pools))
        elif pool in primaries or pool in seen:
            r.error(f"{here}.fallbacks[{i}]", f"{pool!r} is already in this entry's chain "
                                              "(a cycle: a request would be retried on the same pool)")
        seen.add(pool)
    if len(fallbacks) > max_fallbacks:
        r.error(f"{here}.fallbacks", f"{len(fallbacks)} fallbacks; Envoy has failover clusters for at most "
                                     f"{max_fallbacks} (routing.max_fallbacks in the policy file)")
    return RouteEntry(rid, weighted, workload, model, tenant, plan, rewrite, fallbacks)


def _pools(r: Reader, f: Mapping[str, Any], here: str, known: set[str],
           pools: Sequence[str]) -> tuple[WeightedPool, ...]:
    if ("pool" in f) == ("pools" in f):
        r.error(here, "name exactly one of pool: NAME or pools: [{pool: NAME, weight: PERCENT}, ...]")
        return ()
    if "pool" in f:
        name = r.typed(f["pool"], f"{here}.pool", str, "")
        if name and name not in known:
            r.error(f"{here}.pool", _unknown_pool(name, pools))
        return (WeightedPool(name),) if name else ()
    out: list[WeightedPool] = []
    for i, item in enumerate(r.seq(f["pools"], f"{here}.pools")):
        where = f"{here}.pools[{i}]"
        p = r.mapping(item, where, {"pool", "weight"})
        name = r.typed(p.get("pool"), f"{where}.pool", str, "")
        weight = r.typed(p.get("weight"), f"{where}.weight", int, -1)
        if not name:
            r.error(f"{where}.pool", "required")
        elif name not in known:
            r.error(f"{where}.pool", _unknown_pool(name, pools))
        elif any(wp.pool == name for wp in out):
            r.error(f"{where}.pool", f"{name!r} is listed twice")
        if not 0 <= weight <= 100:
            r.error(f"{where}.weight", "required: a whole percentage from 0 to 100")
        out.append(WeightedPool(name, weight))
    if not out:
        r.error(f"{here}.pools", "list at least one pool")
    elif all(0 <= wp.weight <= 100 for wp in out) and sum(wp.weight for wp in out) != 100:
        r.error(f"{here}.pools", f"weights sum to {sum(wp.weight for wp in out)}, not 100")
    return tuple(out)


def load_table(doc: Any, source: str, pools: Sequence[str], max_fallbacks: int) -> TableSpec:
    """A whole table document (``routes apply`` file or stored JSON). Raises ``ConfigError``."""
    r = Reader()
    fields = r.mapping(doc, "", TABLE_FIELDS) if doc is not None else {}
    spec = parse_table(r, fields, "", pools, max_fallbacks)
    if r.errors:
        raise ConfigError(source, r.errors)
    return spec


def read_table_file(text: bytes, source: str, pools: Sequence[str], max_fallbacks: int) -> TableSpec:
    """A YAML (or JSON) table file, as ``extproc routes apply`` reads it."""
    from extproc.config.loader import load_yaml

    return load_table(load_yaml(text, source), source, pools, max_fallbacks)


def to_document(spec: TableSpec) -> dict[str, Any]:
    """The canonical document: what Redis stores and ``routes get`` prints."""
    routes = []
    for e in spec.entries:
        item: dict[str, Any] = {"id": e.id}
        for key, value in (("tenant", e.tenant), ("plan", e.plan), ("model", e.model),
                           ("class", e.workload.value if e.workload else None)):
            if value is not None:
                item[key] = value
        if len(e.pools) == 1 and e.pools[0].weight == 100:
            item["pool"] = e.pools[0].pool
        else:
            item["pools"] = [{"pool": wp.pool, "weight": wp.weight} for wp in e.pools]
        if e.rewrite_model:
            item["rewrite_model"] = e.rewrite_model
        if e.fallbacks:
            item["fallbacks"] = list(e.fallbacks)
        routes.append(item)
    doc: dict[str, Any] = {"routes": routes}
    if spec.aliases:
        doc["aliases"] = dict(spec.aliases)
    if spec.draining:
        doc["draining"] = sorted(spec.draining)
    return doc


def canonical_json(spec: TableSpec) -> str:
    return json.dumps(to_document(spec), sort_keys=True, separators=(",", ":"))


def to_yaml(spec: TableSpec) -> str:
    return yaml_document(to_document(spec))


_KEY_ORDER = ("aliases", "draining", "routes", "id", "tenant", "plan", "model", "class", "pool", "pools",
              "weight", "fallbacks", "rewrite_model")


def yaml_document(doc: dict[str, Any]) -> str:
    """A table document as the YAML an operator edits and gives back to ``routes apply``."""
    return yaml.safe_dump(_ordered(doc), sort_keys=False, default_flow_style=None, width=100,
                          allow_unicode=True)


def _ordered(value: Any) -> Any:
    """Keys in reading order (stored JSON has them sorted); aliases keep their own order."""
    if isinstance(value, list):
        return [_ordered(v) for v in value]
    if not isinstance(value, dict) or not set(value) <= set(_KEY_ORDER):
        return value
    return {k: _ordered(value[k]) for k in sorted(value, key=_KEY_ORDER.index)}
