"""Quotas against a real redis-server: exactness, boundaries, budgets, leases, NOSCRIPT, outages."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from redis.asyncio import Redis

from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.identity import Identity
from extproc.domain.params import read_params
from extproc.quota.breaker import CircuitBreaker
from extproc.quota.local_store import LocalLimiter
from extproc.quota.plan import plan
from extproc.quota.recipe import SettleRecipe
from extproc.quota.redis_client import client_from_url, quota_client
from extproc.quota.redis_store import RedisQuotaStore, open_keys, settle_recipe
from extproc.quota.service import QuotaService
from extproc.quota.spec import Budget, FailureMode, QuotaPolicy, QuotaSettings, Rate, Unit
from extproc.quota.store import OpenAdmission, StoreUnavailable
from tests.redis_server import RedisServer

ACME = Identity(tenant="acme", plan="pro", verified=True)


@pytest.fixture(params=["single", "cluster"])
def redis_server(request: pytest.FixtureRequest, tmp_path):  # type: ignore[no-untyped-def]
    """The same suite on one redis-server and on a three-node Redis Cluster."""
    if request.param == "single":
        server = RedisServer(tmp_path / "redis").start()
        yield server
        server.stop()
        return
    url = request.getfixturevalue("redis_cluster_url")

    async def flush() -> None:
        client = client_from_url(url, 2.0)
        await client.flushall()
        await client.aclose()

    asyncio.run(flush())
    yield SimpleNamespace(url=url)
CHAT = Classification(WorkloadClass.INFERENCE, "gpt-4o", "openai-chat")
BODY = read_params({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 100})


def settings(*policies: QuotaPolicy, replicas: int = 1) -> QuotaSettings:
    return QuotaSettings(tuple(policies), default_max_tokens=100, replicas=replicas)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


async def store_for(server: RedisServer, now_ms: int | None = None, timeout: float = 2.0) -> RedisQuotaStore:
    """A store for functional tests: a timeout generous for a loaded CI box (outage tests make
    their own with short ones); connected first, as the sidecar does at start."""
    store = RedisQuotaStore(quota_client(server.url, timeout), timeout, CircuitBreaker(3, 0.5), now_ms)
    await store.start()
    return store


async def admit(store: RedisQuotaStore, s: QuotaSettings, lease: str, ident: Identity = ACME, body=BODY):
    return await store.admit(plan(s, ident, CHAT, "r1", body), lease)


async def test_rate_limit_admits_exactly_the_burst_and_denials_consume_nothing(redis_server) -> None:
    s = settings(QuotaPolicy("rpm", requests=Rate(5, 60_000, 5)),
                 QuotaPolicy("budget", budget=Budget(10_000, "day")))
    store = await store_for(redis_server, now_ms=ms(datetime(2026, 5, 1, 12, tzinfo=UTC)))
    results = [await admit(store, s, f"d{i}") for i in range(8)]
    assert [r.admitted for r in results] == [True] * 5 + [False] * 3
    denied = results[-1]
    assert denied.blocking is not None and denied.blocking.limit.dimension == "requests"
    assert denied.blocking.retry_ms == 12_000  # one request every 12 s at 5/min
    estimate = plan(s, ACME, CHAT, "r1", BODY).estimate_tokens
    budget_state = next(st for st in results[4].states if st.limit.dimension == "budget")
    assert budget_state.used == 4 * estimate  # the denied requests reserved nothing
    redis = client_from_url(redis_server.url, 2.0)
    assert int((await redis.hget("xq:{acme}:b:budget", "u")).decode()) == 5 * estimate
    await redis.aclose()
    await store.client.aclose()


def _worker(url: str, n: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> int:
        store = RedisQuotaStore(quota_client(url, 2.0), 2.0)
        await store.start()  # a cluster client learns its slots before the burst
        s = settings(QuotaPolicy("rpm", requests=Rate(50, 60_000, 50)),
                     QuotaPolicy("tokens", budget=Budget(10**9, "day")))
        results = await asyncio.gather(*(store.admit(plan(s, ACME, CHAT, "r1", BODY), f"{i}") for i in range(n)))
        await store.client.aclose()
        return sum(r.admitted for r in results)

    out.put(asyncio.run(run()))


def test_exactly_the_limit_across_processes(redis_server) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(redis_server.url, 100, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    admitted = sum(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert admitted == 50  # 400 concurrent attempts from 4 processes, limit 50

    async def budget_used() -> int:
        redis = client_from_url(redis_server.url, 2.0)
        used = int((await redis.hget("xq:{acme}:b:tokens", "u")).decode())
        await redis.aclose()
        return used

    estimate = plan(settings(QuotaPolicy("t", budget=Budget(1, "day"))), ACME, CHAT, "r1", BODY).estimate_tokens
    assert asyncio.run(budget_used()) == 50 * estimate  # nothing reserved by the 350 refused


async def test_no_boundary_burst(redis_server) -> None:
    """A fixed window lets 2x through across its boundary; GCRA does not."""
    s = settings(QuotaPolicy("rps", requests=Rate(10, 1000, 10)))
    t0 = ms(datetime(2026, 5, 1, 12, tzinfo=UTC))
    store = await store_for(redis_server, now_ms=t0 + 990)
    first = [await admit(store, s, f"a{i}") for i in range(20)]
    store._now = str(t0 + 1010)  # 20 ms later, past a "window boundary"
    second = [await admit(store, s, f"b{i}") for i in range(20)]
    assert sum(r.admitted for r in first) == 10
    assert sum(r.admitted for r in second) == 0
    store._now = str(t0 + 1990)  # a full period later: the whole burst again, no more
    assert sum([(await admit(store, s, f"c{i}")).admitted for i in range(20)]) == 10
    await store.client.aclose()


async def test_calendar_budget_resets_in_the_tenants_time_zone(redis_server) -> None:
    s = settings(QuotaPolicy("monthly", budget=Budget(500, "month", "Europe/Paris")))
    small = read_params({"model": "m", "messages": "hi", "max_tokens": 99})  # estimate 100
    # 31 Jan 23:30 UTC is already 1 Feb 00:30 in Paris.
    jan31 = datetime(2026, 1, 31, 22, 0, tzinfo=UTC)
    store = await store_for(redis_server, now_ms=ms(jan31))
    results = [await store.admit(plan(s, ACME, CHAT, "r1", small, now=jan31), f"j{i}") for i in range(6)]
    assert [r.admitted for r in results] == [True] * 5 + [False]
    blocking = results[-1].blocking
    assert blocking is not None and blocking.limit.dimension == "budget"
    assert blocking.reset_ms == 60 * 60 * 1000  # Paris midnight is 23:00 UTC
    feb = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)
    store._now = str(ms(feb))
    assert (await store.admit(plan(s, ACME, CHAT, "r1", small, now=feb), "feb")).admitted  # Feb in Paris
    await store.client.aclose()


async def test_lua_and_local_limiter_agree_on_calendar_periods(redis_server) -> None:
    from extproc.quota.local_store import _period

    for when in (datetime(2024, 2, 29, 23, 59, tzinfo=UTC), datetime(2026, 12, 31, 23, 0, tzinfo=UTC),
                 datetime(2026, 3, 29, 1, 30, tzinfo=UTC)):
        for period, offset in (("day", 0), ("month", 3600), ("month", -5 * 3600), ("day", 19800)):
            s = settings(QuotaPolicy("p", budget=Budget(10**9, period, "UTC")))
            p = plan(s, ACME, CHAT, "r1", BODY)
            limit = p.limits[0]
            p2 = replace(p, limits=(replace(limit, args=(limit.args[0], limit.args[1], period, str(offset))),))
            store = await store_for(redis_server, now_ms=ms(when))
            state = (await store.admit(p2, "x")).states[0]
            _, end = _period(period, ms(when), offset)
            assert state.reset_ms == end - ms(when), (when, period, offset)
            await store.client.aclose()
            redis = client_from_url(redis_server.url, 2.0)
            await redis.flushall()
            await redis.aclose()


async def test_concurrency_leases_release_idempotently_and_expire(redis_server) -> None:
    s = settings(QuotaPolicy("cc", concurrency=2, lease_ttl_ms=5_000))
    t0 = ms(datetime(2026, 5, 1, 12, tzinfo=UTC))
    store = await store_for(redis_server, now_ms=t0)
    p = plan(s, ACME, CHAT, "r1", BODY)
    a, b, c = [await store.admit(p, lease) for lease in ("l1", "l2", "l3")]
    assert (a.admitted, b.admitted, c.admitted) == (True, True, False)
    assert c.blocking is not None and c.blocking.limit.dimension == "concurrency"
    assert await store.settle(p, "l1", a, None) is True
    assert await store.settle(p, "l1", a, None) is False  # settled once only
    assert (await store.admit(p, "l4")).admitted
    store._now = str(t0 + 5_001)  # a crashed sidecar's leases (l2, l4) expire by TTL
    assert (await store.admit(p, "l5")).admitted and (await store.admit(p, "l6")).admitted
    await store.client.aclose()


async def test_settlement_trues_up_tokens(redis_server) -> None:
    s = settings(QuotaPolicy("day", budget=Budget(100_000, "day")), QuotaPolicy("tpm", tokens=Rate(10_000, 60_000, 10_000)))
    store = await store_for(redis_server, now_ms=ms(datetime(2026, 5, 1, 12, tzinfo=UTC)))
    p = plan(s, ACME, CHAT, "r1", BODY)
    adm = await store.admit(p, "d1")
    assert await store.settle(p, "d1", adm, actual_tokens=30)
    redis = client_from_url(redis_server.url, 2.0)
    assert int((await redis.hget("xq:{acme}:b:day", "u")).decode()) == 30
    await redis.aclose()
    after = await store.admit(p, "d2")
    tpm = next(st for st in after.states if st.limit.dimension == "tokens")
    assert tpm.used == 30  # the token rate was trued up too
    await store.client.aclose()


async def test_another_process_settles_from_the_recipe_and_only_once(redis_server) -> None:
    """The streamed-usage path: one worker admits, another settles from the handed-over recipe."""
    s = settings(QuotaPolicy("day", budget=Budget(100_000, "day"), concurrency=2))
    admitting = await store_for(redis_server, now_ms=ms(datetime(2026, 5, 1, 12, tzinfo=UTC)))
    settling = await store_for(redis_server, now_ms=ms(datetime(2026, 5, 1, 12, 1, tzinfo=UTC)))
    p = plan(s, ACME, CHAT, "r1", BODY)
    adm = await admitting.admit(p, "d-stream")
    recipe = SettleRecipe.from_json(settle_recipe(p, adm, "d-stream").to_json())
    assert await settling.settle_recipe(recipe, 42 - recipe.estimate_tokens)
    redis = client_from_url(redis_server.url, 2.0)
    assert int(await redis.hget("xq:{acme}:b:day", "u")) == 42
    assert await redis.zcard("xq:{acme}:c:day") == 0  # the lease went with it
    # A second settlement (the sweeper's, with the estimate) changes nothing.
    assert not await admitting.settle(p, "d-stream", adm, None)
    assert int(await redis.hget("xq:{acme}:b:day", "u")) == 42
    await redis.aclose()
    await admitting.client.aclose()
    await settling.client.aclose()


async def test_a_retried_settlement_is_applied_once_and_told_it_settled(redis_server) -> None:
    """A settlement whose reply was lost (timeout) is retried with the same nonce: the retry is
    told it settled, nothing is applied twice; a different settlement of the decision loses."""
    s = settings(QuotaPolicy("day", budget=Budget(100_000, "day")))
    store = await store_for(redis_server, now_ms=ms(datetime(2026, 5, 1, 12, tzinfo=UTC)))
    p = plan(s, ACME, CHAT, "r1", BODY)
    adm = await store.admit(p, "d-retry")
    recipe = settle_recipe(p, adm, "d-retry")
    delta = 50 - recipe.estimate_tokens
    assert await store.settle_recipe(recipe, delta, nonce="first")
    assert await store.settle_recipe(recipe, delta, nonce="first")  # the retry
    assert not await store.settle_recipe(recipe, 0, nonce="other")  # the other stream
    redis = client_from_url(redis_server.url, 2.0)
    assert int(await redis.hget("xq:{acme}:b:day", "u")) == 50
    await redis.aclose()
    await store.client.aclose()


async def test_an_admission_is_registered_for_the_sweeper_until_it_is_settled(redis_server) -> None:
    """An admitted request whose end should reach settlement is registered, in the admitting
    script, with the time it may be swept and its facts; settling removes it; a refusal
    registers nothing."""
    s = settings(QuotaPolicy("c", concurrency=1))
    now = ms(datetime(2026, 5, 1, 12, tzinfo=UTC))
    store = await store_for(redis_server, now_ms=now)
    p = plan(s, ACME, CHAT, "r1", BODY)
    redis = client_from_url(redis_server.url, 2.0)
    due_key, facts_key = open_keys("acme")
    assert (await store.admit(p, "d-open", OpenAdmission(60_000, '{"decision_id":"d-open"}'))).admitted
    assert await redis.zscore(due_key, "d-open") == now + 60_000
    assert await redis.hget(facts_key, "d-open") == b'{"decision_id":"d-open"}'
    refused = await store.admit(p, "d-refused", OpenAdmission(60_000, "{}"))
    assert not refused.admitted and await redis.zscore(due_key, "d-refused") is None
    assert await redis.pttl(due_key) > 0 and await redis.pttl(facts_key) > 0
    adm = await store.admit(plan(settings(QuotaPolicy("rpm", requests=Rate(10, 60_000, 10))), ACME, CHAT, "r1",
                                 BODY), "d-other", None)
    assert adm.admitted and await redis.zscore(due_key, "d-other") is None  # not registered: nothing asked
    assert await store.settle_recipe(settle_recipe(p, None, "d-open"), 0)
    assert await redis.zscore(due_key, "d-open") is None and await redis.hget(facts_key, "d-open") is None
    await redis.aclose()
    await store.client.aclose()


async def test_script_flush_and_restart_reload_scripts_without_errors(redis_server) -> None:
    s = settings(QuotaPolicy("rpm", requests=Rate(1000, 60_000, 1000)))
    store = await store_for(redis_server)
    assert (await admit(store, s, "1")).admitted
    redis = client_from_url(redis_server.url, 2.0)
    await redis.script_flush()
    await redis.aclose()
    assert (await admit(store, s, "2")).admitted  # NOSCRIPT → loaded again, no error
    await store.client.aclose()


async def test_outage_failure_modes_breaker_and_recovery(tmp_path) -> None:
    server = RedisServer(tmp_path / "r").start()
    closed = QuotaPolicy("strict", requests=Rate(100, 60_000, 100), on_store_failure=FailureMode.CLOSED)
    opened = QuotaPolicy("lenient", requests=Rate(100, 60_000, 100), on_store_failure=FailureMode.OPEN)
    local = QuotaPolicy("local", requests=Rate(10, 60_000, 10), on_store_failure=FailureMode.LOCAL)
    service = QuotaService(RedisQuotaStore(quota_client(server.url, 0.05), 0.05, CircuitBreaker(3, 0.3)),
                           LocalLimiter())
    try:
        ok = await service.admit(settings(closed), ACME, CHAT, "r1", BODY, "x")
        assert ok is not None and ok.admission.admitted and ok.admission.degraded is None
        server.pause()  # SIGSTOP: connections hang
        t = await service.admit(settings(closed), ACME, CHAT, "r1", BODY, "p1")
        assert t is not None and not t.admission.admitted and t.admission.degraded == "closed"
        t = await service.admit(settings(opened), ACME, CHAT, "r1", BODY, "p2")
        assert t is not None and t.admission.admitted and t.admission.degraded == "open"
        for i in range(3):  # the third consecutive failure opens the breaker
            await service.admit(settings(opened), ACME, CHAT, "r1", BODY, f"p{i}")
        assert service.store.breaker.state == "open"  # type: ignore[union-attr]  # now answers at once
        results = [await service.admit(settings(local, replicas=2), ACME, CHAT, "r1", BODY, f"l{i}")
                   for i in range(8)]
        assert [r.admission.admitted for r in results if r] == [True] * 5 + [False] * 3  # 10 / 2 replicas
        assert {r.admission.degraded for r in results if r} == {"local"}
        server.resume()
        await asyncio.sleep(0.35)  # breaker half-open: the next call probes and closes it
        back = await service.admit(settings(closed), ACME, CHAT, "r1", BODY, "back")
        assert back is not None and back.admission.admitted and back.admission.degraded is None
        server.kill()
        with pytest.raises(StoreUnavailable):
            await service.store.admit(plan(settings(closed), ACME, CHAT, "r1", BODY), "dead")  # type: ignore[union-attr]
        restarted = RedisServer(tmp_path / "r2", server.port).start()
        await asyncio.sleep(0.35)
        again = await service.admit(settings(closed), ACME, CHAT, "r1", BODY, "again")
        assert again is not None and again.admission.admitted and again.admission.degraded is None
        restarted.stop()
    finally:
        server.stop()
        await service.store.client.aclose()  # type: ignore[union-attr]


async def test_skewed_sidecar_clocks_do_not_change_results(redis_server, monkeypatch) -> None:
    """Redis TIME decides; each store learns its offset to it, so deadlines hold under skew."""
    s = settings(QuotaPolicy("rpm", requests=Rate(10, 60_000, 10)))
    ahead, behind = await store_for(redis_server), await store_for(redis_server)
    real = time.time
    admitted = 0
    for i in range(10):
        with monkeypatch.context() as m:
            m.setattr(time, "time", lambda: real() + 3600)  # this replica's clock is an hour ahead
            admitted += (await admit(ahead, s, f"a{i}")).admitted
        with monkeypatch.context() as m:
            m.setattr(time, "time", lambda: real() - 3600)  # and this one's an hour behind
            admitted += (await admit(behind, s, f"b{i}")).admitted
    assert admitted == 10
    assert behind._deadline() != ""  # it learnt the offset and sends deadlines Redis accepts
    await ahead.client.aclose()
    await behind.client.aclose()


async def test_tenant_names_that_would_break_hash_tags_are_encoded(redis_server) -> None:
    odd = Identity(tenant="we{ird}", verified=True)
    s = settings(QuotaPolicy("rpm", requests=Rate(2, 60_000, 2)))
    store = await store_for(redis_server)
    p = plan(s, odd, CHAT, "r1", BODY)
    assert p.limits[0].key == "xq:{we%7Bird%7D}:r:rpm"
    assert (await store.admit(p, "1")).admitted
    await store.client.aclose()


async def test_no_tenant_can_spend_another_tenants_quota(redis_server) -> None:
    """Regression (hardening #3): "Victim Corp" was keyed as ``h-<sha256 prefix>``, which is also a
    plain tenant name: that tenant exhausted the victim's rate."""
    import hashlib

    victim = Identity(tenant="Victim Corp", verified=True)
    attacker = Identity(tenant="h-" + hashlib.sha256(b"Victim Corp").hexdigest()[:32], verified=True)
    s = settings(QuotaPolicy("rpm", requests=Rate(3, 60_000, 3)))
    store = await store_for(redis_server)
    spent = [await admit(store, s, f"a{i}", attacker) for i in range(5)]
    assert [r.admitted for r in spent] == [True] * 3 + [False] * 2
    assert (await admit(store, s, "v1", victim)).admitted
    await store.client.aclose()


def test_units_other_than_tokens_charge_their_default_cost() -> None:
    s = settings(QuotaPolicy("video", budget=Budget(100, "day", unit=Unit.SECONDS, default_cost=8)))
    p = plan(s, ACME, Classification(WorkloadClass.VIDEO, "sora-2", "x"), "r1", read_params({"prompt": "cat"}))
    assert p.limits[0].cost == 8


@pytest.mark.parametrize(("limit", "period_ms"), [(6, 1000), (9, 60_000), (14, 60_000), (7, 3_600_000), (3, 1000)])
async def test_gcra_admits_exactly_the_burst_for_awkward_limits(redis_server, limit, period_ms) -> None:
    """period / limit is not a whole number of ms: float rounding must not cost a request."""
    s = settings(QuotaPolicy("awkward", requests=Rate(limit, period_ms, limit)))
    t0 = ms(datetime(2026, 5, 1, 12, tzinfo=UTC)) + 123
    store = await store_for(redis_server, now_ms=t0)
    redis_results = [await admit(store, s, f"r{i}") for i in range(limit + 2)]
    local = LocalLimiter(clock=lambda: t0 / 1000)
    local_results = [await local.admit(plan(s, ACME, CHAT, "r1", BODY), f"l{i}") for i in range(limit + 2)]
    for name, results in (("redis", redis_results), ("local", local_results)):
        assert [r.admitted for r in results] == [True] * limit + [False, False], name
        assert results[limit - 1].states[0].remaining == 0 and results[0].states[0].remaining == limit - 1
    await store.client.aclose()


async def test_the_refusal_reported_is_the_one_that_admits_last(redis_server) -> None:
    s = settings(QuotaPolicy("both", requests=Rate(1, 60_000, 1), budget=Budget(300, "day")))
    store = await store_for(redis_server, now_ms=ms(datetime(2026, 5, 1, 12, tzinfo=UTC)))
    small = read_params({"model": "m", "messages": "hi", "max_tokens": 199})  # estimate 200
    assert (await admit(store, s, "1", body=small)).admitted
    refused = await admit(store, s, "2", body=small)  # rate (60 s) and budget (12 h) both refuse
    assert refused.blocking is not None and refused.blocking.limit.dimension == "budget"
    huge = await admit(store, settings(QuotaPolicy("tiny", budget=Budget(100, "day"))), "3", body=small)
    assert huge.blocking is not None and huge.blocking.retry_ms == -1  # more than the whole budget
    await store.client.aclose()


async def test_admissions_that_reach_a_paused_redis_late_consume_nothing(tmp_path) -> None:
    server = RedisServer(tmp_path / "r").start()
    s = settings(QuotaPolicy("cc", concurrency=10, budget=Budget(10**6, "day")))
    store = RedisQuotaStore(quota_client(server.url, 0.05), 0.05, CircuitBreaker(100, 0.1))
    try:
        assert (await admit(store, s, "calibrate")).admitted  # learns the Redis clock offset
        server.pause()
        for i in range(5):
            with pytest.raises(StoreUnavailable):
                await admit(store, s, f"late{i}")
        time.sleep(0.6)  # the five scripts sit in Redis's socket buffers past their deadline
        server.resume()
        redis = Redis.from_url(server.url)
        await asyncio.sleep(0.3)
        assert await redis.zcard("xq:{acme}:c:cc") == 1  # only the calibrating request's lease
        used = int((await redis.hget("xq:{acme}:b:cc", "u")).decode())
        assert used == plan(s, ACME, CHAT, "r1", BODY).estimate_tokens
        await redis.aclose()
    finally:
        await store.client.aclose()
        server.stop()


async def test_adapters_that_never_see_the_end_take_no_leases(redis_server) -> None:
    s = settings(QuotaPolicy("cc", concurrency=1, requests=Rate(100, 60_000, 100)))
    service = QuotaService(await store_for(redis_server))
    for i in range(3):  # ext_authz: no lease, so no cap to leak
        ticket = await service.admit(s, ACME, CHAT, "r1", BODY, f"authz{i}", leases=False)
        assert ticket is not None and ticket.admission.admitted
        assert {st.limit.dimension for st in ticket.admission.states} == {"requests"}
    await service.store.client.aclose()  # type: ignore[union-attr]


def test_breaker_probe_is_released_when_cancelled() -> None:
    clock = [0.0]
    breaker = CircuitBreaker(threshold=1, open_seconds=1.0, clock=lambda: clock[0])
    breaker.failure()
    assert not breaker.allow()
    clock[0] = 1.5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.release()  # the probe was cancelled (client went away)
    assert breaker.allow()  # the next caller may probe


async def test_global_limits_are_shared_and_refusals_consume_nothing_anywhere(redis_server) -> None:
    """A model's total capacity (global) next to per-tenant budgets: a second script per
    request; when either side refuses, the side that admitted is refunded."""
    s = settings(QuotaPolicy("gpt4o-capacity", model="gpt-4o", scope="global", requests=Rate(5, 60_000, 5)),
                 QuotaPolicy("tenant-day", budget=Budget(10**6, "day")))
    store = await store_for(redis_server, now_ms=ms(datetime(2026, 5, 1, 12, tzinfo=UTC)))
    tenants = [Identity(tenant=f"t{i}", plan="pro") for i in range(3)]
    results = []
    for i in range(9):
        ident = tenants[i % 3]
        results.append((ident.tenant, await store.admit(plan(s, ident, CHAT, "r1", BODY), f"g{i}")))
    assert sum(a.admitted for _, a in results) == 5  # shared by all tenants
    refused = [a for _, a in results if not a.admitted]
    assert all(a.blocking is not None and a.blocking.limit.policy.name == "gpt4o-capacity" for a in refused)
    estimate = plan(s, ACME, CHAT, "r1", BODY).estimate_tokens
    raw = client_from_url(redis_server.url, 2.0)
    for tenant in ("t0", "t1", "t2"):
        admitted = sum(a.admitted for t, a in results if t == tenant)
        used = await raw.hget(f"xq:{{{tenant}}}:b:tenant-day", "u")
        assert int(used or 0) == admitted * estimate, tenant  # refunded when the global side refused
    await raw.aclose()
    await store.client.aclose()


async def test_shadow_policies_decide_and_count_but_never_block(redis_server) -> None:
    shadow = QuotaPolicy("shadow-rpm", requests=Rate(2, 60_000, 2), enforce=False)
    service = QuotaService(await store_for(redis_server, now_ms=ms(datetime(2026, 5, 1, 12, tzinfo=UTC))))
    tickets = [await service.admit(settings(shadow), ACME, CHAT, "r1", BODY, f"s{i}") for i in range(4)]
    assert all(t is not None and t.admission.admitted for t in tickets)
    verdicts = [t.admission.states[0].allowed for t in tickets if t]
    assert verdicts == [True, True, False, False]  # what enforcing would have done, recorded
    await service.store.client.aclose()  # type: ignore[union-attr]


async def test_lean_client_authenticates_selects_its_db_and_refuses_a_wrong_password(tmp_path) -> None:
    from extproc.quota.resp import LeanRedis

    server = RedisServer(tmp_path / "auth").start()
    setup = client_from_url(server.url, 2.0)
    await setup.config_set("requirepass", "s3cret")
    await setup.aclose()
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/2"
        client = quota_client(url, 2.0)
        assert isinstance(client, LeanRedis)  # a single node: the lean client
        store = RedisQuotaStore(client, 2.0)
        s = settings(QuotaPolicy("rpm", requests=Rate(2, 60_000, 2)))
        assert [(await admit(store, s, str(i))).admitted for i in range(3)] == [True, True, False]
        raw = client_from_url(url, 2.0)
        assert await raw.exists("xq:{acme}:r:rpm") == 1  # in db 2, where the URL said
        await raw.aclose()
        await client.aclose()
        wrong = RedisQuotaStore(quota_client(f"redis://:nope@127.0.0.1:{server.port}/0", 2.0), 2.0)
        with pytest.raises(StoreUnavailable):
            await admit(wrong, s, "x")
        await wrong.client.aclose()
    finally:
        server.stop()


async def test_lean_client_drops_a_connection_that_stopped_answering(tmp_path) -> None:
    """A connection whose oldest call has waited past STALE_S is closed, not reused forever
    (a Redis host gone without a reset would otherwise take every Nth call down)."""
    from extproc.quota import resp

    server = RedisServer(tmp_path / "stale").start()
    client = resp.LeanRedis(server.url, 1.0, connections=1)
    try:
        assert await client.execute("PING") == b"PONG"
        first = client._slots[0]
        server.pause()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.execute("PING")
        await asyncio.sleep(resp.STALE_S + 0.2)
        with pytest.raises(TimeoutError):  # still paused: but on a new connection
            async with asyncio.timeout(0.2):
                await client.execute("PING")
        assert first is not None and first.closed and client._slots[0] is not first
        server.resume()
        assert await client.execute("PING") == b"PONG"
    finally:
        server.resume()
        await client.aclose()
        server.stop()
