"""The identity step's interface, as the pipeline sees it."""

from __future__ import annotations

from typing import Protocol

from extproc.domain.identity import Identity


class Authenticator(Protocol):
    """Turns an ``Authorization`` header value into a verified identity.

    Raises ``identity.tokens.TokenError`` (401, with a reason code) or
    ``identity.authenticator.IdentityUnavailable`` (503). Never does network I/O on
    the request path except the rate-limited refetch for an unknown key id.
    """

    async def authenticate(self, authorization: str | None) -> Identity: ...
