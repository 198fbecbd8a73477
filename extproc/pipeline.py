"""The hot path, top to bottom: classify → identify → (authorize, quota) → route → Decision.

Pure policy steps over the facts Envoy sent and the current config snapshot. The
gRPC adapters (``services/``) call ``on_request_headers`` and, when the deciding
rule needs the body, ``on_request_body``. Nothing here blocks the event loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from extproc.config.model import Snapshot, UnknownAction
from extproc.domain.classify import NEEDS_BODY, Classification, WorkloadClass
from extproc.domain.decision import Decision, allow, deny
from extproc.domain.facts import RequestFacts
from extproc.domain.ids import new_decision_id
from extproc.domain.reasons import Reason
from extproc.identity.base import Authenticator


class SnapshotSource(Protocol):
    """Anything holding the current config snapshot (``ConfigHolder`` in production)."""

    @property
    def current(self) -> Snapshot: ...


@dataclass(frozen=True, slots=True)
class AwaitingBody:
    """The request's rule needs the body; decide once it arrives, with the same snapshot."""

    snapshot: Snapshot
    decision_id: str


class Pipeline:
    def __init__(self, config: SnapshotSource, authenticator: Authenticator) -> None:
        self._config = config
        self._authenticator = authenticator

    async def on_request_headers(self, facts: RequestFacts) -> Decision | AwaitingBody:
        snapshot = self._config.current
        decision_id = new_decision_id()
        cls = snapshot.classifier.classify_headers(
            facts.method, facts.path, facts.host, facts.headers, not facts.end_of_stream
        )
        if cls is NEEDS_BODY:
            return AwaitingBody(snapshot, decision_id)
        assert isinstance(cls, Classification)
        return self._decide(snapshot, decision_id, facts, cls)

    async def on_request_body(
        self, facts: RequestFacts, pending: AwaitingBody, raw: bytes, complete: bool
    ) -> Decision:
        snapshot, decision_id = pending.snapshot, pending.decision_id
        limit = snapshot.max_body_bytes
        if not complete or len(raw) > limit:
            return deny(decision_id, Reason.BODY_TOO_LARGE,
                        f"request body is larger than the limit of {limit} bytes")
        body = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                return deny(decision_id, Reason.INVALID_JSON, f"request body is not valid JSON: {exc}")
            if not isinstance(body, dict):
                return deny(decision_id, Reason.INVALID_JSON, "request body must be a JSON object")
        cls = snapshot.classifier.classify(facts.method, facts.path, facts.host, facts.headers, body)
        return self._decide(snapshot, decision_id, facts, cls)

    def _decide(
        self, snapshot: Snapshot, decision_id: str, facts: RequestFacts, cls: Classification
    ) -> Decision:
        # 1. Classification: unknown work is refused unless this listener allows it.
        if (
            cls.workload is WorkloadClass.UNKNOWN
            and snapshot.listener(facts.listener).unknown_requests is UnknownAction.DENY
        ):
            return deny(decision_id, Reason.UNKNOWN_WORKLOAD,
                        f"no classification rule matches {facts.method} {facts.path}", cls)
        # 2. Identity: only ever from a verified credential.
        identity = self._authenticator.authenticate(facts)
        # 3. Route: the first matching table entry names the upstream pool.
        entry = snapshot.routes.lookup(cls.workload, cls.model, identity.tenant)
        if entry is None:
            return deny(
                decision_id, Reason.NO_ROUTE,
                f"no route for class={cls.workload.value} model={cls.model or '-'}", cls, identity,
            )
        return allow(decision_id, cls, identity, entry.pool, entry.id)
