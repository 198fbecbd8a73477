"""What settlement is fed: one plain event per request that ended, whichever adapter decided it
and however Envoy reported its end (pure values)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from extproc.domain.usage import ResponseEnd, Usage
from extproc.ledger.records import Timing


@dataclass(frozen=True, slots=True)
class UsageSeen:
    """What Envoy's usage reader (``envoy/usage.lua``) saw of a response body as it passed."""

    #: The usage the provider reported (None: none was seen).
    usage: Usage | None
    #: The API's terminal event (``[DONE]``, ``response.completed``, ``message_stop``) or the
    #: whole JSON body was seen.
    completed: bool
    #: The text the response carried, estimated in tokens (``domain.token_estimate``): what a
    #: stream that ended without its usage is charged for its completion.
    text_tokens: int
    events: int = 0
    #: The body was read as a stream (SSE), not as one JSON document.
    streamed: bool = False


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """One request's end, as Envoy's access log reports it."""

    #: The decision's dynamic metadata (``Decision.metadata()``): its id, tenant, route, and the
    #: recipe that settles its admission.
    decision: Mapping[str, str]
    #: The HTTP status the client got (0: none).
    status: int
    end: ResponseEnd
    #: What the usage reader saw (None: the response was not read).
    seen: UsageSeen | None
    timing: Timing
