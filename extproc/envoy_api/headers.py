"""Reading Envoy header maps into ``RequestFacts``, shared by both codecs."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2

from extproc.domain.facts import INTERNAL_HEADER_PREFIX, RequestFacts, host_without_port, split_path


def header_value(h: base_pb2.HeaderValue) -> str:
    # Envoy fills ``raw_value`` (bytes) and leaves ``value`` empty in recent
    # versions; older ones, and some paths, use ``value``. Read both.
    value: str = h.value
    if value:
        return value
    raw: bytes = h.raw_value
    return raw.decode("utf-8", "replace") if raw else ""


def facts_from_pairs(
    pairs: Iterable[tuple[str, str]], end_of_stream: bool, listener: str, full_duplex: bool = False
) -> RequestFacts:
    """``full_duplex``: ext_proc, which can rewrite bodies and sees the request end."""
    """Split pseudo-headers off, drop client-supplied internal headers, build the facts."""
    headers: dict[str, str] = {}
    stripped: list[str] = []
    method = path = authority = ""
    for key, value in pairs:
        if not key:
            continue
        if key[0] == ":":
            if key == ":method":
                method = value
            elif key == ":path":
                path = value
            elif key == ":authority":
                authority = value
            continue
        key = key.lower()
        # ``x-extproc_tenant`` reaches CGI/WSGI upstreams as ``X_EXTPROC_TENANT`` too.
        if key.replace("_", "-").startswith(INTERNAL_HEADER_PREFIX):
            stripped.append(key)
            continue
        if key in headers:  # repeated header: join as HTTP allows
            headers[key] = f"{headers[key]},{value}"
        else:
            headers[key] = value
    if not authority:
        authority = headers.get("host", "")
    return RequestFacts(
        method=method,
        path=split_path(path),
        host=host_without_port(authority),
        headers=headers,
        end_of_stream=end_of_stream,
        listener=listener,
        stripped=tuple(stripped),
        can_rewrite_body=full_duplex,
        sees_request_end=full_duplex,
    )


def removals(facts: RequestFacts, replaced: list[tuple[str, str]]) -> list[str]:
    """Client-supplied internal headers to remove, minus the ones we overwrite anyway.

    ext_authz applies ``headers_to_remove`` after its sets, so removing a header
    we also set would drop our own value.
    """
    ours = {k for k, _ in replaced}
    return [h for h in facts.stripped if h not in ours]
