"""Usage parsing from real-shaped JSON responses of each API."""

from __future__ import annotations

import json

import pytest

from extproc.domain.usage import Usage
from tests.sse_reference import usage_from_json

CHAT = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                  "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 4, "audio_tokens": 0}}}
EMBEDDINGS = {"object": "list", "data": [], "model": "text-embedding-3-small",
              "usage": {"prompt_tokens": 8, "total_tokens": 8}}
RESPONSES = {"id": "resp_1", "object": "response", "output": [],
             "usage": {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 64},
                       "total_tokens": 123}}
ANTHROPIC = {"id": "msg_1", "type": "message", "content": [],
             "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 1024}}


@pytest.mark.parametrize(("doc", "expected"), [
    (CHAT, Usage(19, 10, 8, 4)),
    (EMBEDDINGS, Usage(8, 0)),
    (RESPONSES, Usage(36, 87, 0, 64)),
    (ANTHROPIC, Usage(2095, 503, 1024, 0)),
])
def test_each_api_shape(doc, expected) -> None:
    usage = usage_from_json(json.dumps(doc).encode())
    assert usage == expected
    assert usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"usage": null}', b'{"usage": {"prompt_tokens": -1}}',
                                  b'{"usage": {"input_tokens": 3}}', b'{"usage": {"prompt_tokens": true}}',
                                  b'{"choices": []}', b"[" * 10000])
def test_no_usage_is_none(body: bytes) -> None:
    assert usage_from_json(body) is None
