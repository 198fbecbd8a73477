"""The hot path, top to bottom: identify → classify → authorize → route → quota → Decision.

Policy steps over the facts Envoy sent and the current config snapshot. The
gRPC adapters (``services/``) call ``on_request_headers`` and, when the deciding
rule needs the body, ``on_request_body``. Identity comes first, on the headers,
so an unauthenticated request is refused before its body is ever buffered.
Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol, TypeVar

from extproc.config.model import AuthMode, ListenerPolicy, Snapshot, UnknownAction
from extproc.domain.authorize import authorize
from extproc.domain.classify import NEEDS_BODY, Classification, TokenUse, WorkloadClass
from extproc.domain.decision import Accounting, Decision, allow, deny
from extproc.domain.facts import RequestFacts
from extproc.domain.identity import ANONYMOUS, Identity
from extproc.domain.ids import new_decision_id
from extproc.domain.params import NO_PARAMS, RequestParams, read_params
from extproc.domain.reasons import InvalidRequest, Reason
from extproc.domain.request_body import BodyFormat, RequestBody, read_body
from extproc.identity.authenticator import IdentityUnavailable
from extproc.identity.base import Authenticator
from extproc.identity.tokens import TokenError
from extproc.quota import headers as quota_headers
from extproc.quota.service import QuotaService, QuotaTicket
from extproc.routing.table import Route, RoutingTable
from extproc.telemetry.timing import PhaseTimer


class SnapshotSource(Protocol):
    """Anything holding the current config snapshot (``ConfigHolder`` in production)."""

    @property
    def current(self) -> Snapshot: ...


class RoutesSource(Protocol):
    """Anything holding the current live routing table (``routing.sync.RouteSync``)."""

    @property
    def current(self) -> RoutingTable: ...


@dataclass(frozen=True, slots=True)
class AwaitingBody:
    """The request's rule needs the body; decide once it arrives, with the same snapshot."""

    snapshot: Snapshot
    decision_id: str
    identity: Identity
    timer: PhaseTimer


class Pipeline:
    def __init__(self, config: SnapshotSource, authenticator: Authenticator,
                 quota: QuotaService | None = None, routes: RoutesSource | None = None,
                 usage_records: bool = False) -> None:
        """``routes``: the live table; without it, the policy file's table (static routing).
        ``usage_records``: usage records are kept (ledger), so the end of every request reaches
        settlement, not only of those with a quota to settle."""
        self._config = config
        self._authenticator = authenticator
        self._quota = quota or QuotaService(None)
        self._routes = routes
        self._usage_records = usage_records

    async def on_request_headers(
        self, facts: RequestFacts, timer: PhaseTimer | None = None
    ) -> Decision | AwaitingBody:
        timer = timer or PhaseTimer()
        snapshot = self._config.current
        decision_id = new_decision_id()
        # 1. Identity: only ever from a verified credential.
        identity = await self._identify(decision_id, snapshot.listener(facts.listener), facts)
        timer.lap("identify")
        if isinstance(identity, Decision):
            return identity
        # 2. Classification, from the head alone unless the matching rule needs the body.
        try:
            cls = snapshot.classifier.classify_headers(
                facts.method, facts.path, facts.host, facts.headers, not facts.end_of_stream)
        except InvalidRequest as exc:  # a model in the path or a header that is no model name
            return deny(decision_id, exc.reason, exc.message, identity=identity)
        timer.lap("classify")
        if cls is NEEDS_BODY:
            return AwaitingBody(snapshot, decision_id, identity, timer)
        assert isinstance(cls, Classification)
        return await self._decide(snapshot, decision_id, facts, identity, cls, None, NO_PARAMS, timer)

    async def on_request_body(
        self, facts: RequestFacts, pending: AwaitingBody, raw: bytes, truncated: bool = False
    ) -> Decision:
        """Decide with the body. ``truncated``: the proxy says it cut the body at its limit.

        A body Envoy cut at its buffer limit is longer than ``max_bytes`` (Envoy's
        limit must exceed it, see envoy/README.md), so the length check catches it;
        ``end_of_stream`` alone is no sign of a cut (trailers may follow). The body is read as
        what the upstream will read (``domain.request_body``), or refused: never decided blind.
        """
        snapshot, decision_id, identity = pending.snapshot, pending.decision_id, pending.identity
        timer = pending.timer
        timer.resume()  # the wait for the body is not decision time
        limit = snapshot.max_body_bytes
        if truncated or len(raw) > limit:
            return deny(decision_id, Reason.BODY_TOO_LARGE,
                        f"request body is larger than the limit of {limit} bytes")
        try:
            body = await _off_loop_if_large(partial(read_body, headers=facts.headers), raw)
            fields = body.fields if body is not None else None
            cls = snapshot.classifier.classify(facts.method, facts.path, facts.host, facts.headers, fields)
            params = NO_PARAMS
            if body is not None and cls.tokens is not TokenUse.NONE:
                params = read_params(fields, form=body.format is BodyFormat.FORM)
        except InvalidRequest as exc:
            return deny(decision_id, exc.reason, exc.message, identity=identity)
        timer.lap("classify")
        return await self._decide(snapshot, decision_id, facts, identity, cls, body, params, timer)

    def body_timed_out(self, pending: AwaitingBody) -> Decision:
        """The body this request's rule reads did not arrive in time (a client that stalls or
        trickles it): 408, so the stream it holds is let go. Its own decision, logged and
        recorded like any denial."""
        seconds = pending.snapshot.body_timeout_seconds
        return deny(pending.decision_id, Reason.REQUEST_BODY_TIMEOUT,
                    f"the request body did not arrive within {seconds:g} s (request_body.timeout_seconds)",
                    identity=pending.identity)

    async def _identify(
        self, decision_id: str, listener: ListenerPolicy, facts: RequestFacts
    ) -> Identity | Decision:
        authorization = facts.headers.get("authorization")
        if listener.authentication is AuthMode.NONE or (
            listener.authentication is AuthMode.OPTIONAL and authorization is None
        ):
            return ANONYMOUS
        try:
            return await self._authenticator.authenticate(authorization)
        except TokenError as exc:
            return deny(decision_id, exc.reason, exc.description,
                        headers=(("www-authenticate", _www_authenticate(exc)),))
        except IdentityUnavailable as exc:
            return deny(decision_id, Reason.IDENTITY_PROVIDER_UNAVAILABLE,
                        f"cannot verify tokens right now: {exc}")

    async def _decide(
        self, snapshot: Snapshot, decision_id: str, facts: RequestFacts, identity: Identity,
        cls: Classification, body: RequestBody | None, params: RequestParams, timer: PhaseTimer,
    ) -> Decision:
        # 3. Unknown work is refused unless this listener allows it.
        if (
            cls.workload is WorkloadClass.UNKNOWN
            and snapshot.listener(facts.listener).unknown_requests is UnknownAction.DENY
        ):
            return deny(decision_id, Reason.UNKNOWN_WORKLOAD,
                        f"no classification rule matches {facts.method} {facts.path[:256]}", cls, identity)
        # 4. Authorization: every access rule that applies must pass (403 otherwise).
        refusal = authorize(snapshot.access, identity, cls, facts.listener)
        if refusal is not None:
            return deny(decision_id, refusal.reason, refusal.message, cls, identity, policy=refusal.rule)
        # 5. Route: aliases resolved, the most specific table entry picks the pool (and fallbacks).
        table = self._routes.current if self._routes is not None else snapshot.routes
        model = table.resolve(cls.model)
        route = table.lookup(cls.workload, model, identity.tenant, identity.plan)
        timer.lap("route")
        if route is None:
            return deny(
                decision_id, Reason.NO_ROUTE,
                f"no route for class={cls.workload.value} model={model or '-'} "
                f"(routing table version {table.version})", cls, identity,
            )
        served = route.entry.rewrite_model or model
        # Quota policies match the canonical model, so an alias cannot dodge a model's limits.
        quota_cls = cls if model == cls.model else replace(cls, model=model)
        # What the upstream reads is what was decided on.
        changes = _upstream_changes(facts, cls, body, params, served)
        if changes is None:
            return deny(decision_id, Reason.INVALID_MODEL,
                        f"model names are lower case here, and this request's model cannot be "
                        f"rewritten on its way: send {cls.model!r}", cls, identity)
        # 6. Quota: every applicable limit in ONE Redis call; nothing is consumed on a refusal.
        #    An admission whose end will reach settlement is registered with the facts of its
        #    record, for the sweeper should that end never arrive.
        accounting = self._accounting(facts, cls)
        record = None
        if accounting is not Accounting.NONE:  # built only if a limit applies
            def record() -> dict[str, str]:
                return allow(decision_id, cls, identity, route, served, accounting=accounting,
                             prompt_tokens=params.prompt_tokens).metadata()
        ticket = await self._quota.admit(snapshot.quotas, identity, quota_cls, route.entry.id, params,
                                         decision_id, leases=facts.sees_request_end, record=record)
        timer.lap("quota")
        rewrite = body.rewritten(changes) if changes and body is not None else None  # only if it can be
        if ticket is None:
            return allow(decision_id, cls, identity, route, served, body_rewrite=rewrite,
                         prompt_tokens=params.prompt_tokens,
                         accounting=accounting if self._usage_records else Accounting.NONE)
        admission = ticket.admission
        if admission.degraded == "closed":
            return deny(decision_id, Reason.QUOTA_STORE_UNAVAILABLE,
                        "quotas cannot be checked right now (quota store unavailable); try again",
                        cls, identity, headers=(("retry-after", "1"),), degraded="closed",
                        admission=admission)
        if admission.blocking is None:
            return self._allowed(decision_id, cls, identity, route, served, ticket, accounting, rewrite)
        # 7. Refused. A token budget may let the request through with a smaller max_tokens
        #    (ext_proc only: ext_authz cannot rewrite a body).
        if facts.can_rewrite_body and body is not None and body.format is BodyFormat.JSON:
            clamped = await self._quota.clamp(snapshot.quotas, identity, quota_cls, route.entry.id,
                                              params, decision_id, admission, record=record)
            if clamped is not None:
                ticket, cap = clamped
                changes.update(dict.fromkeys(params.cap_fields or ("max_tokens",), cap))
                return self._allowed(decision_id, cls, identity, route, served, ticket, accounting,
                                     body.rewritten(changes), cap)
        reason, message, headers, details = quota_headers.denial(admission)
        return deny(decision_id, reason, message, cls, identity, headers=tuple(headers),
                    policy=admission.blocking.limit.policy.name, details=tuple(details.items()),
                    degraded=admission.degraded, admission=admission)

    def _accounting(self, facts: RequestFacts, cls: Classification) -> Accounting:
        """How this request's end reaches settlement: Envoy's access log (where Envoy tells
        the sidecar the request ended: ext_proc), with the response body read for its usage
        when the API reports one (a POST to an API that consumes tokens)."""
        if not facts.sees_request_end:
            return Accounting.NONE
        if cls.tokens is not TokenUse.NONE and facts.method == "POST":
            return Accounting.READ
        return Accounting.LOGGED

    def _allowed(self, decision_id: str, cls: Classification, identity: Identity, route: Route,
                 served: str | None, ticket: QuotaTicket, accounting: Accounting, rewrite: bytes | None,
                 clamped_to: int | None = None) -> Decision:
        """Admitted by the quota step: settled, where its end reaches settlement, with the
        recipe of its admission (None: decided in-process, by a failure mode)."""
        recipe = self._quota.recipe(ticket, decision_id) if accounting is not Accounting.NONE else None
        if recipe is None and not self._usage_records:
            accounting = Accounting.NONE  # nothing to settle there, nothing to record
        headers = tuple(quota_headers.allowed(ticket.admission))
        if clamped_to is not None:
            headers += (("x-extproc-max-tokens-clamped", str(clamped_to)),)
        return allow(decision_id, cls, identity, route, served, quota=ticket, response_headers=headers,
                     degraded=ticket.admission.degraded, body_rewrite=rewrite,
                     recipe=recipe.to_json() if recipe is not None else None, accounting=accounting,
                     clamped=clamped_to is not None)

    async def release(self, decision: Decision) -> None:
        """The request is over (its deciding stream closed): free its concurrency slots now.
        Settlement, from the access log, follows."""
        if decision.quota is not None:
            await self._quota.release(decision.quota, decision.decision_id)


#: Bodies at least this large are parsed in a worker thread, off the event loop.
_PARSE_INLINE_BYTES = 256 << 10

T = TypeVar("T")


async def _off_loop_if_large(parse: Callable[[bytes], T], raw: bytes) -> T:
    """Parse small bodies inline; a large one would hold the event loop for milliseconds."""
    if len(raw) < _PARSE_INLINE_BYTES:
        return parse(raw)
    return await asyncio.to_thread(parse, raw)


def _upstream_changes(facts: RequestFacts, cls: Classification, body: RequestBody | None,
                      params: RequestParams, served: str | None) -> dict[str, Any] | None:
    """The body fields to change so that the upstream reads what was decided on: the served
    model (an alias or rewrite, or the lower-case spelling) and, for an OpenAI stream, the ask
    for its usage. None when the client's spelling of the model must change and this request's
    cannot (ext_authz, a model in the path or a header)."""
    changes: dict[str, Any] = {}
    rewritable = body if facts.can_rewrite_body else None
    if served is not None and served != (cls.model_spelling or cls.model):
        field = cls.model_field
        if field is not None and rewritable is not None and rewritable.can_set(field, served):
            changes[field] = served
        elif cls.model_spelling is not None:
            return None
        # else (ext_authz and an alias): the body keeps the alias; the upstream learns the served
        # model from the x-extproc-model-served header.
    if params.stream and rewritable is not None and rewritable.format is BodyFormat.JSON:
        options = _stream_usage_options(facts.path, rewritable.fields)
        if options is not None:
            changes["stream_options"] = options
    return changes


def _stream_usage_options(path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """OpenAI (chat) completions streams report usage only when asked (a last chunk with empty
    choices): the ``stream_options`` that asks, or None when the request asked already or is
    not such a stream."""
    if not path.endswith("/completions"):  # ``RequestFacts.path`` has no query string
        return None
    options = body.get("stream_options")
    options = options if isinstance(options, dict) else {}
    if options.get("include_usage") is True:
        return None
    return {**options, "include_usage": True}


def _www_authenticate(exc: TokenError) -> str:
    """RFC 6750 challenge. No error code when no credential was sent at all."""
    if exc.reason is Reason.MISSING_CREDENTIALS:
        return 'Bearer realm="extproc"'
    code = "invalid_request" if exc.reason is Reason.INVALID_AUTHORIZATION_HEADER else "invalid_token"
    # Descriptions are our own fixed texts; keep the quoted-string safe anyway.
    description = exc.description.replace("\\", "").replace('"', "'")
    return f'Bearer realm="extproc", error="{code}", error_description="{description}"'
