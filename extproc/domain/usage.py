"""What a request used, and how it ended (pure). Responses, JSON and streamed, are read inside
Envoy (``envoy/usage.lua``; its Python reference readers are in ``tests/sse_reference.py``):
settlement gets the usage they reported as a ``Usage``, and measures the request with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ResponseEnd(Enum):
    """How a response ended, as far as the gateway saw it (the record's ``end``; the proto's
    ``ResponseEnd`` says the same of each value)."""

    COMPLETE = "complete"  # its end of stream was seen: the whole body passed to the client
    INTERRUPTED = "interrupted"  # it started, but the request ended before its end of stream
    NO_RESPONSE = "no_response"  # the request ended before any response started
    NOT_OBSERVED = "not_observed"  # the gateway does not watch this response to its end
    UNREPORTED = "unreported"  # its end never reached settlement: settled by the sweeper


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


#: Larger counts are not usage but garbage (and would not fit a record's int64).
MAX_TOKENS = 1 << 53


@dataclass(frozen=True, slots=True)
class Measured:
    """What one request used, as far as the gateway can tell, and how it knows."""

    #: The breakdown: reported, or (estimated) the prompt's share plus the completion seen.
    usage: Usage | None
    total_tokens: int
    #: "reported" | "estimated" | "upstream_error" | "configured" (no tokens to measure)
    source: str


def measure_response(status: int, reported: Usage | None, estimate_tokens: int) -> Measured:
    """A response read whole (or not read): reported usage; nothing for an upstream 4xx/5xx (it
    did no work); else the admission estimate when there is one (``estimated``), or no tokens
    at all (``configured``: a class measured in other units, or no token limit to estimate for)."""
    if status >= 400:
        return Measured(None, 0, "upstream_error")
    if reported is not None:
        return Measured(reported, reported.total_tokens, "reported")
    if estimate_tokens > 0:
        return Measured(None, estimate_tokens, "estimated")
    return Measured(None, 0, "configured")


def measure_stream(status: int, reported: Usage | None, prompt_tokens: int,
                   seen_completion_tokens: int) -> Measured:
    """A streamed response that ended, well or not: reported usage; nothing for an upstream
    4xx/5xx; otherwise (client gone, upstream reset, no usage event) the prompt's share of the
    estimate plus the completion seen, ``estimated``, never zero."""
    if status >= 400:
        return Measured(None, 0, "upstream_error")
    if reported is not None:
        return Measured(reported, reported.total_tokens, "reported")
    estimated = Usage(prompt_tokens, seen_completion_tokens)
    return Measured(estimated, max(1, estimated.total_tokens), "estimated")
