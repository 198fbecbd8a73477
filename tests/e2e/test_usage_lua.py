"""envoy/usage.lua in a real Envoy: the usage a provider reports, read from JSON and SSE response
bodies as they pass, in the access log's dynamic metadata (namespace extproc.usage).

Each case goes through Envoy to a scripted upstream (tests/e2e/lua_harness.py) that writes the
body in the chunks the case gives; a second, test-only Lua filter counts the chunks Envoy passed,
so a split is known to have reached the filter as a split. Where it applies, what the filter
reads is compared with the sidecar's Python readers (tests/sse_reference.py, usage.py).
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.e2e.lua_harness import Case, Gateway, Result
from tests.sse_reference import SseUsageReader, TextTally, usage_from_json

pytestmark = pytest.mark.e2e

USAGE_KEYS = ("prompt", "completion", "cached", "reasoning")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("usage_lua"))
    yield gateway
    gateway.stop()


# --- fixtures ----------------------------------------------------------------------------------


def sse(*events: str | bytes, sep: bytes = b"\n") -> list[bytes]:
    """SSE events (their lines joined with ``sep``, each ended by a blank line), one per item."""
    out = []
    for event in events:
        raw = event.encode() if isinstance(event, str) else event
        out.append(raw.replace(b"\n", sep) + sep + sep)
    return out


def chunk_of(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def tally(*texts: str) -> tuple[int, int]:
    """(ASCII bytes, other bytes) of texts, as the sidecar counts them."""
    t = TextTally()
    for text in texts:
        t.add(text)
    return t.ascii_bytes, t.other_bytes


CHAT_HEAD = {"id": "chatcmpl-AbC123", "object": "chat.completion.chunk", "created": 1718000000,
             "model": "gpt-4o-mini", "system_fingerprint": "fp_0ba0d124f1"}


def chat(content: str | None, finish: str | None = None) -> str:
    delta = {"content": content} if content is not None else {}
    return chunk_of({**CHAT_HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}]})


CHAT_USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
              "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0}}
CHAT_TEXTS = ("", "Hello", ' wörld "quoted" é 😀', "\nbye")
OPENAI_CHAT = sse(
    chunk_of({**CHAT_HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]}),
    chat("Hello"),
    # an escaped quote, a \u escape and raw UTF-8 (2- and 4-byte characters) in one delta
    'data: {"id":"chatcmpl-AbC123","object":"chat.completion.chunk","choices":[{"index":0,'
    '"delta":{"content":" wörld \\"quoted\\" \\u00e9 😀"},"finish_reason":null}]}',
    chat("\nbye"),
    chat(None, "stop"),
    chunk_of({**CHAT_HEAD, "choices": [], "usage": CHAT_USAGE}),
    "data: [DONE]",
)
OPENAI_CHAT_EXPECT = {"prompt": 12, "completion": 7, "cached": 4, "reasoning": 2, "cache_write": 0,
                      "reported": 1, "completed": 1, "events": 7}

COMPLETIONS = sse(
    chunk_of({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
              "choices": [{"text": "Once upon", "index": 0, "logprobs": None, "finish_reason": None}]}),
    chunk_of({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
              "choices": [{"text": " a time", "index": 0, "logprobs": None, "finish_reason": "length"}]}),
    chunk_of({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
              "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
    "data: [DONE]",
)

RESPONSES_USAGE = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 8}, "output_tokens": 5,
                   "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 25}
RESPONSES = sse(
    "event: response.created\n" + chunk_of({"type": "response.created", "sequence_number": 0, "response": {
        "id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-4o", "output": [],
        "usage": None}}),
    "event: response.in_progress\n" + chunk_of({"type": "response.in_progress", "sequence_number": 1,
                                                "response": {"id": "resp_1", "status": "in_progress"}}),
    "event: response.output_text.delta\n" + chunk_of({
        "type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_1", "output_index": 0,
        "content_index": 0, "delta": "Bonjour"}),
    "event: response.output_text.delta\n" + chunk_of({
        "type": "response.output_text.delta", "sequence_number": 3, "item_id": "msg_1", "output_index": 0,
        "content_index": 0, "delta": " à tous"}),
    "event: response.output_text.done\n" + chunk_of({
        "type": "response.output_text.done", "sequence_number": 4, "item_id": "msg_1", "text": "Bonjour à tous"}),
    "event: response.completed\n" + chunk_of({"type": "response.completed", "sequence_number": 5, "response": {
        "id": "resp_1", "object": "response", "status": "completed", "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "Bonjour à tous"}]}],
        "usage": RESPONSES_USAGE}}),
)
RESPONSES_EXPECT = {"prompt": 20, "completion": 5, "cached": 8, "reasoning": 1, "cache_write": 0,
                    "reported": 1, "completed": 1, "events": 6}

ANTHROPIC = sse(
    "event: message_start\n" + chunk_of({"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 25, "cache_creation_input_tokens": 3,
                                       "cache_read_input_tokens": 10, "output_tokens": 1}}}),
    "event: content_block_start\n" + chunk_of({"type": "content_block_start", "index": 0,
                                               "content_block": {"type": "text", "text": ""}}),
    'event: ping\ndata: {"type": "ping"}',
    "event: content_block_delta\n" + chunk_of({"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": "こんにちは"}}),
    "event: content_block_delta\n" + chunk_of({"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": " world"}}),
    "event: content_block_stop\n" + chunk_of({"type": "content_block_stop", "index": 0}),
    "event: message_delta\n" + chunk_of({"type": "message_delta", "delta": {
        "stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 15}}),
    "event: message_stop\n" + chunk_of({"type": "message_stop"}),
)
ANTHROPIC_EXPECT = {"prompt": 25, "completion": 15, "cached": 10, "reasoning": 0, "cache_write": 3,
                    "reported": 1, "completed": 1, "events": 8}

# Short streams for the splits at every byte boundary; between them they split inside
# "data:", right after it, inside a \" and a \uXXXX escape, inside 2-, 3- and 4-byte UTF-8
# characters, between the \r and \n of CRLF, and between the two \r of "\r\r".
SPLIT_CHAT = sse('data: {"choices":[{"delta":{"content":"é\\"x\\u00e9😀"}}]}',
                 'data:{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,'
                 '"prompt_tokens_details":{"cached_tokens":2}}}',
                 "data: [DONE]")
SPLIT_RESPONSES = sse('event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                      '"delta":"日本\\n"}',
                      'event: response.completed\ndata:{"type":"response.completed","response":'
                      '{"usage":{"input_tokens":4,"output_tokens":2,"output_tokens_details":'
                      '{"reasoning_tokens":1}}}}')
SPLIT_ANTHROPIC = sse('event: message_start\ndata: {"type":"message_start","message":{"usage":'
                      '{"input_tokens":7,"cache_read_input_tokens":1,"cache_creation_input_tokens":2,'
                      '"output_tokens":1}}}',
                      'event: content_block_delta\ndata: {"type":"content_block_delta","delta":'
                      '{"type":"text_delta","text":"ça 😀"}}',
                      ': keep-alive',
                      'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":6}}',
                      'event: message_stop\ndata: {"type":"message_stop"}')
SPLIT_CRLF = sse(": comment\nid: 1\nevent: chunk\n" + 'data: {"choices":[{"delta":{"content":"a\\u00e9b"}}]}',
                 'data: {"choices":[],\ndata: "usage":{"prompt_tokens":5,"completion_tokens":1}}',
                 "data: [DONE]", sep=b"\r\n")
SPLIT_CR = sse('data: {"choices":[{"text":"ü"}]}',
               'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}',
               "data: [DONE]", sep=b"\r")
SPLITS = {"chat": SPLIT_CHAT, "responses": SPLIT_RESPONSES, "anthropic": SPLIT_ANTHROPIC,
          "crlf": SPLIT_CRLF, "cr": SPLIT_CR}


# --- helpers -----------------------------------------------------------------------------------


def python_reading(body: bytes) -> dict[str, Any]:
    """What the sidecar's SSE reader makes of a whole body, in the filter's terms."""
    reader = SseUsageReader()
    reader.feed(body)
    result = reader.result(end_of_stream=True)
    out: dict[str, Any] = {"events": result.events, "completed": 1 if result.completed else None,
                           "reported": 1 if result.usage else None}
    for key in USAGE_KEYS:
        out[key] = getattr(result.usage, f"{key}_tokens") if result.usage else None
    out["tokens"] = result.estimated_completion_tokens
    return out


def lua_reading(result: Result) -> dict[str, Any]:
    usage = result.usage()
    out = {key: usage[key] for key in ("events", "completed", "reported", *USAGE_KEYS)}
    out["tokens"] = -(-(usage["text_ascii"] or 0) // 4) + (usage["text_other"] or 0)
    return out


def check_passed(case: Case, result: Result) -> None:
    """The body reached the client unchanged, and the filter followed it to its end."""
    assert result.error is None, result.error
    assert result.status == case.status
    assert result.body == case.body()
    assert result.record["end"] == 1
    assert result.record["status"] == case.status


def run_split(gw: Gateway, cases: Sequence[Case]) -> list[Result]:
    """The cases; those Envoy did not pass in the chunks they were written in are run again."""
    results = gw.run_many(cases)
    for _ in range(3):
        redo = [i for i, r in enumerate(results) if r.record.get("chunks") != sum(1 for c in cases[i].chunks if c)]
        if not redo:
            break
        for i, result in zip(redo, gw.run_many([cases[i] for i in redo]), strict=True):
            results[i] = result
    coalesced = [i for i, r in enumerate(results) if r.record.get("chunks") != sum(1 for c in cases[i].chunks if c)]
    assert not coalesced, f"Envoy coalesced the chunks of cases {coalesced[:10]}"
    return results


def subset(record: dict[str, Any], expect: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in expect}


# --- every API, read exactly ----------------------------------------------------------------------


@pytest.mark.parametrize(("chunks", "expect", "texts"), [
    (OPENAI_CHAT, OPENAI_CHAT_EXPECT, CHAT_TEXTS),
    (COMPLETIONS, {"prompt": 3, "completion": 4, "cached": 0, "reasoning": 0, "reported": 1, "completed": 1,
                   "events": 4}, ("Once upon", " a time")),
    (RESPONSES, RESPONSES_EXPECT, ("Bonjour", " à tous")),
    (ANTHROPIC, ANTHROPIC_EXPECT, ("こんにちは", " world")),
], ids=["openai-chat", "openai-completions", "responses", "anthropic"])
def test_sse_usage_read_exactly(gw: Gateway, chunks: list[bytes], expect: dict[str, Any],
                                texts: tuple[str, ...]) -> None:
    whole = Case([b"".join(chunks)])
    per_event = Case(chunks)
    for case, result in zip((whole, per_event), gw.run_many([whole, per_event]), strict=True):
        check_passed(case, result)
        assert subset(result.record, expect) == expect
        assert (result.record["text_ascii"], result.record["text_other"]) == tally(*texts)
        assert result.record["read"] == "sse"
        assert lua_reading(result) == python_reading(case.body())
    assert gw.run_many([per_event])[0].record["chunks"] == len(chunks)


JSON_BODIES = {
    "chat": ({"id": "chatcmpl-1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi ☃"}, "finish_reason": "stop"}],
        "usage": CHAT_USAGE}, {"prompt": 12, "completion": 7, "cached": 4, "reasoning": 2, "cache_write": 0}),
    "completions": ({"object": "text_completion", "choices": [{"text": "x"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
                    {"prompt": 3, "completion": 1, "cached": 0, "reasoning": 0, "cache_write": 0}),
    "embeddings": ({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -2e-3]}],
                    "model": "text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}},
                   {"prompt": 8, "completion": 0, "cached": 0, "reasoning": 0, "cache_write": 0}),
    "responses": ({"id": "resp_1", "object": "response", "status": "completed", "output": [
        {"type": "message", "content": [{"type": "output_text", "text": "ok", "annotations": []}]}],
        "usage": RESPONSES_USAGE}, {"prompt": 20, "completion": 5, "cached": 8, "reasoning": 1, "cache_write": 0}),
    "anthropic": ({"id": "msg_1", "type": "message", "role": "assistant", "content": [
        {"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 30, "cache_creation_input_tokens": 6, "cache_read_input_tokens": 11,
                  "output_tokens": 9}},
        {"prompt": 30, "completion": 9, "cached": 11, "reasoning": 0, "cache_write": 6}),
}


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
@pytest.mark.parametrize("name", sorted(JSON_BODIES))
def test_json_usage_read_exactly(gw: Gateway, name: str, content_type: str) -> None:
    doc, expect = JSON_BODIES[name]
    body = json.dumps(doc, indent=1, ensure_ascii=False).encode()
    whole = Case([body], content_type)
    pieces = Case([body[i:i + 7] for i in range(0, len(body), 7)], content_type, pause=0.0005)
    for case, result in zip((whole, pieces), gw.run_many([whole, pieces]), strict=True):
        check_passed(case, result)
        assert subset(result.record, expect) == expect
        assert result.record["read"] == "json"
        assert result.record["reported"] == 1
        assert result.record["completed"] == 1
        assert result.record["events"] is None and result.record["text_ascii"] is None


# What the filter's JSON parser reads must be what Python's json reads: edge cases of the grammar,
# escapes, UTF-8, numbers and token counts, each against usage.py's usage_from_json.
PARSER_CASES = [
    b'{"usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"\\u0075sage":{"prompt_\\u0074okens":5,"completion_tokens":6}}',
    b' \r\n\t{ "usage" : { "input_tokens" : 1 , "output_tokens" : 2 } } \n',
    b'\xef\xbb\xbf{"usage":{"prompt_tokens":1}}',
    b'{"usage":{"prompt_tokens":5.0,"completion_tokens":6}}',
    b'{"usage":{"prompt_tokens":5,"completion_tokens":6e0}}',
    b'{"usage":{"prompt_tokens":5,"completion_tokens":6,"prompt_tokens_details":{"cached_tokens":1.5}}}',
    b'{"usage":{"prompt_tokens":-1,"completion_tokens":6}}',
    b'{"usage":{"prompt_tokens":-0,"completion_tokens":6}}',
    b'{"usage":{"prompt_tokens":true,"completion_tokens":6}}',
    b'{"usage":{"prompt_tokens":"5","completion_tokens":6}}',
    b'{"usage":{"prompt_tokens":9007199254740992,"completion_tokens":0}}',
    b'{"usage":{"prompt_tokens":9007199254740993,"completion_tokens":0}}',
    b'{"usage":{"prompt_tokens":123456789012345678901234567890,"completion_tokens":0}}',
    b'{"usage":{"prompt_tokens":3,"total_tokens":2}}',
    b'{"usage":{"input_tokens":3}}',
    b'{"usage":{"input_tokens":3,"output_tokens":null}}',
    b'{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":{"prompt_tokens":2,"completion_tokens":2}}',
    b'{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":null}',
    b'{"usage":null}',
    b'{"data":{"usage":{"prompt_tokens":1,"completion_tokens":1}}}',
    b'[{"usage":{"prompt_tokens":1,"completion_tokens":1}}]',
    b'{"x":[1,-2.5e+3,0.0,1E-2,true,false,null,"s",{},[]],"y":NaN,"z":-Infinity,"w":Infinity,'
    b'"usage":{"prompt_tokens":4,"completion_tokens":4}}',
    b'{"s":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\ud800 \xc3\xa9\xe2\x98\x83\xf0\x9f\x98\x80",'
    b'"usage":{"prompt_tokens":2,"completion_tokens":2}}',
    b'{"deep":' + b"[" * 400 + b"]" * 400 + b',"usage":{"prompt_tokens":2,"completion_tokens":2}}',
    b'{"deep":' + b"[" * 5000 + b"]" * 5000 + b',"usage":{"prompt_tokens":2,"completion_tokens":2}}',
    # not JSON: each of these must read as nothing
    b'{"usage":{"prompt_tokens":5,"completion_tokens":6},}',
    b"{'usage':{'prompt_tokens':5,'completion_tokens':6}}",
    b'{usage:{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"usage":{"prompt_tokens":5,"completion_tokens":6}}x',
    b'{"usage":{"prompt_tokens":5,"completion_tokens":6}',
    b'{"usage":{"prompt_tokens":5,"completion_tokens":6}} {}',
    b'{"a":"\x01","usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":"\\x","usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":"\\u12G4","usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":"\xff","usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":"\xc0\x80","usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":"\xed\xa0\x80","usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":"\xf4\x90\x80\x80","usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":"\xe2\x98","usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":01,"usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":1.,"usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":.5,"usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":+1,"usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":1e,"usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":-,"usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":tru,"usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a":[1,],"usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"a" "b","usage":{"prompt_tokens":5,"completion_tokens":6}}',
    b'{"usage":{"prompt_tokens":5,"completion_tokens":6}}\x00',
    b"",
    b"   ",
]


def test_json_parser_reads_as_python_does(gw: Gateway) -> None:
    cases = [Case([body], "application/json") for body in PARSER_CASES]
    for body, case, result in zip(PARSER_CASES, cases, gw.run_many(cases), strict=True):
        check_passed(case, result)
        expect = usage_from_json(body)
        got = result.usage()
        if expect is None:
            assert got["reported"] is None and got["prompt"] is None, body[:80]
        else:
            assert got["reported"] == 1, body[:80]
            assert {k: got[k] for k in USAGE_KEYS} == {k: getattr(expect, f"{k}_tokens") for k in USAGE_KEYS}, \
                body[:80]
        assert got["completed"] == 1


def test_json_body_over_1mib_is_not_read(gw: Gateway) -> None:
    body = json.dumps({"pad": "x" * (1 << 20), "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    case = Case([body[i:i + 65536] for i in range(0, len(body), 65536)], "application/json", pause=0)
    result = gw.run(case)
    check_passed(case, result)
    assert result.record["reported"] is None and result.record["prompt"] is None
    assert result.record["completed"] == 1


# --- chunks split anywhere ---------------------------------------------------------------------


def test_split_fixtures_have_the_awkward_boundaries() -> None:
    body = {name: b"".join(chunks) for name, chunks in SPLITS.items()}
    assert b"\xf0\x9f\x98\x80" in body["chat"] and "é".encode() in body["chat"]  # 4- and 2-byte UTF-8
    assert "日".encode() in body["responses"]  # 3-byte UTF-8
    assert b'\\"' in body["chat"] and b"\\u00e9" in body["chat"]  # string escapes
    assert b"\r\n\r\n" in body["crlf"] and b"\r\r" in body["cr"]
    assert b"\ndata:{" in body["responses"] and b"\n\ndata:{" in body["chat"]  # no space after "data:"
    assert b": keep-alive" in body["anthropic"]


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_sse_split_at_every_byte(gw: Gateway, name: str) -> None:
    chunks = SPLITS[name]
    body = b"".join(chunks)
    expect = lua_reading(gw.run(Case([body])))
    assert expect == python_reading(body)
    assert expect["reported"] == 1 and expect["completed"] == 1
    cases = [Case([body[:k], body[k:]], pause=0.001) for k in range(1, len(body))]
    for k, (case, result) in enumerate(zip(cases, run_split(gw, cases), strict=True), start=1):
        check_passed(case, result)
        assert lua_reading(result) == expect, f"split at byte {k}: {body[max(0, k - 12):k]!r} | {body[k:k + 12]!r}"


def awkward_boundaries(body: bytes) -> list[int]:
    """Split points near a line start ("data:", right after it), a \r or \n, a backslash (string
    escapes) or a non-ASCII byte (inside UTF-8 characters), and every 5th byte elsewhere."""
    near = set(range(1, 8))
    for i, b in enumerate(body):
        if b in (10, 13):
            near.update(range(i, i + 9))
        if b == 92 or b >= 128:
            near.update(range(i - 1, i + 7))
    return [k for k in range(1, len(body)) if k in near or k % 5 == 0]


@pytest.mark.parametrize(("chunks", "expect"), [
    (OPENAI_CHAT, OPENAI_CHAT_EXPECT), (RESPONSES, RESPONSES_EXPECT), (ANTHROPIC, ANTHROPIC_EXPECT),
], ids=["openai-chat", "responses", "anthropic"])
def test_sse_realistic_streams_split_at_sampled_bytes(gw: Gateway, chunks: list[bytes],
                                                      expect: dict[str, Any]) -> None:
    body = b"".join(chunks)
    reference = python_reading(body)
    cases = [Case([body[:k], body[k:]], pause=0.001) for k in awkward_boundaries(body)]
    for case, result in zip(cases, run_split(gw, cases), strict=True):
        check_passed(case, result)
        assert subset(result.record, expect) == expect, case.chunks[0][-20:]
        assert lua_reading(result) == reference, case.chunks[0][-20:]


def test_sse_one_byte_chunks(gw: Gateway) -> None:
    body = b"".join(SPLIT_ANTHROPIC)
    case = Case([body[i:i + 1] for i in range(len(body))], pause=0.0005)
    result = gw.run(case)
    check_passed(case, result)
    assert result.record["chunks"] >= len(body) * 0.9  # Envoy passed (nearly) every byte on its own
    assert lua_reading(result) == python_reading(body)
    assert subset(result.record, {"prompt": 7, "completion": 6, "cached": 1, "cache_write": 2, "events": 4}) == \
        {"prompt": 7, "completion": 6, "cached": 1, "cache_write": 2, "events": 4}
    assert (result.record["text_ascii"], result.record["text_other"]) == tally("ça 😀")


def test_sse_three_way_splits_around_separators(gw: Gateway) -> None:
    """Chunks that end and start inside a separator, for every separator kind."""
    cases, bodies = [], []
    for name in ("chat", "crlf", "cr"):
        body = b"".join(SPLITS[name])
        for k in range(1, len(body) - 1):
            if body[k:k + 1] in (b"\r", b"\n"):
                cases.append(Case([body[:k], body[k:k + 1], body[k + 1:]], pause=0.001))
                bodies.append(body)
    for case, body, result in zip(cases, bodies, run_split(gw, cases), strict=True):
        check_passed(case, result)
        assert lua_reading(result) == python_reading(body)


# --- the SSE format ------------------------------------------------------------------------------


def test_sse_crlf_comments_event_lines_and_done(gw: Gateway) -> None:
    chunks = sse(": keep-alive",
                 "retry: 1000",
                 'id: 7\nevent: delta\ndata:{"choices":[{"delta":{"content":"one"}}]}',
                 ": another comment",
                 'data: {"choices":[{"delta":\ndata: {"content":" two"}}]}',  # data lines joined by \n
                 "event: done\ndata: [DONE]", sep=b"\r\n")
    case = Case(chunks)
    result = gw.run(case)
    check_passed(case, result)
    expect = {"events": 3, "completed": 1, "reported": None, "text_ascii": 7, "text_other": 0}
    assert subset(result.record, expect) == expect
    assert lua_reading(result) == python_reading(case.body())


def test_sse_without_usage_counts_text_but_reports_nothing(gw: Gateway) -> None:
    chunks = sse(chat("Hi"), chat(" — there"), chat(None, "stop"), "data: [DONE]")
    case = Case(chunks)
    result = gw.run(case)
    check_passed(case, result)
    assert subset(result.record, {"reported": None, "prompt": None, "completion": None, "completed": 1,
                                  "events": 4}) == \
        {"reported": None, "prompt": None, "completion": None, "completed": 1, "events": 4}
    assert (result.record["text_ascii"], result.record["text_other"]) == tally("Hi", " — there")


def test_sse_last_event_without_blank_line_is_read(gw: Gateway) -> None:
    body = b"".join(SPLIT_CHAT).rstrip(b"\n")
    case = Case([body])
    result = gw.run(case)
    check_passed(case, result)
    assert result.record["completed"] == 1 and result.record["reported"] == 1
    assert lua_reading(result) == python_reading(body)


def test_stream_cut_off_by_the_upstream_keeps_what_was_seen(gw: Gateway) -> None:
    chat_cut = Case(OPENAI_CHAT, reset_after=3)
    anthropic_cut = Case(ANTHROPIC, reset_after=4)
    for case, result in zip((chat_cut, anthropic_cut), gw.run_many([chat_cut, anthropic_cut]), strict=True):
        assert result.body == case.body() and result.error is not None  # the client saw the cut
        assert result.record["end"] is None and result.record["completed"] is None
        assert result.record["read"] == "sse"
    chat_record, anthropic_record = (r.record for r in gw.run_many([chat_cut, anthropic_cut]))
    assert subset(chat_record, {"events": 3, "reported": None, "prompt": None}) == \
        {"events": 3, "reported": None, "prompt": None}
    assert (chat_record["text_ascii"], chat_record["text_other"]) == tally(*CHAT_TEXTS[:3])
    # Anthropic: message_start's usage was already reported, with its output count
    assert subset(anthropic_record, {"events": 4, "reported": 1, "prompt": 25, "completion": 1, "cached": 10,
                                     "cache_write": 3}) == \
        {"events": 4, "reported": 1, "prompt": 25, "completion": 1, "cached": 10, "cache_write": 3}
    assert (anthropic_record["text_ascii"], anthropic_record["text_other"]) == tally("こんにちは")


def test_oversized_event_is_skipped_and_passes(gw: Gateway) -> None:
    huge = chunk_of({"choices": [{"delta": {"content": "x" * ((1 << 20) + 1000)}}],
                     "usage": {"prompt_tokens": 99, "completion_tokens": 99}})
    body = b"".join(sse(chat("a"), huge, chat("b"), chunk_of({"choices": [], "usage": {
        "prompt_tokens": 2, "completion_tokens": 3}}), "data: [DONE]"))
    case = Case([body[i:i + 32768] for i in range(0, len(body), 32768)], pause=0)
    result = gw.run(case)
    check_passed(case, result)
    assert subset(result.record, {"events": 4, "prompt": 2, "completion": 3, "text_ascii": 2, "completed": 1}) == \
        {"events": 4, "prompt": 2, "completion": 3, "text_ascii": 2, "completed": 1}


# --- what is not read --------------------------------------------------------------------------


def test_non_2xx_responses_are_not_read(gw: Gateway) -> None:
    usage = json.dumps({"error": {"message": "x"}, "usage": {"prompt_tokens": 5, "completion_tokens": 5}})
    cases = [Case([usage.encode()], "application/json", status=500),
             Case(SPLIT_CHAT, "text/event-stream", status=429),
             Case(SPLIT_CHAT, "text/event-stream", status=302),
             Case([usage.encode()], "application/json", status=400)]
    for case, result in zip(cases, gw.run_many(cases), strict=True):
        check_passed(case, result)
        assert subset(result.record, {"read": None, "reported": None, "prompt": None, "events": None,
                                      "completed": None}) == \
            {"read": None, "reported": None, "prompt": None, "events": None, "completed": None}


def test_other_content_types_are_not_read(gw: Gateway) -> None:
    usage = json.dumps({"usage": {"prompt_tokens": 5, "completion_tokens": 5}}).encode()
    cases = [Case([usage], "text/plain"), Case([usage], "application/octet-stream"), Case([usage], None),
             Case(SPLIT_CHAT, "text/plain; charset=utf-8"), Case(SPLIT_CHAT, "application/x-ndjson"),
             Case([], "application/json"), Case([], "text/event-stream")]
    for case, result in zip(cases, gw.run_many(cases), strict=True):
        check_passed(case, result)
        assert result.record["reported"] is None and result.record["prompt"] is None
        if case.chunks:
            assert result.record["read"] is None and result.record["completed"] is None


# --- a slow stream is not held back ------------------------------------------------------------


def test_slow_stream_reaches_the_client_chunk_by_chunk(gw: Gateway) -> None:
    gate, test_id = uuid.uuid4().hex, uuid.uuid4().hex
    chunks = sse(chat("FIRST-EVENT"), chat("SECOND-EVENT"),
                 chunk_of({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}), "data: [DONE]")
    # The upstream writes the first event, then waits for the gate before the second.
    case = Case(chunks, gate_after=1, gate=gate, gate_timeout=10.0)
    payload = case.wire()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/scripted HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                     b"x-test-id: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                     % (test_id.encode(), len(payload), payload))
        received = b""
        while b"FIRST-EVENT" not in received:  # a held-back chunk would time out here (5 s)
            data = sock.recv(65536)
            assert data, "connection closed before the first event"
            received += data
        assert b"SECOND-EVENT" not in received  # the upstream has not sent it: the gate is shut
        gw.release(gate)
        while not received.endswith(b"0\r\n\r\n"):
            data = sock.recv(65536)
            if not data:
                break
            received += data
    assert b"SECOND-EVENT" in received and b"[DONE]" in received
    record = gw.log.wait([test_id])[0]
    assert subset(record, {"events": 4, "prompt": 1, "completion": 2, "completed": 1, "end": 1}) == \
        {"events": 4, "prompt": 1, "completion": 2, "completed": 1, "end": 1}


# --- text counting -----------------------------------------------------------------------------


def test_non_ascii_text_is_counted_by_bytes(gw: Gateway) -> None:
    raw = ['"héllo"', '"\\u00e9t\\u00e9"', '"😀"', '"\\ud83d\\ude00"', '"\\ud800x"', '"日本語"',
           '"tab\\tnew\\nline"', '"Ω\\u2603"']
    texts = [json.loads(r) for r in raw]
    chunks = sse(*[f'data: {{"choices":[{{"index":0,"delta":{{"content":{r}}}}}]}}' for r in raw],
                 "data: [DONE]")
    case = Case(chunks)
    result = gw.run(case)
    check_passed(case, result)
    assert (result.record["text_ascii"], result.record["text_other"]) == tally(*texts)
    assert result.record["text_other"] == 2 + 4 + 4 + 4 + 3 + 9 + 2 + 3
    assert lua_reading(result) == python_reading(case.body())


def test_responses_and_anthropic_text_is_counted_from_the_decoded_values(gw: Gateway) -> None:
    chunks = sse('data: {"type":"response.output_text.delta","delta":"\\u65e5\\u672c \\"q\\""}',
                 'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"\\u00e9\\n"}}',
                 'data: {"type":"response.output_text.delta","delta":{"not":"a string"}}',
                 'data: {"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{}"}}')
    case = Case(chunks)
    result = gw.run(case)
    check_passed(case, result)
    assert (result.record["text_ascii"], result.record["text_other"]) == tally("日本 \"q\"", "é\n")
    assert lua_reading(result) == python_reading(case.body())


def test_headers_only_response_is_followed_to_its_end(gw: Gateway) -> None:
    case = Case([], "text/event-stream", status=204)
    result = gw.run(case)
    assert result.status == 204 and result.record["end"] == 1 and result.record["status"] == 204


def test_envoy_logged_no_script_error(gw: Gateway) -> None:
    """Last: no case above made the script fail (Envoy logs a Lua error and lets the stream go on)."""
    log = gw.envoy.log()
    assert "script log" not in log and "[lua]" not in log, log[-2000:]
