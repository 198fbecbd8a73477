"""The text fields of a ``multipart/form-data`` body, read strictly (pure).

The gateway reads a form (audio transcriptions, image edits) for the fields it decides on,
``model`` above all. What it decides on must be what the upstream reads, so anything a form
parser could read two ways is refused rather than guessed:

- the body must start with the first boundary: no preamble (a preamble could hide a JSON
  object that a lenient upstream reads instead of the form);
- each part names itself ``form-data; name="…"``; parts with a ``filename`` are files and
  their bytes are never looked at;
- a text field may appear once (``name[]`` array fields excepted) and must be UTF-8;
- no ``Content-Transfer-Encoding`` other than 7bit/8bit/binary (a base64 ``model`` part reads
  differently to different parsers);
- the closing boundary must be there.

The whole body is in memory already (bounded by ``request_body.max_bytes``), so fields are
views into it: ``spans`` says where each value lies, so a field can be replaced (a model
rewrite) without touching the rest of the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from extproc.domain.reasons import quoted

#: RFC 2046: 1 to 70 characters from this set, not ending with a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
_PLAIN_ENCODINGS = {"7bit", "8bit", "binary"}


class FormError(ValueError):
    """The body is not a form this gateway reads unambiguously (the message says why)."""


@dataclass(frozen=True, slots=True)
class Form:
    """The text fields of a form, and where each value lies in the body."""

    fields: dict[str, str]
    spans: dict[str, tuple[int, int]]

    def replaced(self, raw: bytes, changes: dict[str, str]) -> bytes:
        """The body with these text fields' values replaced (fields it lacks are left out)."""
        out, at = [], 0
        for start, end, name in sorted((*self.spans[n], n) for n in changes if n in self.spans):
            out += [raw[at:start], changes[name].encode()]
            at = end
        out.append(raw[at:])
        return b"".join(out)


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a ``multipart/form-data`` content type."""
    params = _params(content_type)
    boundary = params.get("boundary")
    if boundary is None:
        raise FormError("multipart/form-data without a boundary parameter")
    if _BOUNDARY.fullmatch(boundary) is None:
        raise FormError("the multipart boundary is not a valid boundary (RFC 2046)")
    return boundary


def read_form(raw: bytes, boundary: str) -> Form:
    delimiter = b"--" + boundary.encode()
    if not raw.startswith(delimiter):
        raise FormError("the form must start with its boundary (no preamble)")
    fields: dict[str, str] = {}
    spans: dict[str, tuple[int, int]] = {}
    at = len(delimiter)
    separator = b"\r\n" + delimiter
    while True:
        if raw.startswith(b"--", at):
            return Form(fields, spans)  # the closing boundary; an epilogue is not read
        if not raw.startswith(b"\r\n", at):
            raise FormError("a boundary line must end with CRLF")
        head_end = raw.find(b"\r\n\r\n", at + 2)
        end = raw.find(separator, at + 2)
        if end < 0:
            raise FormError("the form has no closing boundary (cut short?)")
        if head_end < 0 or head_end + 4 > end:
            raise FormError("a form part has no header block")
        name, is_file = _disposition(raw[at + 2:head_end])
        value_start = head_end + 4
        if not is_file:
            _text_field(fields, spans, name, raw, value_start, end)
        at = end + len(separator)


def _text_field(fields: dict[str, str], spans: dict[str, tuple[int, int]], name: str, raw: bytes,
                start: int, end: int) -> None:
    if name in fields and not name.endswith("[]"):
        raise FormError(f"form field {quoted(name)} appears more than once")
    try:
        fields[name] = raw[start:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormError(f"form field {quoted(name)} is not UTF-8") from exc
    spans[name] = (start, end)


def _disposition(head: bytes) -> tuple[str, bool]:
    """The part's field name, and whether it is a file."""
    try:
        lines = head.decode("utf-8").split("\r\n")
    except UnicodeDecodeError as exc:
        raise FormError("a form part's headers are not UTF-8") from exc
    headers: dict[str, str] = {}
    for line in lines:
        key, colon, value = line.partition(":")
        if not colon:
            raise FormError("a form part has a malformed header line")
        key = key.strip().lower()
        if key in headers:
            raise FormError(f"a form part repeats its {key} header")
        headers[key] = value.strip()
    encoding = headers.get("content-transfer-encoding", "binary").lower()
    if encoding not in _PLAIN_ENCODINGS:
        raise FormError(f"form parts with content-transfer-encoding {encoding[:20]!r} are not accepted")
    disposition = headers.get("content-disposition")
    if disposition is None or disposition.split(";", 1)[0].strip().lower() != "form-data":
        raise FormError("every form part needs content-disposition: form-data")
    params = _params(disposition)
    name = params.get("name")
    if name is None:
        raise FormError("a form part has no name")
    return name, "filename" in params or "filename*" in params


def _params(header: str) -> dict[str, str]:
    """``; key=value`` parameters (values quoted or not), keys lower-cased."""
    out: dict[str, str] = {}
    for key, value in _PARAM.findall(header):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[key.lower()] = value
    return out
