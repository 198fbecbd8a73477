"""The identity step's interface, and the one policy that needs no credential."""

from __future__ import annotations

from typing import Protocol

from extproc.domain.facts import RequestFacts
from extproc.domain.identity import ANONYMOUS, Identity


class Authenticator(Protocol):
    """Returns the verified identity of a request.

    Implementations never do network I/O on the request path: keys are fetched
    in the background and verified tokens are cached.
    """

    def authenticate(self, facts: RequestFacts) -> Identity: ...


class NoAuthentication:
    """Listeners configured without authentication: every caller is ``anonymous``.

    Tenant identity comes only from a verified token, so no header is consulted here.
    """

    def authenticate(self, facts: RequestFacts) -> Identity:
        return ANONYMOUS
