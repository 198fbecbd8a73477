"""Usage from streamed responses: real-shaped SSE of each API, split anywhere."""

from __future__ import annotations

import json

import pytest

from extproc.domain.usage import Usage
from tests.sse_reference import MAX_EVENT_BYTES, SseUsageReader


def sse(*events: object, sep: str = "\n\n") -> bytes:
    out = []
    for event in events:
        if isinstance(event, tuple):  # (event name, data)
            out.append(f"event: {event[0]}\ndata: {json.dumps(event[1], ensure_ascii=False)}{sep}")
        elif event == "[DONE]":
            out.append(f"data: [DONE]{sep}")
        else:
            out.append(f"data: {json.dumps(event, ensure_ascii=False)}{sep}")
    return "".join(out).encode()


def chat_chunk(text: str | None, finish: str | None = None) -> dict:
    delta = {} if text is None else {"content": text}
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1730000000, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


OPENAI_CHAT = sse(
    {**chat_chunk(""), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    chat_chunk("Héllo"), chat_chunk(" wörld 🌍"), chat_chunk(None, "stop"),
    {"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [],
     "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
               "prompt_tokens_details": {"cached_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0}}},
    "[DONE]",
)
OPENAI_NO_USAGE = sse(chat_chunk("Hello there, friend"), chat_chunk(None, "stop"), "[DONE]")
COMPLETIONS = sse(
    {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "Once upon", "index": 0, "finish_reason": None}]},
    {"id": "cmpl-1", "object": "text_completion", "choices": [],
     "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    "[DONE]",
)
RESPONSES = sse(
    ("response.created", {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "usage": None}}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Hi"}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_1", "delta": " there"}),
    ("response.completed", {"type": "response.completed", "response": {
        "id": "resp_1", "status": "completed",
        "usage": {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 87,
                  "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 123}}}),
)
ANTHROPIC = sse(
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4",
        "usage": {"input_tokens": 472, "cache_read_input_tokens": 100, "output_tokens": 2}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}),
    ("message_stop", {"type": "message_stop"}),
)
EXPECTED = {
    "openai_chat": (OPENAI_CHAT, Usage(12, 5, 0, 0)),
    "completions": (COMPLETIONS, Usage(3, 2)),
    "responses": (RESPONSES, Usage(36, 87, 4, 64)),
    "anthropic": (ANTHROPIC, Usage(472, 15, 100)),
}


def read(body: bytes, cuts: list[int]) -> SseUsageReader:
    reader = SseUsageReader()
    last = 0
    for cut in [*cuts, len(body)]:
        reader.feed(body[last:cut])
        last = cut
    return reader


@pytest.mark.parametrize("name", EXPECTED)
def test_usage_of_each_api_split_at_every_byte(name: str) -> None:
    body, usage = EXPECTED[name]
    whole = read(body, []).result(end_of_stream=True)
    assert whole.usage == usage and whole.completed
    # Every single split point (through multi-byte characters and the blank-line separators).
    for cut in range(1, len(body)):
        assert read(body, [cut]).result(end_of_stream=True).usage == usage, cut
    # One byte at a time.
    assert read(body, list(range(1, len(body)))).result(end_of_stream=True).usage == usage


def test_crlf_separators_and_comments() -> None:
    body = b": keep-alive\r\n\r\n" + OPENAI_CHAT.replace(b"\n\n", b"\r\n\r\n")
    result = read(body, [7, 100]).result(end_of_stream=True)
    assert result.usage == Usage(12, 5, 0, 0) and result.completed


def test_stream_without_usage_counts_what_it_saw() -> None:
    result = read(OPENAI_NO_USAGE, [5]).result(end_of_stream=True)
    assert result.usage is None and result.completed
    assert result.estimated_completion_tokens == 5  # 19 ASCII characters


def test_stream_cut_before_the_usage_chunk() -> None:
    cut = OPENAI_CHAT.index(b'"choices": []')
    result = read(OPENAI_CHAT[:cut], []).result()
    assert result.usage is None and not result.completed
    # Héllo wörld 🌍: 10 ASCII bytes (3 tokens) and 8 bytes of é, ö and 🌍 (a token each).
    assert result.estimated_completion_tokens == 3 + 8
    # Anthropic cut after message_start: the input side is known, output from what was seen.
    partial = read(ANTHROPIC[:ANTHROPIC.index(b"event: message_delta")], []).result()
    assert partial.usage == Usage(472, 2, 100) and not partial.completed


def test_last_event_without_trailing_blank_line_counts_only_at_the_end() -> None:
    body = OPENAI_CHAT.removesuffix(b"data: [DONE]\n\n")[:-2]  # usage chunk unterminated
    reader = read(body, [])
    assert reader.result().usage is None
    assert reader.result(end_of_stream=True).usage == Usage(12, 5, 0, 0)


def test_garbage_and_oversized_events_are_skipped() -> None:
    huge = b"data: " + b"x" * (MAX_EVENT_BYTES + 10) + b"\n\n"
    body = b"data: {not json\n\n" + b"data: [1,2]\n\n" + huge + OPENAI_CHAT
    result = read(body, [3, 4096, 70000]).result(end_of_stream=True)
    assert result.usage == Usage(12, 5, 0, 0)
