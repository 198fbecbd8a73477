"""Authorization: which verified identities may do which work (pure).

Every access rule whose ``match`` fits the request applies; all of them must
pass. The first failing requirement decides the 403 and names the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.identity import Identity
from extproc.domain.reasons import Reason


@dataclass(frozen=True, slots=True)
class AccessRule:
    name: str
    workload: WorkloadClass | None = None
    model: str | None = None  # exact, or prefix ending in "*"
    listener: str | None = None
    scopes: frozenset[str] = frozenset()  # all of
    roles: frozenset[str] = frozenset()  # any of
    plans: frozenset[str] = frozenset()  # any of
    issuers: frozenset[str] = frozenset()  # any of (issuer names from config)

    def applies(self, cls: Classification, listener: str) -> bool:
        if self.workload is not None and not cls.workload.within(self.workload):
            return False
        if self.listener is not None and listener != self.listener:
            return False
        if self.model is not None:
            if cls.model is None:
                return False
            if self.model.endswith("*"):
                return cls.model.startswith(self.model[:-1])
            return cls.model == self.model
        return True


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: Reason
    rule: str
    message: str


def authorize(
    rules: Sequence[AccessRule], identity: Identity, cls: Classification, listener: str
) -> Refusal | None:
    for rule in rules:
        if not rule.applies(cls, listener):
            continue
        if rule.issuers and identity.issuer_name not in rule.issuers:
            return Refusal(Reason.ISSUER_NOT_ALLOWED, rule.name,
                           f"tokens from issuer {identity.issuer_name or '-'!r} are not accepted here")
        missing = rule.scopes - identity.scopes
        if missing:
            return Refusal(Reason.INSUFFICIENT_SCOPE, rule.name,
                           f"this request needs scope(s): {', '.join(sorted(missing))}")
        if rule.roles and not (rule.roles & identity.roles):
            return Refusal(Reason.ROLE_NOT_ALLOWED, rule.name,
                           f"this request needs one of the roles: {', '.join(sorted(rule.roles))}")
        if rule.plans and identity.plan not in rule.plans:
            return Refusal(Reason.PLAN_NOT_ALLOWED, rule.name,
                           f"plan {identity.plan or '-'!r} may not do this; "
                           f"allowed plans: {', '.join(sorted(rule.plans))}")
    return None
