"""Workload classification: ordered, config-driven rules compiled once per config load.

A rule matches on method, path (exact, prefix or regex), host (exact or ``*.suffix``),
header values and top-level JSON body fields; the first rule whose conditions all
hold decides the workload class and where the model name comes from.

Classification happens in up to two phases. At request headers, ``classify_headers``
either decides, or says the body is needed (the first candidate rule looks at the
body). ``classify`` then finishes with the body's fields (a JSON object, or a form's
text fields: ``domain.request_body``). The body is therefore only read for requests
whose matching rule needs it. A model the rule reads that is not a model name raises
``InvalidRequest`` (400): it is never taken for "no model".
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from extproc.domain.reasons import InvalidRequest, Reason, quoted, shown


class WorkloadClass(StrEnum):
    INFERENCE = "inference"
    TRAINING = "training"
    RAG = "rag"
    VIDEO = "video"
    COMPUTE = "compute"
    EDGE_INFERENCE = "edge_inference"
    UNKNOWN = "unknown"

    def within(self, policy_class: WorkloadClass) -> bool:
        """Whether a policy (access rule, quota) on ``policy_class`` covers this class. Classes
        nest for policy: edge inference is inference. What marks a request as edge (a header, a
        host) is the client's choice, so it may pick the edge pool and add edge policies, but
        never take a request out of the policies on inference (README "Classification")."""
        return self is policy_class or (
            self is WorkloadClass.EDGE_INFERENCE and policy_class is WorkloadClass.INFERENCE)


class TokenUse(StrEnum):
    """What an API consumes in tokens, so what its admission reserves."""

    GENERATION = "generation"  # the prompt, plus the completion(s) it may generate
    PROMPT = "prompt"  # the prompt only (embeddings, moderations)
    NONE = "none"  # nothing (model lists, token counting, object reads): no token limit applies


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
    tokens: TokenUse = TokenUse.GENERATION

    @property
    def needs_body(self) -> bool:
        return bool(self.body) or (self.model is not None and self.model.kind == "body")


@dataclass(frozen=True, slots=True)
class Classification:
    workload: WorkloadClass
    #: The model in its canonical spelling (lower case): what every rule matches on.
    model: str | None
    rule: str | None
    tokens: TokenUse = TokenUse.GENERATION
    #: The body field the model came from (None: the path, a header, or no model): the field a
    #: model rewrite replaces.
    model_field: str | None = None
    #: The model as the client spelled it, when that differs from ``model`` (letter case).
    model_spelling: str | None = None


UNCLASSIFIED = Classification(WorkloadClass.UNKNOWN, None, None, TokenUse.NONE)

#: Marker returned by ``classify_headers`` when the deciding rule needs the body.
NEEDS_BODY = object()

_ANY = "*"
MAX_MODEL_LENGTH = 256
_MODEL_CHARS = re.compile(r"[A-Za-z0-9._:/@+-]*")


def folded_model(name: str | None) -> str | None:
    """A model name (or pattern) from config or an operator, as requests are matched: in lower
    case (README "Model names")."""
    return name.lower() if name is not None else None


def canonical_model(value: Any, where: str) -> str:
    """The canonical spelling of a model name the client sent: ASCII lower case. Anything that
    is not a plain name (README "Model names") is an ``InvalidRequest`` that says why, never
    treated as "no model": a name the gateway cannot read must not escape model-keyed rules."""
    if not isinstance(value, str):
        raise InvalidRequest(Reason.INVALID_MODEL, f"{where} must be a string, not {shown(value)}")
    if not value:
        raise InvalidRequest(Reason.INVALID_MODEL, f"{where} is empty")
    if len(value) > MAX_MODEL_LENGTH:
        raise InvalidRequest(Reason.INVALID_MODEL, f"{where} is longer than {MAX_MODEL_LENGTH} characters")
    plain = _MODEL_CHARS.match(value)
    assert plain is not None  # the pattern matches the empty prefix
    if plain.end() < len(value):
        bad = value[plain.end()]
        raise InvalidRequest(
            Reason.INVALID_MODEL,
            f"{where} {quoted(value)} has a character that is not allowed: U+{ord(bad):04X} at position "
            f"{plain.end()} (model names are ASCII letters, digits and . _ : / @ + -, without spaces)")
    return value.lower()


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

    def classification(self, path: str, headers: Mapping[str, str],
                       body: Mapping[str, Any] | None) -> Classification:
        """This rule's verdict; ``InvalidRequest`` when the model it reads is not a model name."""
        s = self.spec
        src = s.model
        if src is None:
            return Classification(s.workload, None, s.name, s.tokens)
        value: Any = None
        where = f"body field {src.name!r}"
        if src.kind == "body":
            value = body.get(src.name) if body is not None else None
        elif src.kind == "header":
            value, where = headers.get(src.name), f"header {src.name!r}"
        elif src.kind == "path" and self._regex is not None:
            m = self._regex.fullmatch(path)
            value, where = (m.group(src.name) if m else None), "the model in the path"
        if value is None:  # absent (or JSON null): a request without a model
            return Classification(s.workload, None, s.name, s.tokens)
        # A model name ends up in headers and metric labels: a conservative charset only.
        model = canonical_model(value, where)
        return Classification(s.workload, model, s.name, s.tokens,
                              model_field=src.name if src.kind == "body" else None,
                              model_spelling=value if value != model else None)


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
            return rule.classification(path, headers, None)
        return UNCLASSIFIED

    def classify(
        self,
        method: str,
        path: str,
        host: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any] | None,
    ) -> Classification:
        """Decide with the request head and the (possibly absent) body's fields."""
        for rule in self.candidates(path):
            if rule.matches_head(method, path, host, headers) and rule.matches_body(body):
                return rule.classification(path, headers, body)
        return UNCLASSIFIED
