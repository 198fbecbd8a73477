"""A request body the gateway decides on: read as what the upstream will read, or refused (pure).

On a route whose rule reads the body (a ``body.FIELD`` model source or a body condition), the
decision must rest on the same fields the upstream will serve from. The ``content-type`` picks
the reader (README "Request bodies"):

- ``application/json``, any ``application/*+json``, or none at all: a JSON object; a JSON text
  that is not an object, or that repeats a key at any depth (parsers differ on which one wins),
  is refused with 400;
- ``multipart/form-data``: the form's text fields (``domain.multipart``), strictly;
- anything else (``text/plain``, ``application/x-www-form-urlencoded``, a JSON body labelled as
  something it is not) is refused with 415, as is a compressed body (``content-encoding``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from extproc.domain.multipart import Form, FormError, boundary_of, read_form
from extproc.domain.reasons import InvalidRequest, Reason, quoted


class BodyFormat(Enum):
    JSON = "json"
    FORM = "multipart/form-data"


@dataclass(frozen=True, slots=True)
class RequestBody:
    """The fields of a body (a JSON object, or a form's text fields) and how to rewrite them."""

    format: BodyFormat
    fields: Mapping[str, Any]
    raw: bytes = field(repr=False)
    form: Form | None = field(default=None, repr=False)

    def rewritten(self, changes: Mapping[str, Any]) -> bytes:
        """The body with these top-level fields set. A form can only have its existing text
        fields replaced, with text; JSON takes anything."""
        if self.form is not None:
            return self.form.replaced(self.raw, {k: str(v) for k, v in changes.items()
                                                 if isinstance(v, str) and k in self.fields})
        return json.dumps({**self.fields, **changes}, separators=(",", ":")).encode()

    def can_set(self, name: str, value: Any) -> bool:
        """Whether ``rewritten`` can set this field to this value."""
        return self.format is BodyFormat.JSON or (isinstance(value, str) and name in self.fields)


def body_format(headers: Mapping[str, str]) -> BodyFormat:
    """Which reader the content-type asks for (``InvalidRequest`` with 415 for any other)."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidRequest(Reason.UNSUPPORTED_MEDIA_TYPE,
                          f"compressed request bodies (content-encoding {quoted(encoding)}) are not "
                          "accepted here; send the body uncompressed")
    content_type = headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("", "application/json") or (media.startswith("application/") and media.endswith("+json")):
        return BodyFormat.JSON
    if media == "multipart/form-data":
        return BodyFormat.FORM
    raise InvalidRequest(Reason.UNSUPPORTED_MEDIA_TYPE,
                      f"content-type {quoted(media)} is not accepted for this request; send "
                      "application/json (or multipart/form-data where the API takes a form)")


def read_body(raw: bytes, headers: Mapping[str, str]) -> RequestBody | None:
    """The body's fields (None for an empty body), or ``InvalidRequest``."""
    fmt = body_format(headers)
    if fmt is BodyFormat.FORM:
        if not raw:
            return None
        try:
            form = read_form(raw, boundary_of(headers.get("content-type", "")))
        except FormError as exc:
            raise InvalidRequest(Reason.INVALID_FORM, f"request body is not a readable form: {exc}") from None
        return RequestBody(fmt, form.fields, raw, form)
    if not raw.strip():
        return None
    try:
        doc = json.loads(raw, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise InvalidRequest(Reason.INVALID_JSON, f"request body is not valid JSON: {detail}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest(Reason.INVALID_JSON, "request body must be a JSON object")
    return RequestBody(fmt, doc, raw)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"key {repeated[:64]!r} appears more than once in an object")
    return doc
