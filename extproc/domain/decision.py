"""The outcome of the request-side pipeline, and the error body a denial carries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from extproc.domain.classify import Classification, WorkloadClass
from extproc.domain.identity import Identity
from extproc.domain.reasons import Reason

if TYPE_CHECKING:
    from extproc.routing.table import Route


class Accounting(Enum):
    """How an allowed request's end reaches settlement (envoy/README.md "Usage accounting")."""

    #: Nothing to settle or record, or the deciding adapter records it at the decision.
    NONE = ""
    #: Envoy's access log brings the request's end (status, timings) to settlement.
    LOGGED = "log"
    #: The same, and Envoy's usage reader reads the response body for the usage it reports.
    READ = "read"


@dataclass(frozen=True, slots=True)
class Decision:
    """Allow (with an upstream pool) or deny (with a reason). Adapters turn it into Envoy messages."""

    decision_id: str
    reason: Reason
    message: str = ""
    workload: WorkloadClass = WorkloadClass.UNKNOWN
    model: str | None = None
    rule: str | None = None
    tenant: str | None = None
    #: The Envoy cluster the request goes to: a pool, or ``pool~fallback`` (a failover cluster).
    upstream: str | None = None
    #: The routing table entry that matched, and the table's version.
    route: str | None = None
    route_version: int | None = None
    #: The model name the upstream receives (aliases resolved, the entry's rewrite applied).
    model_served: str | None = None
    #: Retries Envoy may make through the route's fallbacks.
    retries: int = 0
    #: Extra headers a denial carries to the client (e.g. ``www-authenticate``).
    headers: tuple[tuple[str, str], ...] = ()
    #: The access rule or quota policy that denied, for the error body and the record.
    policy: str | None = None
    #: Extra fields of the denial's ``error`` object (limit, window, used, reset…).
    details: tuple[tuple[str, Any], ...] = ()
    #: Headers for the client's response on an allowed request (remaining quota…).
    response_headers: tuple[tuple[str, str], ...] = ()
    #: Opaque to the adapters: what quota settlement needs (``quota.service.QuotaTicket``).
    quota: Any = None
    #: Set when a dependency was down and a declared failure mode decided ("open", "local"…).
    degraded: str | None = None
    #: A new request body for the upstream (e.g. ``max_tokens`` clamped to the budget left).
    body_rewrite: bytes | None = None
    #: How settlement (in whichever process gets the access-log entry) settles the quota:
    #: ``quota.recipe.SettleRecipe`` JSON (None: nothing in the shared store to settle).
    recipe: str | None = None
    #: How the request's end reaches settlement, which settles it with ``recipe`` and writes
    #: its usage record.
    accounting: Accounting = Accounting.NONE
    #: A class measured in other units than tokens: the cost unit and the units charged.
    cost: tuple[str, int] | None = None
    #: For the decision record: the verified identity (never the token), every quota limit the
    #: admission evaluated (``quota.store.Admission``), and the prompt's share of the estimate.
    identity: Identity | None = None
    admission: Any = None
    prompt_tokens: int = 0
    clamped: bool = False

    @property
    def estimate_tokens(self) -> int:
        """The tokens the admission reserved (0 without a quota ticket)."""
        return self.quota.plan.estimate_tokens if self.quota is not None else 0

    @property
    def counts_tokens(self) -> bool:
        """A token rate or budget applied: the request's usage moves the counters."""
        return self.quota is not None and self.quota.plan.counts_tokens

    @property
    def allowed(self) -> bool:
        return self.reason is Reason.ALLOWED

    @property
    def status(self) -> int:
        return self.reason.status

    def upstream_headers(self) -> list[tuple[str, str]]:
        """Headers an allowed request carries to the upstream (and the router reads)."""
        headers = [
            ("x-extproc-decision-id", self.decision_id),
            ("x-extproc-class", self.workload.value),
        ]
        if self.upstream:
            headers.append(("x-extproc-upstream", self.upstream))
        if self.route:
            headers.append(("x-extproc-route", self.route))
            headers.append(("x-extproc-route-version", str(self.route_version)))
        if self.retries:
            # The gateway route with the fallback retry policy matches on x-extproc-failover;
            # x-envoy-max-retries bounds the retries to this chain's length (envoy/README.md).
            headers.append(("x-extproc-failover", str(self.retries)))
            headers.append(("x-envoy-max-retries", str(self.retries)))
        if self.accounting is Accounting.READ:
            headers.append(("x-extproc-usage", "read"))  # routes to the usage reader (envoy/README.md)
        if self.tenant:
            headers.append(("x-extproc-tenant", self.tenant))
        if self.model:
            headers.append(("x-extproc-model", self.model))
        if self.model_served and self.model_served != self.model:
            headers.append(("x-extproc-model-served", self.model_served))
        return headers

    def metadata(self) -> dict[str, str]:
        """The same facts for Envoy dynamic metadata: access logs, settlement (which may run in
        another process: everything the usage record needs), and the response headers Envoy adds
        from it (``hdr.NAME``, envoy/README.md "Response headers")."""
        meta = {
            "decision_id": self.decision_id,
            "reason": self.reason.value,
            "class": self.workload.value,
        }
        accounted = self.accounting is not Accounting.NONE
        for key, value in (
            ("tenant", self.tenant),
            ("model", self.model),
            ("upstream", self.upstream),
            ("route", self.route),
            ("route_version", None if self.route_version is None else str(self.route_version)),
            ("model_served", self.model_served),
            ("rule", self.rule),
            ("settle", self.recipe),
            ("subject", self.identity.subject if self.identity else None),
            ("plan", self.identity.plan if self.identity else None),
            ("degraded", self.degraded),
            # What settlement needs for the usage record.
            ("usage", self.accounting.value),
            ("prompt_tokens", str(self.prompt_tokens) if accounted else None),
            ("estimate_tokens", str(self.estimate_tokens) if accounted and self.counts_tokens else None),
            ("cost_unit", self.cost[0] if accounted and self.cost else None),
            ("cost_units", str(self.cost[1]) if accounted and self.cost else None),
        ):
            if value:
                meta[key] = value
        if self.allowed:  # the decision id is added from decision_id
            for name, value in (*self.response_headers, *self._degraded_header()):
                meta["hdr." + name] = value
        return meta

    def error_body(self) -> bytes:
        """OpenAI-shaped error JSON for a denial."""
        error = {
            "type": self.reason.error_type,
            "code": self.reason.value,
            "message": self.message,
            "decision_id": self.decision_id,
        }
        if self.policy:
            error["policy"] = self.policy
        error.update(self.details)
        return json.dumps({"error": error}, separators=(",", ":")).encode()

    def denial_headers(self) -> list[tuple[str, str]]:
        """Headers every denial carries to the client."""
        return [
            ("content-type", "application/json"),
            ("x-extproc-decision-id", self.decision_id),
            *self.headers,
            *self._degraded_header(),
        ]

    def client_headers(self) -> list[tuple[str, str]]:
        """Headers added to the upstream's response on an allowed request."""
        return [("x-extproc-decision-id", self.decision_id), *self.response_headers,
                *self._degraded_header()]

    def _degraded_header(self) -> list[tuple[str, str]]:
        return [("x-extproc-degraded", f"quota-store-{self.degraded}")] if self.degraded else []


def allow(
    decision_id: str, cls: Classification, identity: Identity, route: Route, model_served: str | None,
    quota: Any = None, response_headers: tuple[tuple[str, str], ...] = (),
    degraded: str | None = None, body_rewrite: bytes | None = None, recipe: str | None = None,
    accounting: Accounting = Accounting.NONE, prompt_tokens: int = 0, clamped: bool = False,
) -> Decision:
    """``quota``: the ``QuotaTicket`` settlement needs (its admission and estimate go to the record)."""
    return Decision(
        decision_id=decision_id,
        reason=Reason.ALLOWED,
        workload=cls.workload,
        model=cls.model,
        rule=cls.rule,
        tenant=identity.tenant,
        upstream=route.cluster,
        route=route.entry.id,
        route_version=route.version,
        model_served=model_served,
        retries=route.retries,
        response_headers=response_headers,
        quota=quota,
        degraded=degraded,
        body_rewrite=body_rewrite,
        recipe=recipe,
        accounting=accounting,
        cost=quota.plan.cost_units() if quota is not None else None,
        identity=identity,
        admission=quota.admission if quota is not None else None,
        prompt_tokens=quota.plan.prompt_tokens if quota is not None else prompt_tokens,
        clamped=clamped,
    )


def deny(
    decision_id: str,
    reason: Reason,
    message: str,
    cls: Classification | None = None,
    identity: Identity | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    policy: str | None = None,
    details: tuple[tuple[str, Any], ...] = (),
    degraded: str | None = None,
    admission: Any = None,
) -> Decision:
    """``admission``: the quota admission that refused (or was evaluated), for the record."""
    return Decision(
        decision_id=decision_id,
        reason=reason,
        message=message,
        workload=cls.workload if cls else WorkloadClass.UNKNOWN,
        model=cls.model if cls else None,
        rule=cls.rule if cls else None,
        tenant=identity.tenant if identity else None,
        headers=headers,
        policy=policy,
        details=details,
        degraded=degraded,
        identity=identity,
        admission=admission,
    )
