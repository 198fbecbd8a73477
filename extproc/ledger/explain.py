"""The story of one decision in plain words, from its records (pure).

``extproc explain DECISION_ID`` prints it; ``/v1/decisions/{id}`` returns it next to the
records as JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime

from extproc.domain.reasons import Reason
from extproc.ledger.query import Found
from extproc.ledger.records import SOURCE_NAMES, DecisionRecord, PolicyEvaluation, UsageRecord, end_name

_WHY = {
    401: "the caller did not prove who it is (authentication failed)",
    403: "the caller is known but not allowed to do this (authorization)",
    429: "a quota limit was reached",
    404: "the gateway has nowhere to send this request",
    413: "the request body is larger than the gateway accepts",
    400: "the request body is not valid JSON",
    503: "the gateway could not decide safely (a dependency was unavailable)",
}
_DEGRADED = {
    "open": "the quota store (Redis) was unreachable and the policies say fail open: the request "
            "was admitted without its quotas being checked or charged",
    "closed": "the quota store (Redis) was unreachable and a policy says fail closed: the request "
              "was refused rather than admitted unchecked",
    "local": "the quota store (Redis) was unreachable: an in-process limiter (limit ÷ replicas) "
             "decided instead of the shared counters",
}


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(ms: int) -> str:
    if ms < 0:
        return "never (the request alone is larger than the limit)"
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _policy_line(p: PolicyEvaluation, deciding: str) -> str:
    verdict = "within the limit" if p.allowed else "OVER the limit"
    tail = "" if p.enforced else " (shadow policy: reported, never refuses)"
    line = (f"  - {p.policy} ({p.dimension}, {p.limit} per {p.window}): this request needed {p.cost}, "
            f"{p.used} used, {p.remaining} left, frees up in {_duration(p.reset_ms)} → {verdict}{tail}")
    if not p.allowed and p.enforced and p.policy == deciding:
        line += f"; it would fit again in {_duration(p.retry_ms)}"
    return line


def explain(found: Found, decision_id: str, allow_sample: float | None = None) -> str:
    d, u = found.decision, found.usage
    if d is None and u is None:
        sampled = (f" Allowed decisions are kept for one request in {round(1 / allow_sample)}."
                   if allow_sample else "")
        return (f"No record of decision {decision_id}: it is unknown, expired, or an allowed decision "
                f"that was not sampled.{sampled}")
    lines = [] if d is None else _decision_lines(d)
    if d is None:
        lines.append(f"Decision {decision_id}: allowed (its decision record was not sampled; its "
                     f"usage record follows).")
    if u is not None:
        lines += _usage_lines(u)
    elif d is not None and d.allowed:
        lines.append("Usage: no usage record yet (the request may still be running, or records of "
                     "allowed decisions are written only for sampled ones).")
    return "\n".join(lines)


def _decision_lines(d: DecisionRecord) -> list[str]:
    outcome = "ALLOWED" if d.allowed else f"DENIED with HTTP {d.status} ({d.reason})"
    lines = [f"Decision {d.decision_id} at {_when(d.time_unix_ms)} via {d.adapter}, listener "
             f"{d.listener!r}: {outcome}."]
    if not d.allowed:
        lines.append(f"Why: {_WHY.get(d.status, 'see the reason code')}: {d.message}")
    who = (f"tenant {d.tenant!r}, subject {d.subject!r}" + (f", plan {d.plan!r}" if d.plan else "")
           + (f", issuer {d.issuer}" if d.issuer else ""))
    if d.verified:
        lines.append(f"Who: {who}; token verified" + (f", scopes {' '.join(d.scopes)}" if d.scopes else "")
                     + ".")
    elif d.tenant:
        lines.append(f"Who: {who} (no verified token: anonymous listener).")
    elif d.reason != Reason.ALLOWED.value and d.status == 401:
        lines.append("Who: unknown; the token was rejected before any claim was trusted.")
    rule = f" by rule {d.classification_rule!r}" if d.classification_rule else ""
    model = f", model {d.model_requested!r}" if d.model_requested else ""
    if d.status == 401 or (d.workload_class == "unknown" and not d.classification_rule and not d.allowed
                           and d.reason != "unknown_workload"):
        what = "not classified (refused before classification)"
    else:
        what = f"classified as {d.workload_class}{rule}{model}"
    lines.append(f"What: {d.method} {d.path} (host {d.host or '-'}), {what}.")
    if d.route:
        rewritten = d.model_served and d.model_served != d.model_requested
        served = f", model served {d.model_served!r}" if rewritten else ""
        lines.append(f"Route: entry {d.route!r} of routing table version {d.route_version} → upstream "
                     f"{d.upstream}{served}.")
    if d.policies:
        lines.append(f"Quota policies evaluated (estimate for this request: {d.estimate_tokens} tokens):")
        lines += [_policy_line(p, d.deciding_policy) for p in d.policies]
    elif d.allowed:
        lines.append("Quota: no quota policy applied to this request.")
    if d.deciding_policy and not d.allowed:
        kind = "quota policy" if any(p.policy == d.deciding_policy for p in d.policies) else "access rule"
        lines.append(f"Decided by: {kind} {d.deciding_policy!r}.")
    if d.max_tokens_clamped:
        lines.append("The token budget had too little left for the request's max_tokens: it was lowered "
                     "to what remained and the request admitted.")
    if d.degraded:
        lines.append(f"Degraded: {_DEGRADED.get(d.degraded, d.degraded)}.")
    if d.trace_id:
        lines.append(f"Trace: {d.trace_id}")
    return lines


def _usage_lines(u: UsageRecord) -> list[str]:
    source = SOURCE_NAMES.get(u.source, "unknown")
    t = u.tokens
    how = {
        "reported": "as the upstream reported it",
        "estimated": "ESTIMATED (no usage was reported: the prompt's share of the reservation plus "
                     "the completion seen)",
        "upstream_error": "the upstream answered with an error, so nothing was charged",
        "configured": "no tokens to count: the configured cost of the class",
    }[source] if source in ("reported", "estimated", "upstream_error", "configured") else source
    lines = [f"Usage: {t.prompt} prompt + {t.completion} completion = {t.total} tokens"
             + (f" ({t.cached} cached, {t.reasoning} reasoning)" if t.cached or t.reasoning else "")
             + f", {how}."]
    if u.cost_unit:
        lines.append(f"Cost: {u.cost_units} {u.cost_unit}.")
    lines.append(f"Charged to the tenant's token quotas: {u.charged_tokens} tokens"
                 + (f" (quota store degraded: {u.degraded})" if u.degraded else "") + ".")
    timing = f"first byte after {u.ttfb_ms} ms" if u.ttfb_ms else "no response seen"
    if u.streamed and u.ttft_ms:
        timing += f", first token after {u.ttft_ms} ms"
    lines.append(f"Response: status {u.status or '-'}, {'streamed' if u.streamed else 'not streamed'}, "
                 f"{timing}, ended {end_name(u)!r} after {u.total_ms} ms; served by {u.upstream or '-'} as "
                 f"model {u.model_served or u.model_requested or '-'}.")
    return lines
