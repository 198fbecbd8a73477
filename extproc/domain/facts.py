"""What the sidecar knows about one request, independent of how Envoy delivered it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Headers in this namespace are ours; anything a client sends in it is removed
#: before any step reads the request.
INTERNAL_HEADER_PREFIX = "x-extproc-"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """Request line and headers as Envoy saw them, after internal headers were stripped.

    ``headers`` has lower-case names (HTTP/2 semantics), without pseudo-headers.
    ``path`` excludes the query string. ``stripped`` lists client-supplied
    internal headers that must be removed on the way upstream.
    """

    method: str
    path: str
    host: str
    headers: dict[str, str]
    end_of_stream: bool = False
    listener: str = "default"
    stripped: tuple[str, ...] = ()
    #: The adapter can replace the request body (ext_proc yes, ext_authz no).
    can_rewrite_body: bool = False
    #: The adapter sees the request end, so it can release a concurrency lease (ext_proc).
    sees_request_end: bool = False


@dataclass(frozen=True, slots=True)
class RequestBody:
    """The (bounded) request body as received, and its JSON form when it parsed."""

    raw: bytes
    complete: bool
    json: dict[str, Any] | None = field(default=None)


def split_path(raw_path: str) -> str:
    """The path without query string or fragment."""
    cut = len(raw_path)
    for sep in ("?", "#"):
        i = raw_path.find(sep)
        if 0 <= i < cut:
            cut = i
    return raw_path[:cut]


def host_without_port(authority: str) -> str:
    """``example.com:8080`` → ``example.com``; IPv6 literals keep their brackets."""
    authority = authority.lower()
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end >= 0 else authority
    colon = authority.rfind(":")
    return authority[:colon] if colon >= 0 else authority
