"""``extproc routes …``: what an operator does with the live table, as plain-text answers.

Each command returns ``(exit code, text)``; ``cli.py`` only parses arguments and
prints. Tables are validated against the policy file's pools (what Envoy knows)
before anything is published; ``apply`` and ``rollback`` publish only if nobody
published in between (the version they read), and print what changes.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from extproc.config.model import PolicyConfig
from extproc.config.reader import ConfigError
from extproc.domain.classify import WorkloadClass, folded_model
from extproc.routing.document import canonical_json, read_table_file, to_document, yaml_document
from extproc.routing.store import Outcome, RouteStore, StoredTable
from extproc.routing.table import RoutingTable, TableOrigin, TableSpec


def default_author() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _header(stored: StoredTable) -> str:
    rollback = f" (rollback to version {stored.rollback_of})" if stored.rollback_of else ""
    return (f"# routing table version {stored.version}{rollback}, published {_when(stored.created_at)} "
            f"by {stored.author}\n# reason: {stored.reason}\n")


def _errors(exc: ConfigError, what: str) -> tuple[int, str]:
    lines = [f"{what}: {len(exc.errors)} error(s); nothing was published"]
    lines += [f"  {exc.source}: {e}" for e in exc.errors]
    return 1, "\n".join(lines)


async def get(store: RouteStore, version: int | None, as_json: bool) -> tuple[int, str]:
    stored = await store.get(version)
    if stored is None:
        if version:
            return 1, f"version {version} is not in the history (see `extproc routes history`)"
        return 1, "Redis holds no routing table yet (a sidecar seeds version 1 from its policy file on start)"
    if as_json:
        return 0, json.dumps({"version": stored.version, "epoch": stored.epoch, "author": stored.author,
                              "reason": stored.reason, "created_at": stored.created_at,
                              "table": stored.document}, indent=2)
    return 0, _header(stored) + yaml_document(stored.document)


async def apply(store: RouteStore, config: PolicyConfig, path: Path, reason: str, author: str,
                dry_run: bool) -> tuple[int, str]:
    try:
        spec = read_table_file(path.read_bytes(), str(path), config.pools, config.max_fallbacks)
    except OSError as exc:
        return 1, f"cannot read {path}: {exc.strerror or exc}"
    except ConfigError as exc:
        return _errors(exc, str(path))
    return await _publish(store, spec, reason, author, dry_run)


async def rollback(store: RouteStore, config: PolicyConfig, version: int, reason: str,
                   author: str, dry_run: bool) -> tuple[int, str]:
    stored = await store.get(version)
    if stored is None:
        return 1, f"version {version} is not in the history (see `extproc routes history`)"
    try:
        spec = stored.spec(config)
    except ConfigError as exc:
        return _errors(exc, f"version {version} is not valid against this policy file's pools")
    return await _publish(store, spec, reason, author, dry_run, rollback_of=version)


async def _publish(store: RouteStore, spec: TableSpec, reason: str, author: str, dry_run: bool,
                   rollback_of: int | None = None) -> tuple[int, str]:
    current = await store.get()
    base = current.version if current else 0
    changes = diff(current.document if current else None, to_document(spec))
    head = f"against version {base}:" if current else "Redis holds no table yet; this would be version 1:"
    if current and not changes:
        return 0, f"no changes against version {base}; nothing published"
    text = "\n".join([head, *changes])
    if dry_run:
        return 0, text + "\n(dry run: nothing published)"
    result = await store.publish(canonical_json(spec), author, reason, expected=base,
                                 rollback_of=rollback_of)
    if result.outcome is Outcome.CONFLICT:
        return 1, (f"version {result.version} was published while this ran (you diffed against "
                   f"{base}); nothing was published: run the command again")
    return 0, text + f"\npublished version {result.version}"


async def history(store: RouteStore, limit: int) -> tuple[int, str]:
    rows = await store.history(limit)
    if not rows:
        return 1, "Redis holds no routing table history"
    lines = [f"{'version':>7}  {'published':<23}  {'author':<24}  {'digest':<12}  reason"]
    for h in rows:
        note = f" (rollback to {h.rollback_of})" if h.rollback_of else ""
        lines.append(f"{h.version:>7}  {_when(h.created_at):<23}  {h.author[:24]:<24}  {h.digest:<12}  "
                     f"{h.reason}{note}")
    return 0, "\n".join(lines)


def explain(table: RoutingTable, tenant: str, plan: str, workload: WorkloadClass,
            model: str | None) -> tuple[int, str]:
    model = folded_model(model)
    o = table.origin
    source = {"redis": f"live table version {o.version} (by {o.author}: {o.reason})",
              "config": "the policy file's table (no live table)"}.get(o.source, o.source)
    ex = table.explain(workload, model, tenant, plan)
    lines = [f"request: tenant={tenant} plan={plan or '-'} class={workload.value} model={model or '-'}",
             f"table: {source}"]
    if ex.model_resolved != ex.model_requested:
        lines.append(f"alias: {ex.model_requested} → {ex.model_resolved} (matching uses {ex.model_resolved})")
    lines.append("entries tried, most specific first:")
    for entry, why in ex.tried:
        mark = "✔ match" if why is None else f"✘ {why}"
        lines.append(f"  {entry.id:<24} {describe(to_document(TableSpec((entry,)))['routes'][0]):<48} {mark}")
    if ex.winner is None:
        untried = len(table.ordered) - len(ex.tried)
        lines.append(f"no entry matches{f' ({untried} untried)' if untried else ''}: the request is refused "
                     "with 404 no_route")
        return 1, "\n".join(lines)
    winner = ex.winner
    lines.append(f"winner: {winner.id}")
    for pool, cluster, share in ex.pools:
        via = f" (Envoy cluster {cluster}: on 5xx/429, retried on the fallbacks)" if cluster != pool else ""
        lines.append(f"  {share:>6.1%} → {pool}{via}")
    named = (*(wp.pool for wp in winner.pools), *winner.fallbacks)
    drained = sorted(p for p in named if p in table.spec.draining)
    if drained:
        lines.append(f"  draining, no new traffic: {', '.join(drained)}")
    served = winner.rewrite_model or ex.model_resolved
    if served and served != model:
        lines.append(f"upstream receives model: {served}")
    return 0, "\n".join(lines)


def describe(item: dict[str, Any]) -> str:
    """One entry of a table document in one line: what it matches → where it goes."""
    match = " ".join(f"{k}={item[k]}" for k in ("tenant", "plan", "class", "model") if k in item)
    pools = [item["pool"]] if "pool" in item else [f"{p['pool']} {p['weight']}%" for p in item["pools"]]
    to = ", ".join(pools)
    extra = ""
    if item.get("fallbacks"):
        extra += f" then {', '.join(item['fallbacks'])}"
    if item.get("rewrite_model"):
        extra += f" as model {item['rewrite_model']}"
    return f"{match or 'anything'} → {to}{extra}"


def diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What changes between two table documents, one line per change."""
    old = old or {}
    out: list[str] = []
    before = {r["id"]: r for r in old.get("routes", [])}
    after = {r["id"]: r for r in new.get("routes", [])}
    for rid, item in after.items():
        if rid not in before:
            out.append(f"+ route {rid}: {describe(item)}")
        elif before[rid] != item:
            out.append(f"~ route {rid}: {describe(before[rid])}  ⇒  {describe(item)}")
    out += [f"- route {rid}: {describe(item)}" for rid, item in before.items() if rid not in after]
    out += _map_diff("alias", old.get("aliases", {}), new.get("aliases", {}))
    drained_before, drained_after = set(old.get("draining", [])), set(new.get("draining", []))
    out += [f"+ draining {p}" for p in sorted(drained_after - drained_before)]
    out += [f"- draining {p} (takes traffic again)" for p in sorted(drained_before - drained_after)]
    return out


def _map_diff(what: str, before: dict[str, str], after: dict[str, str]) -> list[str]:
    out = [f"+ {what} {k} → {v}" for k, v in after.items() if k not in before]
    out += [f"~ {what} {k}: {before[k]} ⇒ {v}" for k, v in after.items() if k in before and before[k] != v]
    out += [f"- {what} {k} → {v}" for k, v in before.items() if k not in after]
    return out


def table_from(stored: StoredTable | None, config: PolicyConfig) -> RoutingTable:
    """The live table (validated against the config's pools) or, without one, the config's seed."""
    return RoutingTable(config.routing) if stored is None else stored.table(config)


def file_table(path: Path, pools: Sequence[str], max_fallbacks: int) -> RoutingTable:
    return RoutingTable(read_table_file(path.read_bytes(), str(path), pools, max_fallbacks),
                        TableOrigin(0, f"file {path}"))

