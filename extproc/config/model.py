"""The typed, frozen policy config, and its compiled form the hot path reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from extproc.domain.authorize import AccessRule
from extproc.domain.classify import Classifier, RuleSpec
from extproc.identity.spec import IssuerSpec
from extproc.ledger.spec import RecordSettings
from extproc.quota.spec import QuotaSettings
from extproc.routing.table import RoutingTable, TableSpec


class UnknownAction(StrEnum):
    DENY = "deny"
    ALLOW = "allow"


class AuthMode(StrEnum):
    REQUIRED = "required"  # no valid token → 401
    OPTIONAL = "optional"  # no token → anonymous; a bad token → 401
    NONE = "none"  # tokens are not looked at; every caller is anonymous


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """Per-listener behaviour. Envoy names the listener in gRPC metadata ``x-extproc-listener``."""

    name: str
    unknown_requests: UnknownAction = UnknownAction.DENY
    authentication: AuthMode = AuthMode.NONE


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Everything one config file says, validated."""

    source: str
    digest: str
    listeners: tuple[ListenerPolicy, ...]
    max_body_bytes: int
    rules: tuple[RuleSpec, ...]
    #: Envoy clusters the routing table may name, and how many fallbacks its failover clusters cover.
    pools: tuple[str, ...]
    routing: TableSpec
    max_fallbacks: int = 1
    #: How long the sidecar waits for a body it asked for before it answers 408.
    body_timeout_seconds: float = 30.0
    issuers: tuple[IssuerSpec, ...] = ()
    access: tuple[AccessRule, ...] = ()
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    records: RecordSettings = field(default_factory=RecordSettings)


class Snapshot:
    """A compiled config: what the pipeline reads per request. Immutable, swapped by reference."""

    __slots__ = ("access", "body_timeout_seconds", "classifier", "config", "listeners", "max_body_bytes",
                 "quotas", "routes", "version")

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.version = config.digest[:12]
        self.max_body_bytes = config.max_body_bytes
        self.body_timeout_seconds = config.body_timeout_seconds
        self.classifier = Classifier(config.rules)
        self.routes = RoutingTable(config.routing)  # the seed; live tables come from routing.sync
        self.listeners = {lp.name: lp for lp in config.listeners}
        self.access = config.access
        self.quotas = config.quotas

    def listener(self, name: str) -> ListenerPolicy:
        return self.listeners.get(name) or self.listeners["default"]
