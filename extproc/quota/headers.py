"""Rate-limit headers and denial details from an admission (pure).

OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for clients
that know them, and the IETF ``RateLimit-Policy`` / ``RateLimit`` fields
(draft-ietf-httpapi-ratelimit-headers) for everyone else.
"""

from __future__ import annotations

import math
from typing import Any

from extproc.domain.reasons import Reason
from extproc.quota.store import Admission, LimitState

_REASON = {"requests": Reason.RATE_LIMITED, "tokens": Reason.RATE_LIMITED,
           "budget": Reason.BUDGET_EXHAUSTED, "concurrency": Reason.CONCURRENCY_LIMITED}


def duration(ms: int) -> str:
    """OpenAI's reset format: ``250ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = math.ceil(ms / 1000)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


def _name(state: LimitState) -> str:
    return f"{state.limit.policy.name}-{state.limit.dimension}"


def _ietf(state: LimitState) -> list[tuple[str, str]]:
    window = {"day": 86400, "month": 2592000, "in-flight": 0}.get(state.limit.window)
    w = window if window is not None else int(state.limit.window.rstrip("s"))
    policy = f'"{_name(state)}";q={state.limit.limit}' + (f";w={w}" if w else "")
    current = f'"{_name(state)}";r={max(state.remaining, 0)};t={math.ceil(max(state.reset_ms, 0) / 1000)}'
    return [("ratelimit-policy", policy), ("ratelimit", current)]


def _openai(state: LimitState) -> list[tuple[str, str]]:
    dim = "tokens" if state.limit.dimension in ("tokens", "budget") else "requests"
    return [
        (f"x-ratelimit-limit-{dim}", str(state.limit.limit)),
        (f"x-ratelimit-remaining-{dim}", str(max(state.remaining, 0))),
        (f"x-ratelimit-reset-{dim}", duration(state.reset_ms if state.allowed else max(state.retry_ms, 0))),
    ]


def denial(admission: Admission) -> tuple[Reason, str, list[tuple[str, str]], dict[str, Any]]:
    """Reason, message, headers and JSON details for an admission that was refused."""
    state = admission.blocking
    assert state is not None
    limit = state.limit
    headers = _openai(state) + _ietf(state)
    if state.retry_ms >= 0:
        headers.append(("retry-after", str(max(1, math.ceil(state.retry_ms / 1000)))))
    if state.retry_ms < 0:
        message = (f"this request alone ({limit.cost} {limit.dimension}) exceeds the burst of "
                   f"policy {limit.policy.name!r}; it can never be admitted")
    elif limit.dimension == "budget":
        period = {"day": "daily", "month": "monthly"}.get(limit.window, limit.window)
        message = (f"{period} budget of policy {limit.policy.name!r} exhausted: "
                   f"{state.used} of {limit.limit} used; resets in {duration(state.reset_ms)}")
    elif limit.dimension == "concurrency":
        message = (f"{state.used} requests in flight; "
                   f"the limit of policy {limit.policy.name!r} is {limit.limit}")
    else:
        message = (f"{limit.dimension} rate of policy {limit.policy.name!r} exceeded: {limit.limit} per "
                   f"{limit.window}; retry in {duration(state.retry_ms)}")
    details = {
        "policy": limit.policy.name,
        "dimension": limit.dimension,
        "limit": limit.limit,
        "window": limit.window,
        "used": state.used,
        "remaining": max(state.remaining, 0),
        "reset_seconds": math.ceil(max(state.reset_ms, 0) / 1000),
    }
    if state.retry_ms >= 0:
        details["retry_after_seconds"] = max(1, math.ceil(state.retry_ms / 1000))
    return _REASON[limit.dimension], message, headers, details


def allowed(admission: Admission) -> list[tuple[str, str]]:
    """The remaining quota of the tightest request and token limits, for the response."""
    headers: list[tuple[str, str]] = []
    tightest: LimitState | None = None
    for dims in (("requests",), ("tokens", "budget")):
        states = [s for s in admission.states if s.limit.dimension in dims and s.limit.policy.enforce]
        if states:
            state = min(states, key=lambda s: s.remaining / max(s.limit.limit, 1))
            headers += _openai(state)
            if tightest is None or state.remaining / max(state.limit.limit, 1) < \
                    tightest.remaining / max(tightest.limit.limit, 1):
                tightest = state
    if tightest is not None:
        headers += _ietf(tightest)
    return headers
