"""Token usage as the model reported it, from a complete JSON response body (pure).
Streamed (SSE) responses are read inside Envoy (``envoy/usage.lua``).

OpenAI-compatible chat/completions and embeddings (``usage.prompt_tokens``,
``completion_tokens``, ``total_tokens``, ``prompt_tokens_details.cached_tokens``,
``completion_tokens_details.reasoning_tokens``), the Responses API (``usage.input_tokens``,
``output_tokens``, ``input_tokens_details``, ``output_tokens_details``) and Anthropic Messages
(``usage.input_tokens``, ``output_tokens``, ``cache_read_input_tokens``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any


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


def _int(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS
    return value if ok else None


def _detail(usage: dict[str, Any], section: str, field: str) -> int:
    details = usage.get(section)
    return (_int(details.get(field)) or 0) if isinstance(details, dict) else 0


def usage_from_json(body: bytes) -> Usage | None:
    """The usage a response reports, or None when it reports none (or is not JSON)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return usage_from_object(doc.get("usage") if isinstance(doc, dict) else None)


def usage_from_object(usage: Any) -> Usage | None:
    """A ``usage`` object of any of the APIs above (None if it is not one)."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    if prompt is not None:  # OpenAI chat/completions/embeddings
        completion = _int(usage.get("completion_tokens"))
        if completion is None:  # embeddings: only prompt (and total)
            total = _int(usage.get("total_tokens"))
            completion = max(0, total - prompt) if total is not None else 0
        return Usage(prompt, completion, _detail(usage, "prompt_tokens_details", "cached_tokens"),
                     _detail(usage, "completion_tokens_details", "reasoning_tokens"))
    inp, out = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
    if inp is None or out is None:
        return None
    cached = _int(usage.get("cache_read_input_tokens"))  # Anthropic
    if cached is None:
        cached = _detail(usage, "input_tokens_details", "cached_tokens")  # Responses API
    return Usage(inp, out, cached, _detail(usage, "output_tokens_details", "reasoning_tokens"))


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
