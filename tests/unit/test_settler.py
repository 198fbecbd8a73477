"""Settlement of "request ended" events (fakes at the store and the ledger): what each request is
charged, that exactly one settlement writes its record, and how a swept admission is flagged."""

from __future__ import annotations

import json
from typing import Any

from extproc.domain.usage import ResponseEnd, Usage
from extproc.ledger.records import SOURCE_NAMES, Timing, end_name
from extproc.quota.recipe import SettleLimit, SettleRecipe
from extproc.settlement.events import RequestEnded, UsageSeen
from extproc.settlement.settler import Settler, unreported

RECIPE = SettleRecipe("d1", 1024, ((SettleLimit("xq:{acme}:b:day", "acme", "budget", True, "7"),),), 24)


class FakeQuota:
    """Answers settle calls as the settle script would: True the first time, then False."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable
        self.settled: dict[str, int] = {}

    async def settle_recipe(self, recipe: SettleRecipe, actual_tokens: int) -> bool | None:
        if not self.reachable:
            return None
        if recipe.lease_id in self.settled:
            return False
        self.settled[recipe.lease_id] = actual_tokens
        return True


class FakeLedger:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def usage_from(self, build: Any) -> None:
        self.records.append(build())


def _meta(decision_id: str = "d1", **more: str) -> dict[str, str]:
    recipe = SettleRecipe(decision_id, RECIPE.estimate_tokens, RECIPE.groups, RECIPE.prompt_tokens)
    return {"decision_id": decision_id, "tenant": "acme", "usage": "read", "settle": recipe.to_json(),
            "prompt_tokens": "24", "estimate_tokens": "1024", **more}


def _settler(quota: FakeQuota) -> tuple[Settler, FakeLedger]:
    ledger = FakeLedger()
    return Settler(quota, ledger), ledger  # type: ignore[arg-type]


async def test_reported_usage_is_charged_and_recorded_once() -> None:
    quota = FakeQuota()
    settler, ledger = _settler(quota)
    seen = UsageSeen(Usage(24, 300), True, 1200, 302, streamed=True)
    event = RequestEnded(_meta(), 200, ResponseEnd.COMPLETE, seen, Timing(0.0, 0.04, 0.05, 0.9))
    await settler.ended([event, event])  # the same end twice: one settlement, one record
    assert quota.settled == {"d1": 324}
    (record,) = ledger.records
    assert record.charged_tokens == 324 and SOURCE_NAMES[record.source] == "reported" and record.streamed


async def test_json_without_usage_keeps_the_reservation_and_errors_are_free() -> None:
    quota = FakeQuota()
    settler, ledger = _settler(quota)
    await settler.ended([
        RequestEnded(_meta("d1"), 200, ResponseEnd.COMPLETE, UsageSeen(None, True, 0), Timing(0.0)),
        RequestEnded(_meta("d2"), 503, ResponseEnd.COMPLETE, None, Timing(0.0)),
    ])
    assert [(r.decision_id, r.charged_tokens, SOURCE_NAMES[r.source]) for r in ledger.records] == [
        ("d1", 1024, "estimated"), ("d2", 0, "upstream_error")]


async def test_a_store_that_cannot_be_reached_leaves_the_admission_to_the_sweeper() -> None:
    settler, ledger = _settler(FakeQuota(reachable=False))
    await settler.ended([RequestEnded(_meta(), 200, ResponseEnd.COMPLETE, None, Timing(0.0))])
    assert ledger.records == []


async def test_a_swept_admission_keeps_its_estimate_and_says_so() -> None:
    quota = FakeQuota()
    settler, ledger = _settler(quota)
    facts = {"decision_id": "d1", "tenant": "acme", "usage": "read", "settle": RECIPE.to_json(),
             "estimate_tokens": "1024"}
    await settler.ended([unreported(json.dumps(facts))])
    assert quota.settled == {"d1": 1024}  # the delta is 0: the counters keep the estimate
    (record,) = ledger.records
    assert end_name(record) == "unreported" and SOURCE_NAMES[record.source] == "estimated"
    assert record.charged_tokens == 1024 and record.status == 0
    # Its access-log entry, arriving late after all, changes nothing.
    await settler.ended([RequestEnded(_meta(), 200, ResponseEnd.COMPLETE, UsageSeen(Usage(1, 1), True, 0),
                                      Timing(0.0))])
    assert len(ledger.records) == 1 and quota.settled == {"d1": 1024}


def test_facts_that_are_not_an_admissions_are_refused() -> None:
    for text in ("[]", '{"a": 1}', "not json"):
        try:
            unreported(text)
        except ValueError:
            continue
        raise AssertionError(text)
