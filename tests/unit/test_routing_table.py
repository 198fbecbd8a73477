from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from extproc.config.reader import ConfigError
from extproc.domain.classify import WorkloadClass as W
from extproc.routing.document import load_table, read_table_file, to_document, to_yaml
from extproc.routing.table import RoutingTable, TableOrigin

POOLS = ("pool-a", "pool-b", "pool-c", "pool-acme")


def table(doc: dict, max_fallbacks: int = 2, seed: int = 7, version: int = 3) -> RoutingTable:
    spec = load_table(doc, "test", POOLS, max_fallbacks)
    return RoutingTable(spec, TableOrigin(version, "redis"), random.Random(seed).random)


PRECEDENCE = table({
    "aliases": {"gpt-4o": "gpt-4o-2024-08-06"},
    "routes": [
        # Deliberately least specific first: document order does not decide.
        {"id": "inference", "class": "inference", "pool": "pool-c"},
        {"id": "rag", "class": "rag", "pool": "pool-a"},
        {"id": "4o-family", "model": "gpt-4o*", "pool": "pool-b"},
        {"id": "4o-2024", "model": "gpt-4o-2024*", "pool": "pool-c"},
        {"id": "mini", "model": "gpt-4o-mini", "pool": "pool-a"},
        {"id": "pro-mini", "plan": "pro", "model": "gpt-4o-mini", "pool": "pool-b"},
        {"id": "acme", "tenant": "acme", "pool": "pool-acme"},
        {"id": "acme-rag", "tenant": "acme", "class": "rag", "pool": "pool-a"},
        {"id": "acme-mini-inf", "tenant": "acme", "model": "gpt-4o-mini", "class": "inference", "pool": "pool-b"},
    ],
})


def route(workload: W, model: str | None, tenant: str = "t", plan: str = "free") -> str | None:
    resolved = PRECEDENCE.resolve(model)
    found = PRECEDENCE.lookup(workload, resolved, tenant, plan)
    return found.entry.id if found else None


def test_most_specific_entry_wins_tenant_then_model_then_class() -> None:
    assert route(W.INFERENCE, "llama") == "inference"
    assert route(W.INFERENCE, None) == "inference"
    assert route(W.RAG, "text-embedding-3-small") == "rag"
    assert route(W.INFERENCE, "gpt-4o-mini") == "mini"  # exact model beats class
    assert route(W.INFERENCE, "gpt-4o-mini", plan="pro") == "pro-mini"  # plan beats no plan
    assert route(W.INFERENCE, "gpt-4o-2024-11-20") == "4o-2024"  # longer prefix wins
    assert route(W.INFERENCE, "gpt-4o-audio") == "4o-family"
    assert route(W.INFERENCE, "gpt-4o-mini", tenant="acme", plan="pro") == "acme-mini-inf"
    assert route(W.RAG, "gpt-4o-mini", tenant="acme") == "acme-rag"  # tenant beats any model
    assert route(W.TRAINING, None, tenant="acme") == "acme"


def test_alias_resolves_before_matching() -> None:
    assert PRECEDENCE.resolve("gpt-4o") == "gpt-4o-2024-08-06"
    assert route(W.INFERENCE, "gpt-4o") == "4o-2024"
    assert PRECEDENCE.resolve("gpt-4o-mini") == "gpt-4o-mini"


def test_no_match_is_none() -> None:
    assert route(W.TRAINING, None) is None
    assert route(W.VIDEO, "sora") is None


def test_weights_split_traffic_within_tolerance() -> None:
    t = table({"routes": [{"id": "canary", "model": "m", "pools": [
        {"pool": "pool-a", "weight": 90}, {"pool": "pool-b", "weight": 10}]}]})
    draws = 20_000
    counts = Counter(t.lookup(W.INFERENCE, "m", "t").pool for _ in range(draws))  # type: ignore[union-attr]
    # Binomial(20000, 0.1): sd ≈ 42, so ±300 is > 7 sd.
    assert abs(counts["pool-b"] - draws * 0.10) < 300, counts
    assert counts["pool-a"] + counts["pool-b"] == draws


def test_zero_weight_pool_gets_nothing() -> None:
    t = table({"routes": [{"id": "r", "pools": [{"pool": "pool-a", "weight": 100}, {"pool": "pool-b", "weight": 0}]}]})
    assert {t.lookup(W.INFERENCE, None, "t").pool for _ in range(500)} == {"pool-a"}  # type: ignore[union-attr]


def test_fallbacks_become_one_failover_cluster_with_retries() -> None:
    t = table({"routes": [{"id": "r", "pool": "pool-a", "fallbacks": ["pool-b", "pool-c"]},
                          {"id": "plain", "model": "m", "pool": "pool-c"}]})
    r = t.lookup(W.INFERENCE, None, "t")
    assert r is not None
    assert (r.pool, r.cluster, r.retries, r.version) == ("pool-a", "pool-a~pool-b~pool-c", 2, 3)
    plain = t.lookup(W.INFERENCE, "m", "t")
    assert plain is not None and (plain.cluster, plain.retries) == ("pool-c", 0)


def test_draining_pool_gets_no_new_traffic() -> None:
    doc = {"draining": ["pool-b"], "routes": [
        {"id": "split", "model": "m", "pools": [{"pool": "pool-a", "weight": 50}, {"pool": "pool-b", "weight": 50}]},
        {"id": "moved", "model": "n", "pool": "pool-b", "fallbacks": ["pool-c", "pool-a"]},
        {"id": "fb", "model": "o", "pool": "pool-a", "fallbacks": ["pool-b", "pool-c"]},
    ]}
    t = table(doc)
    assert {t.lookup(W.INFERENCE, "m", "t").pool for _ in range(300)} == {"pool-a"}  # type: ignore[union-attr]
    moved = t.lookup(W.INFERENCE, "n", "t")
    assert moved is not None and (moved.pool, moved.cluster, moved.retries) == ("pool-c", "pool-c~pool-a", 1)
    fb = t.lookup(W.INFERENCE, "o", "t")
    assert fb is not None and fb.cluster == "pool-a~pool-c"  # a draining fallback is skipped too


def test_explain_names_every_entry_tried_and_why() -> None:
    ex = PRECEDENCE.explain(W.INFERENCE, "gpt-4o", "globex", "free")
    assert ex.model_resolved == "gpt-4o-2024-08-06"
    assert ex.winner is not None and ex.winner.id == "4o-2024"
    whys = {e.id: why for e, why in ex.tried}
    assert whys["acme"] == "tenant is 'globex', entry wants 'acme'"
    assert "does not start with" not in (whys.get("4o-2024") or "")
    assert ex.pools == (("pool-c", "pool-c", 1.0),)


def test_document_round_trips_canonically() -> None:
    doc = {"aliases": {"a": "b"}, "draining": ["pool-c"], "routes": [
        {"id": "x", "tenant": "acme", "model": "m*", "class": "rag", "pool": "pool-a", "fallbacks": ["pool-b"],
         "rewrite_model": "m2"},
        {"id": "y", "pools": [{"pool": "pool-a", "weight": 60}, {"pool": "pool-b", "weight": 40}]},
    ]}
    spec = load_table(doc, "t", POOLS, 2)
    assert to_document(spec) == doc
    assert load_table(to_document(spec), "t", POOLS, 2) == spec
    assert read_table_file(to_yaml(spec).encode(), "t", POOLS, 2) == spec


BAD = sorted((Path(__file__).parent / "fixtures" / "bad_routes").glob("*.yaml"))


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_invalid_table_is_rejected_with_a_clear_message(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    with pytest.raises(ConfigError) as info:
        read_table_file(path.read_bytes(), str(path), ("pool-a", "pool-b", "pool-c"), 1)
    assert str(path) in str(info.value)
    assert first[len("# expect: "):] in str(info.value), str(info.value)
