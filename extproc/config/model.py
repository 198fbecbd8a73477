"""The typed, frozen policy config, and its compiled form the hot path reads."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from extproc.domain.classify import Classifier, RuleSpec
from extproc.routing.table import RouteEntry, RouteTable


class UnknownAction(StrEnum):
    DENY = "deny"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """Per-listener behaviour. Envoy names the listener in gRPC metadata ``x-extproc-listener``."""

    name: str
    unknown_requests: UnknownAction = UnknownAction.DENY


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Everything one config file says, validated."""

    source: str
    digest: str
    listeners: tuple[ListenerPolicy, ...]
    max_body_bytes: int
    rules: tuple[RuleSpec, ...]
    pools: tuple[str, ...]
    routes: tuple[RouteEntry, ...]


class Snapshot:
    """A compiled config: what the pipeline reads per request. Immutable, swapped by reference."""

    __slots__ = ("classifier", "config", "listeners", "max_body_bytes", "routes", "version")

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.version = config.digest[:12]
        self.max_body_bytes = config.max_body_bytes
        self.classifier = Classifier(config.rules)
        self.routes = RouteTable(config.routes, config.pools)
        self.listeners = {lp.name: lp for lp in config.listeners}

    def listener(self, name: str) -> ListenerPolicy:
        return self.listeners.get(name) or self.listeners["default"]
