from __future__ import annotations

from extproc.domain.classify import WorkloadClass as W
from extproc.routing.table import RouteEntry, RouteTable

TABLE = RouteTable(
    [
        RouteEntry("acme-dedicated", "pool-acme", tenant="acme", workload=W.INFERENCE),
        RouteEntry("mini", "pool-a", model="gpt-4o-mini"),
        RouteEntry("4o-family", "pool-b", model="gpt-4o*"),
        RouteEntry("rag", "pool-a", workload=W.RAG),
        RouteEntry("inference", "pool-c", workload=W.INFERENCE),
    ],
    ["pool-a", "pool-b", "pool-c", "pool-acme"],
)


def route(workload: W, model: str | None, tenant: str = "t") -> str | None:
    entry = TABLE.lookup(workload, model, tenant)
    return entry.id if entry else None


def test_first_matching_entry_wins_in_file_order() -> None:
    assert route(W.INFERENCE, "gpt-4o-mini") == "mini"
    assert route(W.INFERENCE, "gpt-4o-2024-08-06") == "4o-family"
    assert route(W.INFERENCE, "gpt-4o") == "4o-family"
    assert route(W.INFERENCE, "llama") == "inference"
    assert route(W.INFERENCE, None) == "inference"
    assert route(W.INFERENCE, "gpt-4o-mini", tenant="acme") == "acme-dedicated"
    assert route(W.RAG, "text-embedding-3-small") == "rag"


def test_no_match_is_none() -> None:
    assert route(W.TRAINING, None) is None
    assert route(W.VIDEO, "sora") is None
