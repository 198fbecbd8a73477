"""Who is calling. Only ever built from a verified credential (or the explicit anonymous identity)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    subject: str = ""
    plan: str = ""
    scopes: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    issuer: str = ""
    issuer_name: str = ""
    verified: bool = False


#: The identity of requests on listeners that require no authentication.
ANONYMOUS = Identity(tenant="anonymous", subject="anonymous")
