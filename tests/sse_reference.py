"""Token usage from a response, JSON or streamed (SSE), read as it passes (pure): the reference
the usage reader in Envoy (``envoy/usage.lua``) is tested against. The gateway reads responses
inside Envoy; these Python readers, which it used before, state the same semantics.

Where each API puts the usage of a JSON body: its top-level ``usage``, OpenAI-compatible
(``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ``prompt_tokens_details.cached_tokens``,
``completion_tokens_details.reasoning_tokens``), the Responses API's (``input_tokens``,
``output_tokens``, ``input_tokens_details``, ``output_tokens_details``) or Anthropic's
(``input_tokens``, ``output_tokens``, ``cache_read_input_tokens``).

Where each API puts the usage of a stream:

- OpenAI chat/completions: a last chunk with ``"choices": []`` and ``"usage": {...}``, sent
  only when the request asked for ``stream_options.include_usage``; then ``data: [DONE]``.
- OpenAI Responses API: the ``response.completed`` (or ``response.incomplete`` /
  ``response.failed``) event's ``response.usage``.
- Anthropic Messages: ``message_start`` carries ``message.usage`` (input tokens, cache reads),
  each ``message_delta`` the cumulative ``usage.output_tokens``.

Chunks from the proxy split events (and UTF-8 characters) anywhere: bytes are buffered up to
the next blank line and only complete events are decoded. Text deltas are counted as they pass,
so a stream that ends without its usage (client gone, upstream reset, usage never asked for)
still yields an estimate of what was generated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from extproc.domain.token_estimate import tokens_of
from extproc.domain.usage import MAX_TOKENS, Usage

#: An event larger than this is dropped unread (its bytes still pass to the client).
MAX_EVENT_BYTES = 1 << 20
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class TextTally:
    """Text seen piece by piece (a stream's deltas): ``tokens`` at any time, rounded once."""

    __slots__ = ("ascii_bytes", "other_bytes")

    def __init__(self) -> None:
        self.ascii_bytes = 0
        self.other_bytes = 0

    def add(self, text: str) -> None:
        if text.isascii():
            self.ascii_bytes += len(text)
            return
        ascii_chars = len(text.encode("ascii", "ignore"))
        self.ascii_bytes += ascii_chars
        self.other_bytes += len(text.encode("utf-8", "surrogatepass")) - ascii_chars

    @property
    def tokens(self) -> int:
        return tokens_of(self.ascii_bytes, self.other_bytes)


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
class StreamUsage:
    """What a stream reported (``usage``), or what it showed of itself (``seen_*``)."""

    usage: Usage | None
    #: ``data: [DONE]`` or a terminal event arrived: the stream ended as the API ends it.
    completed: bool
    events: int
    #: Completion tokens estimated from the text seen (``domain.token_estimate``), for streams
    #: that end without their usage.
    estimated_completion_tokens: int


class SseUsageReader:
    """Feed every response body chunk in order with ``feed``; ``result()`` at any time."""

    __slots__ = ("_buffer", "_completed", "_events", "_input", "_output", "_overflow", "_text", "_usage")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._overflow = False
        self._usage: Usage | None = None
        self._input: Usage | None = None  # Anthropic: message_start's usage, before the deltas
        self._output: int | None = None
        self._completed = False
        self._events = 0
        self._text = TextTally()

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        start = 0
        for end in _EVENT_END.finditer(self._buffer):
            if not self._overflow:
                self._event(bytes(self._buffer[start:end.start()]))
            self._overflow = False
            start = end.end()
        del self._buffer[:start]
        if len(self._buffer) > MAX_EVENT_BYTES:  # an absurd event: skip to its end
            self._buffer.clear()
            self._overflow = True

    def result(self, end_of_stream: bool = False) -> StreamUsage:
        """What was seen. ``end_of_stream``: the body is complete, read a last unterminated event."""
        if end_of_stream and self._buffer and not self._overflow:
            self._event(bytes(self._buffer))
            self._buffer.clear()
        usage = self._usage
        if usage is None and self._input is not None:
            usage = Usage(self._input.prompt_tokens, self._output or self._input.completion_tokens,
                          self._input.cached_tokens)
        return StreamUsage(usage, self._completed, self._events, self._text.tokens)

    def _event(self, raw: bytes) -> None:
        data = []
        for line in raw.splitlines():
            if line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
        if not data:
            return  # comments (": keep-alive"), bare event/id lines
        payload = b"\n".join(data)
        self._events += 1
        if payload == b"[DONE]":
            self._completed = True
            return
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        if isinstance(doc, dict):
            self._read(doc)

    def _read(self, doc: dict[str, Any]) -> None:
        kind = doc.get("type")
        if kind is None:  # OpenAI chat/completions chunk
            for choice in doc.get("choices") or ():
                if isinstance(choice, dict):
                    self._count_text(choice.get("delta"), "content")
                    self._count_text(choice, "text")  # completions
            if doc.get("usage") is not None:
                self._usage = usage_from_object(doc["usage"]) or self._usage
            return
        if not isinstance(kind, str):
            return
        if kind.startswith("response."):  # Responses API
            if kind == "response.output_text.delta":
                self._count_text(doc, "delta")
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                self._completed = True
                response = doc.get("response")
                if isinstance(response, dict):
                    self._usage = usage_from_object(response.get("usage")) or self._usage
            return
        if kind == "message_start":  # Anthropic
            message = doc.get("message")
            if isinstance(message, dict):
                self._input = usage_from_object(message.get("usage"))
        elif kind == "content_block_delta":
            self._count_text(doc.get("delta"), "text")
        elif kind == "message_delta":
            usage = doc.get("usage")
            out = usage.get("output_tokens") if isinstance(usage, dict) else None
            if isinstance(out, int) and not isinstance(out, bool) and out >= 0:
                self._output = out
        elif kind == "message_stop":
            self._completed = True

    def _count_text(self, holder: Any, field: str) -> None:
        if isinstance(holder, dict):
            text = holder.get(field)
            if isinstance(text, str):
                self._text.add(text)
