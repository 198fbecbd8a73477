"""Quota planning and headers (pure)."""

from __future__ import annotations

import pytest

from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.identity import Identity
from extproc.domain.reasons import Reason
from extproc.quota import headers
from extproc.quota.plan import plan, tenant_tag, utc_offset_seconds
from extproc.quota.spec import Budget, QuotaPolicy, QuotaSettings, Rate
from extproc.quota.store import Admission, LimitState

ACME = Identity(tenant="acme", plan="pro")
CHAT = Classification(WorkloadClass.INFERENCE, "gpt-4o", "r")


@pytest.mark.parametrize(("ms", "text"), [(0, "0ms"), (250, "250ms"), (1000, "1s"), (1001, "2s"),
                                          (60_000, "1m0s"), (360_000, "6m0s"), (3_723_000, "1h2m3s")])
def test_openai_duration_format(ms: int, text: str) -> None:
    assert headers.duration(ms) == text


def test_which_policies_apply() -> None:
    s = QuotaSettings((
        QuotaPolicy("pro", plan="pro", requests=Rate(10, 60_000, 10)),
        QuotaPolicy("gpt4", model="gpt-4*", tokens=Rate(1000, 60_000, 1000)),
        QuotaPolicy("video", workload=WorkloadClass.VIDEO, budget=Budget(60, "day")),
        QuotaPolicy("one-tenant", tenant="globex", concurrency=1),
    ))
    names = [(lm.policy.name, lm.dimension) for lm in plan(s, ACME, CHAT, "r1").limits]
    assert names == [("pro", "requests"), ("gpt4", "tokens")]
    assert not plan(s, Identity(tenant="x", plan="free"), Classification(WorkloadClass.RAG, "e", "r"), None)
    keys = {lm.key for lm in plan(s, ACME, CHAT, "r1").limits}
    assert keys == {"xq:{acme}:r:pro", "xq:{acme}:t:gpt4"}


def test_tenant_tags() -> None:
    assert tenant_tag("acme-corp.eu") == "acme-corp.eu"
    assert tenant_tag("a}b") == "a%7Db"  # never the hash tag's delimiters
    assert tenant_tag("global:pro") == "global%3Apro"  # never a global policy's tag


def test_tenant_tags_are_one_to_one() -> None:
    """Regression (hardening #3): names outside the key alphabet were hashed to ``h-<hex>``, itself
    a valid plain name, so the tenant ``h-…`` spent "Victim Corp"'s quota. Every IdP string now
    has its own tag, and the tag decodes back to the tenant."""
    import hashlib
    from urllib.parse import unquote

    victim = "Victim Corp"
    old_tag = "h-" + hashlib.sha256(victim.encode()).hexdigest()[:32]
    assert tenant_tag(old_tag) != tenant_tag(victim)
    tenants = [victim, old_tag, "a b", "a%20b", "a+b", "%", "%25", "\uff41\uff43\uff4d\uff45", "acme", "ACME", "a\u0000b",
               "x" * 256, "é", "e\u0301", "{acme}", "a:b", "a%3Ab", "\ud800", "~", "_", "@"]
    tags = [tenant_tag(t) for t in tenants]
    assert len(set(tags)) == len(tenants)
    for tenant, tag in zip(tenants, tags, strict=True):
        assert all(c not in tag for c in "{}: ") and tag.isascii()
        assert unquote(tag, errors="surrogatepass") == tenant


def test_utc_offsets_follow_dst() -> None:
    from datetime import UTC, datetime

    assert utc_offset_seconds("UTC") == 0
    assert utc_offset_seconds("Europe/Paris", datetime(2026, 1, 15, tzinfo=UTC)) == 3600
    assert utc_offset_seconds("Europe/Paris", datetime(2026, 7, 15, tzinfo=UTC)) == 7200
    # The present's offset is computed once a minute: the same as computed for this instant.
    for zone in ("Europe/Paris", "Asia/Kolkata", "America/St_Johns"):
        assert utc_offset_seconds(zone) == utc_offset_seconds(zone) == utc_offset_seconds(zone, datetime.now(UTC))


def _state(policy: QuotaPolicy, dim: str, allowed: bool, remaining: int, retry: int, reset: int, used: int):
    s = QuotaSettings((policy,))
    limit = next(lm for lm in plan(s, ACME, CHAT, "r1").limits if lm.dimension == dim)
    return LimitState(limit, allowed, remaining, retry, reset, used)


def test_denial_for_a_request_that_can_never_fit() -> None:
    p = QuotaPolicy("tpm", tokens=Rate(100, 60_000, 100))
    st = _state(p, "tokens", False, 100, -1, 0, 0)
    reason, message, hdrs, details = headers.denial(Admission(False, (st,), st, 0))
    assert reason is Reason.RATE_LIMITED and "can never be admitted" in message
    assert "retry-after" not in dict(hdrs) and "retry_after_seconds" not in details


def test_allowed_headers_name_the_tightest_limits() -> None:
    loose = _state(QuotaPolicy("a", requests=Rate(100, 60_000, 100)), "requests", True, 90, 0, 6000, 10)
    tight = _state(QuotaPolicy("b", requests=Rate(10, 1000, 10)), "requests", True, 1, 0, 900, 9)
    out = dict(headers.allowed(Admission(True, (loose, tight), None, 0)))
    assert out["x-ratelimit-limit-requests"] == "10" and out["x-ratelimit-remaining-requests"] == "1"
    assert out["ratelimit"].startswith('"b-requests";r=1')
