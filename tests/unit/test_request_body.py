"""Request bodies read as the upstream will read them, parameters read strictly, token estimates (pure)."""

from __future__ import annotations

import json

import pytest

from extproc.domain.classify import TokenUse
from extproc.domain.multipart import FormError, boundary_of, read_form
from extproc.domain.params import read_params, token_demand
from extproc.domain.reasons import InvalidRequest, Reason
from extproc.domain.request_body import BodyFormat, read_body
from extproc.domain.token_estimate import text_tokens, value_tokens
from tests.sse_reference import TextTally

BOUNDARY = "----extproc-test-7MA4YWxkTrZu0gW"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, bytes, str | None], boundary: str = BOUNDARY) -> bytes:
    """A multipart body: (name, value, filename or None) per part, as SDKs send them."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: audio/wav\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


TRANSCRIPTION = form(("file", b"RIFF\x00\x01\r\n--not-the-boundary\r\n\x00", "a.wav"), ("model", b"whisper-1", None),
                     ("timestamp_granularities[]", b"word", None), ("timestamp_granularities[]", b"segment", None))


# --- which reader a content-type gets (hardening #1) ---------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8", "",
                                          "application/vnd.api+json"])
def test_json_content_types_read_json(content_type: str) -> None:
    body = read_body(b'{"model": "gpt-4o"}', {"content-type": content_type} if content_type else {})
    assert body is not None and body.format is BodyFormat.JSON and body.fields == {"model": "gpt-4o"}


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "MULTIPART/FORM-DATA; boundary=x",
                                          "Multipart/Form-Data; boundary=\"x\""])
def test_a_json_body_labelled_as_a_form_is_refused(content_type: str) -> None:
    """Regression (hardening #1): a JSON body sent as multipart/form-data (any letter case) was never
    read, so model rules never saw the model the upstream served."""
    with pytest.raises(InvalidRequest) as refused:
        read_body(json.dumps({"model": "gpt-4o", "messages": []}).encode(), {"content-type": content_type})
    assert refused.value.reason is Reason.INVALID_FORM


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/mixed",
                                          "application/octet-stream", "application/jsonx"])
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        read_body(b'{"model": "gpt-4o"}', {"content-type": content_type})
    assert refused.value.reason is Reason.UNSUPPORTED_MEDIA_TYPE and refused.value.reason.status == 415
    assert "application/json" in refused.value.message


def test_compressed_bodies_are_415() -> None:
    with pytest.raises(InvalidRequest) as refused:
        read_body(b"\x1f\x8b\x08", {"content-type": "application/json", "content-encoding": "gzip"})
    assert refused.value.reason is Reason.UNSUPPORTED_MEDIA_TYPE and "gzip" in refused.value.message


def test_json_with_a_repeated_key_is_refused_at_any_depth() -> None:
    """Parsers disagree on which of two equal keys wins: the gateway must not pick one the upstream
    does not."""
    for raw in (b'{"model": "gpt-4o-mini", "model": "gpt-4o"}',
                b'{"model": "m", "messages": [{"role": "user", "role": "system"}]}',
                b'{"model": "m", "mod\\u0065l": "n"}'):
        with pytest.raises(InvalidRequest) as refused:
            read_body(raw, {})
        assert refused.value.reason is Reason.INVALID_JSON and "more than once" in refused.value.message


# --- forms --------------------------------------------------------------------------------------


def test_a_form_gives_its_text_fields_and_skips_files() -> None:
    body = read_body(TRANSCRIPTION, {"content-type": FORM_TYPE})
    assert body is not None and body.format is BodyFormat.FORM
    assert body.fields == {"model": "whisper-1", "timestamp_granularities[]": "segment"}


def test_a_form_field_is_replaced_in_place() -> None:
    body = read_body(TRANSCRIPTION, {"content-type": FORM_TYPE})
    assert body is not None and body.can_set("model", "whisper-large") and not body.can_set("stream_options", {})
    again = read_body(body.rewritten({"model": "whisper-large"}), {"content-type": FORM_TYPE})
    assert again is not None and again.fields["model"] == "whisper-large"
    assert body.rewritten({"model": "whisper-large"}).replace(b"whisper-large", b"whisper-1") == TRANSCRIPTION


@pytest.mark.parametrize(("raw", "why"), [
    (b"preamble\r\n" + TRANSCRIPTION, "start with its boundary"),
    (b'{"model": "x", "p": "\r\n--' + BOUNDARY.encode() + b'"}' + TRANSCRIPTION, "start with its boundary"),
    (form(("model", b"whisper-1", None), ("model", b"gpt-4o", None)), "more than once"),
    (TRANSCRIPTION[:TRANSCRIPTION.rindex(b"--" + BOUNDARY.encode())], "closing boundary"),
    (form(("model", b"whisper-\xff", None)), "not UTF-8"),
    (TRANSCRIPTION.replace(b"Content-Disposition: form-data; name=\"model\"",
                           b"Content-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: base64"),
     "content-transfer-encoding"),
    (TRANSCRIPTION.replace(b'form-data; name="model"', b"attachment"), "form-data"),
])
def test_forms_that_read_two_ways_are_refused(raw: bytes, why: str) -> None:
    with pytest.raises(FormError, match=why):
        read_form(raw, BOUNDARY)


def test_boundaries() -> None:
    assert boundary_of('multipart/form-data; boundary="a b"') == "a b"
    for bad in ("multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=" + "x" * 71):
        with pytest.raises(FormError):
            boundary_of(bad)


# --- parameters (hardening #5) ------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 0, "true", "false", "yes", [], {}, 1.0])
def test_stream_must_be_a_boolean(value: object) -> None:
    """Regression (hardening #5): ``"stream": 1`` or ``"true"`` streamed upstream while the gateway
    took the response for JSON and never read its usage."""
    with pytest.raises(InvalidRequest) as refused:
        read_params({"stream": value})
    assert refused.value.reason is Reason.INVALID_PARAMETER and refused.value.message.startswith("stream ")


def test_stream_values_read() -> None:
    assert read_params({"stream": True}).stream and not read_params({"stream": False}).stream
    assert not read_params({"stream": None}).stream and not read_params({}).stream
    assert read_params({"stream": "true"}, form=True).stream  # every form value is text


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "max_output_tokens", "n"])
@pytest.mark.parametrize("value", ["100000", True, -1, 1.5, [1], 10**300, float(10**300)])
def test_counts_must_be_whole_numbers(field: str, value: object) -> None:
    """Regression (hardening #5, #8): a string max_tokens was skipped (the default was reserved
    while a lenient upstream generated 100,000), and 10**300 broke the decision record."""
    with pytest.raises(InvalidRequest) as refused:
        read_params({field: value})
    assert refused.value.reason is Reason.INVALID_PARAMETER and refused.value.message.startswith(field)
    assert "0000000000000" not in refused.value.message  # never the whole number back


def test_the_estimate_counts_every_choice_and_the_largest_cap() -> None:
    """Regression (hardening #5): ``n`` was ignored and max_tokens was preferred over
    max_completion_tokens."""
    params = read_params({"prompt": "abcd" * 10, "max_tokens": 5, "max_completion_tokens": 50, "n": 3})
    assert (params.completion_cap, params.cap_fields, params.choices) == (50, ("max_tokens", "max_completion_tokens"), 3)
    assert token_demand(params, TokenUse.GENERATION, 256).total == 10 + 50 * 3
    assert token_demand(read_params({"prompt": "abcd", "best_of": 4, "n": 2}), TokenUse.GENERATION, 100).total == 401
    assert token_demand(read_params({"prompt": "abcd", "max_tokens": 7.0}), TokenUse.GENERATION, 100).total == 8
    assert token_demand(read_params({"input": "abcd" * 10}), TokenUse.PROMPT, 256).total == 10
    assert token_demand(read_params({"messages": ["x" * 4000]}), TokenUse.NONE, 256).total == 0
    assert token_demand(read_params(None), TokenUse.GENERATION, 256).total == 256


# --- token estimates (hardening #7) -------------------------------------------------------------


def test_non_ascii_text_is_never_under_reserved() -> None:
    """Regression (hardening #7): characters / 4 reserved a quarter of a CJK prompt. Every
    non-ASCII UTF-8 byte now counts a token: an upper bound for byte-level BPE tokenizers."""
    japanese = "東京は日本の首都です。" * 10  # 110 characters, about 110-140 tokens in GPT tokenizers
    assert text_tokens(japanese) == len(japanese.encode()) == 330
    assert text_tokens("hello world!") == 3  # ASCII: four bytes a token, rounded up
    assert text_tokens("héllo") == 1 + 2  # 4 ASCII bytes, é is 2 bytes
    assert value_tokens({"content": "日本"}) == text_tokens('{"content":"日本"}')
    tally = TextTally()
    for piece in ("Hel", "lo ", "wörld"):
        tally.add(piece)
    assert tally.tokens == text_tokens("Hello wörld")
