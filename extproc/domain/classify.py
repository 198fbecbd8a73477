"""Workload classification: ordered, config-driven rules compiled once per config load.

A rule matches on method, path (exact, prefix or regex), host (exact or ``*.suffix``),
header values and top-level JSON body fields; the first rule whose conditions all
hold decides the workload class and where the model name comes from.

Classification happens in up to two phases. At request headers, ``classify_headers``
either decides, or says the body is needed (the first candidate rule looks at the
body). ``classify_body`` then finishes with the parsed JSON body. The body is
therefore only read for requests whose matching rule needs it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class WorkloadClass(StrEnum):
    INFERENCE = "inference"
    TRAINING = "training"
    RAG = "rag"
    VIDEO = "video"
    COMPUTE = "compute"
    EDGE_INFERENCE = "edge_inference"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a rule reads the model name: ``body`` field, ``header`` name, or ``path`` group."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One classification rule as configured (validated, not yet compiled)."""

    name: str
    workload: WorkloadClass
    methods: frozenset[str] = frozenset()
    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    hosts: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: tuple[tuple[str, Any], ...] = ()
    model: ModelSource | None = None

    @property
    def needs_body(self) -> bool:
        return bool(self.body) or (self.model is not None and self.model.kind == "body")


@dataclass(frozen=True, slots=True)
class Classification:
    workload: WorkloadClass
    model: str | None
    rule: str | None


UNCLASSIFIED = Classification(WorkloadClass.UNKNOWN, None, None)

#: Marker returned by ``classify_headers`` when the deciding rule needs the body.
NEEDS_BODY = object()

_ANY = "*"
_MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@+-]{1,256}")


class _CompiledRule:
    __slots__ = ("_hosts", "_regex", "index", "spec")

    def __init__(self, index: int, spec: RuleSpec) -> None:
        self.index = index
        self.spec = spec
        self._regex = re.compile(spec.path_regex) if spec.path_regex else None
        # Host globs (``*.edge.example.com``, ``edge.*``) become one anchored regex.
        self._hosts = (
            re.compile("|".join(fnmatch.translate(h.lower()) for h in spec.hosts))
            if spec.hosts
            else None
        )

    def matches_head(self, method: str, path: str, host: str, headers: Mapping[str, str]) -> bool:
        s = self.spec
        if s.methods and method not in s.methods:
            return False
        if s.path is not None and path != s.path:
            return False
        if s.path_prefix is not None and not path.startswith(s.path_prefix):
            return False
        if self._regex is not None and self._regex.fullmatch(path) is None:
            return False
        if self._hosts is not None and self._hosts.match(host) is None:
            return False
        for name, want in s.headers:
            got = headers.get(name)
            if got is None or (want != _ANY and got != want):
                return False
        return True

    def matches_body(self, body: Mapping[str, Any] | None) -> bool:
        if not self.spec.body:
            return True
        if body is None:
            return False
        for name, want in self.spec.body:
            if name not in body:
                return False
            if want != _ANY and body[name] != want:
                return False
        return True

    def model(self, path: str, headers: Mapping[str, str], body: Mapping[str, Any] | None) -> str | None:
        src = self.spec.model
        if src is None:
            return None
        value: Any = None
        if src.kind == "body":
            value = body.get(src.name) if body is not None else None
        elif src.kind == "header":
            value = headers.get(src.name)
        elif src.kind == "path" and self._regex is not None:
            m = self._regex.fullmatch(path)
            value = m.group(src.name) if m else None
        # A model name ends up in headers and metric labels: a conservative charset only.
        if not isinstance(value, str) or _MODEL_NAME.fullmatch(value) is None:
            return None
        return value


class Classifier:
    """Compiled rule set. Immutable; build a new one on each config load."""

    def __init__(self, specs: Sequence[RuleSpec]) -> None:
        rules = [_CompiledRule(i, s) for i, s in enumerate(specs)]
        self.rules: tuple[_CompiledRule, ...] = tuple(rules)
        # Index by exact path: most requests hit an exact-path rule, so they only
        # scan the rules for that path plus the rules without an exact path.
        inexact = [r for r in rules if r.spec.path is None]
        exact_paths = {r.spec.path for r in rules if r.spec.path is not None}
        self._by_path: dict[str, tuple[_CompiledRule, ...]] = {
            p: tuple(r for r in rules if r.spec.path in (None, p)) for p in exact_paths if p
        }
        self._inexact = tuple(inexact)

    def candidates(self, path: str) -> tuple[_CompiledRule, ...]:
        return self._by_path.get(path, self._inexact)

    def classify_headers(
        self, method: str, path: str, host: str, headers: Mapping[str, str], has_body: bool
    ) -> Classification | object:
        """Decide from the request head, or return ``NEEDS_BODY``."""
        for rule in self.candidates(path):
            if not rule.matches_head(method, path, host, headers):
                continue
            if rule.spec.needs_body and has_body:
                return NEEDS_BODY
            if not rule.matches_body(None):
                continue
            return Classification(rule.spec.workload, rule.model(path, headers, None), rule.spec.name)
        return UNCLASSIFIED

    def classify(
        self,
        method: str,
        path: str,
        host: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any] | None,
    ) -> Classification:
        """Decide with the request head and (possibly absent) JSON body."""
        for rule in self.candidates(path):
            if rule.matches_head(method, path, host, headers) and rule.matches_body(body):
                return Classification(rule.spec.workload, rule.model(path, headers, body), rule.spec.name)
        return UNCLASSIFIED
