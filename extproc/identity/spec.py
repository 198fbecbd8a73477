"""What the config says about one trusted token issuer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Asymmetric algorithms only. HMAC (HS*) and "none" are never accepted: with a
#: public JWKS, HS* lets anyone who has the public key forge tokens.
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class IssuerSpec:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str] = frozenset({"RS256"})
    tenant_claim: tuple[str, ...] = ("tenant_id",)
    subject_claim: tuple[str, ...] = ("sub",)
    plan_claim: tuple[str, ...] = ("plan",)
    scopes_claim: tuple[str, ...] = ("scope",)
    roles_claim: tuple[str, ...] = ("roles",)
    leeway_seconds: float = 30.0
    #: Where keys come from: OIDC discovery at ``issuer`` (default), an explicit
    #: ``jwks_uri``, or a static JWKS (air-gapped; never fetched).
    jwks_uri: str | None = None
    static_jwks: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    refresh_seconds: float = 300.0
    min_refresh_seconds: float = 30.0
    unknown_kid_cooldown_seconds: float = 30.0
    fetch_timeout_seconds: float = 5.0
