"""The record writer and queries against a real redis-server: TTLs by outcome, allow sampling,
the usage stream's cap, a Redis outage (kept, then written), a full buffer (dropped, counted),
and usage queries that count each decision once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.decision import deny
from extproc.domain.facts import RequestFacts
from extproc.domain.identity import Identity
from extproc.domain.ids import new_decision_id
from extproc.domain.reasons import Reason
from extproc.domain.usage import ResponseEnd, Usage, measure_response
from extproc.ledger.query import budgets_left, find_decision, usage_report
from extproc.ledger.records import Timing, usage_record
from extproc.ledger.spec import USAGE_STREAM, RecordSettings, decision_key, keeps_allowed
from extproc.ledger.writer import LedgerWriter
from extproc.quota.plan import tenant_tag
from extproc.quota.spec import Budget, QuotaPolicy, QuotaSettings
from tests.redis_server import RedisServer

FACTS = RequestFacts("POST", "/v1/chat/completions", "api", {})
ALICE = Identity("acme", subject="alice", verified=True)
CHAT = Classification(WorkloadClass.INFERENCE, "gpt-4o", "openai-chat")


def usage(decision_id: str, tenant: str = "acme", total: int = 10, model: str = "gpt-4o") -> object:
    meta = {"decision_id": decision_id, "tenant": tenant, "class": "inference", "model": model,
            "model_served": model, "route": "chat", "route_version": "3", "upstream": "pool-a"}
    return usage_record(meta, measure_response(200, Usage(total - 2, 2), total), charged_tokens=total,
                        status=200, streamed=False, end=ResponseEnd.COMPLETE, timing=Timing(0.0, 0.1, 0.1, 0.2),
                        adapter="ext_proc", now_ms=int(time.time() * 1000))


def dropped() -> float:
    return REGISTRY.get_sample_value("extproc_records_total", {"kind": "usage", "result": "dropped"}) or 0.0


async def test_denials_outlive_allows_and_unsampled_allows_keep_only_their_usage(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    settings = RecordSettings(allow_sample=0.5, allow_ttl_s=3600, deny_ttl_s=7 * 86400)
    writer = LedgerWriter(client, lambda: settings)
    denied = deny(new_decision_id(), Reason.RATE_LIMITED, "slow down", CHAT, ALICE, policy="rpm")
    writer.decision(denied, FACTS, "ext_proc")
    kept = next(i for i in iter(new_decision_id, None) if keeps_allowed(i, 0.5))
    skipped = next(i for i in iter(new_decision_id, None) if not keeps_allowed(i, 0.5))
    writer.usage(usage(kept))  # type: ignore[arg-type]
    writer.usage(usage(skipped))  # type: ignore[arg-type]
    assert await writer.flush_batch() == 3 and writer.pending == 0
    assert 6 * 86400 < await client.ttl(decision_key(denied.decision_id)) <= 7 * 86400
    assert 0 < await client.ttl(decision_key(kept)) <= 3600
    found = await find_decision(client, denied.decision_id)
    assert found.decision is not None and found.decision.reason == "rate_limited" and found.usage is None
    assert (await find_decision(client, kept)).usage is not None
    assert await client.exists(decision_key(skipped)) == 0  # not sampled: only in the stream
    assert await client.xlen(USAGE_STREAM) == 2
    await client.aclose()


async def test_usage_stream_is_capped_by_length(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    writer = LedgerWriter(client, lambda: RecordSettings(usage_max_len=1000, allow_sample=0))
    for _ in range(3000):
        writer.usage(usage(new_decision_id()))  # type: ignore[arg-type]
    while writer.pending:
        await writer.flush_batch()
    # Approximate trimming (~): whole macro nodes go, so a little over the cap may stay.
    assert 1000 <= await client.xlen(USAGE_STREAM) < 1300
    await client.aclose()


async def test_records_wait_for_redis_and_are_written_when_it_is_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    port = server.port
    client = Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    writer = LedgerWriter(client, lambda: RecordSettings(allow_sample=0))
    task = asyncio.create_task(writer.run())
    try:
        server.kill()
        ids = [new_decision_id() for _ in range(50)]
        for i in ids:
            writer.usage(usage(i))  # type: ignore[arg-type]
        await asyncio.sleep(1.0)
        assert writer.pending == 50  # nothing lost while Redis is away
        server = RedisServer(tmp_path / "r2", port).start()
        deadline = time.monotonic() + 15
        while writer.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert writer.pending == 0
        report = await usage_report(client, "acme", 0)
        assert report.total.requests == 50 and report.total.charged_tokens == 500
    finally:
        task.cancel()
        await client.aclose()
        server.stop()


async def test_a_full_buffer_drops_new_records_and_counts_them(tmp_path: Path) -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)  # nobody listens there
    writer = LedgerWriter(client, lambda: RecordSettings(max_pending=100))
    before = dropped()
    for _ in range(130):
        writer.usage(usage(new_decision_id()))  # type: ignore[arg-type]
    assert writer.pending == 100 and dropped() - before == 30
    await writer.close(timeout_s=0.5)  # cannot write: says so, does not hang
    await client.aclose()


async def test_usage_report_groups_dedupes_and_filters_by_tenant(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    writer = LedgerWriter(client, lambda: RecordSettings(allow_sample=0))
    twice = new_decision_id()
    for record in (usage(twice, total=10), usage(twice, total=10), usage(new_decision_id(), total=5, model="m2"),
                   usage(new_decision_id(), tenant="other", total=99)):
        writer.usage(record)  # type: ignore[arg-type]
    await writer.flush_batch()
    report = await usage_report(client, "acme", 0, by="model")
    assert [(r.key, r.requests, r.total_tokens) for r in report.rows] == [("gpt-4o", 1, 10), ("m2", 1, 5)]
    assert report.total.charged_tokens == 15 and report.duplicates == 1
    await client.aclose()


async def test_budgets_left_reads_the_quota_counters(redis_server: RedisServer) -> None:
    from datetime import UTC, datetime

    client = Redis.from_url(redis_server.url)
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    day = (now.date() - datetime(1970, 1, 1).date()).days
    await client.hset(f"xq:{{{tenant_tag('acme')}}}:b:daily", mapping={"p": day, "u": 300})
    await client.hset(f"xq:{{{tenant_tag('acme')}}}:b:monthly", mapping={"p": 1, "u": 999})  # an old period
    quotas = QuotaSettings((QuotaPolicy("daily", tenant="acme", budget=Budget(1000, "day")),
                            QuotaPolicy("monthly", budget=Budget(5000, "month")),
                            QuotaPolicy("theirs", tenant="other", budget=Budget(1, "day"))))
    left = {b.policy: b for b in await budgets_left(client, quotas, "acme", now)}
    assert set(left) == {"daily", "monthly"}
    assert (left["daily"].used, left["daily"].remaining) == (300, 700)
    assert left["daily"].resets_at_unix_ms == int(datetime(2026, 11, 24, tzinfo=UTC).timestamp() * 1000)
    assert (left["monthly"].used, left["monthly"].remaining) == (0, 5000)
    planned = QuotaSettings((QuotaPolicy("pro-day", plan="pro", budget=Budget(10, "day")),
                             QuotaPolicy("free-day", plan="free", budget=Budget(10, "day"))))
    assert [b.policy for b in await budgets_left(client, planned, "acme", now, plans={"pro"})] == ["pro-day"]
    assert len(await budgets_left(client, planned, "acme", now)) == 2  # no records: every plan
    assert left["monthly"].resets_at_unix_ms == int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)
    await client.aclose()


async def test_records_on_a_redis_cluster(redis_cluster_url: str) -> None:
    from extproc.quota.redis_client import client_from_url

    client = client_from_url(redis_cluster_url, 2.0)
    writer = LedgerWriter(client, lambda: RecordSettings(allow_sample=1.0))
    try:
        denials = [deny(new_decision_id(), Reason.RATE_LIMITED, "slow down", CHAT, ALICE) for _ in range(20)]
        for d in denials:  # keys hash-tagged by id: spread over the three nodes
            writer.decision(d, FACTS, "ext_proc")
        for d in denials[:5]:
            writer.usage(usage(d.decision_id))  # type: ignore[arg-type]
        while writer.pending:
            await writer.flush_batch()
        for d in denials:
            assert (await find_decision(client, d.decision_id)).decision is not None
        assert (await usage_report(client, "acme", 0)).total.requests == 5
    finally:
        await client.aclose()


async def test_a_record_with_values_the_schema_cannot_hold_is_still_written(redis_server: RedisServer) -> None:
    """Hardening #8: a record with a bad value is still a record (text that is not UTF-8 is
    replaced, counts saturate); one that cannot be built at all is dropped and counted without
    holding back the ones behind it."""
    client = Redis.from_url(redis_server.url)
    writer = LedgerWriter(client, lambda: RecordSettings(allow_sample=1.0))
    bad = Identity("acme", subject="alice", scopes=frozenset({"\ud800"}), verified=True)  # not UTF-8
    odd = deny(new_decision_id(), Reason.RATE_LIMITED, "x", CHAT, bad)
    writer.decision(odd, FACTS, "ext_proc")
    good = deny(new_decision_id(), Reason.RATE_LIMITED, "x", CHAT, ALICE)
    writer.decision(good, FACTS, "ext_proc")
    huge = new_decision_id()
    writer.usage_from(lambda: usage(huge, total=2**70))  # type: ignore[arg-type,return-value]
    before = REGISTRY.get_sample_value("extproc_records_total", {"kind": "usage", "result": "invalid"}) or 0
    writer.usage_from(lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    assert await writer.flush_batch() == 3 and writer.pending == 0
    assert (await find_decision(client, good.decision_id)).decision is not None
    kept = (await find_decision(client, odd.decision_id)).decision
    assert kept is not None and list(kept.scopes) == ["?"]
    assert REGISTRY.get_sample_value("extproc_records_total", {"kind": "usage", "result": "invalid"}) == before + 1
    await client.aclose()


class _Refusing:
    """A Redis client whose every pipeline fails: counts how often the writer tries."""

    def __init__(self) -> None:
        self.tries = 0

    def pipeline(self, transaction: bool = False) -> _Refusing:
        return self

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *a, **k: None  # hset, expire, xadd, xtrim: queued

    async def execute(self) -> None:
        self.tries += 1
        raise ConnectionError("refused")


async def test_the_writer_backs_off_while_redis_fails_however_many_records_wait() -> None:
    client = _Refusing()
    writer = LedgerWriter(client, lambda: RecordSettings(allow_sample=0))
    task = asyncio.create_task(writer.run())
    try:
        for _ in range(20):  # more than a batch arrives every 50 ms
            for _ in range(600):
                writer.usage(usage(new_decision_id()))  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert writer.pending == 12000  # nothing lost
    assert client.tries <= 6  # 0.1, 0.5, 1, 2 s apart: not once per arriving record
