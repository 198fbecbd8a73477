"""Bearer token handling without crypto: header extraction, JWS parsing, claim checks.

Everything here is pure: a ``TokenError`` carries the stable reason code and a
description safe to put in ``WWW-Authenticate`` (never the token itself).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from extproc.domain.identity import Identity
from extproc.domain.reasons import Reason
from extproc.identity.spec import IssuerSpec

MAX_TOKEN_BYTES = 8192
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
#: An ``exp`` further out than this is not seconds (JWT NumericDate); most likely milliseconds.
MAX_EXP_AHEAD_SECONDS = 10 * 365 * 86400
MAX_CLAIM_LENGTH = 256
#: Header parameters that point at keys elsewhere. Never followed: keys come only
#: from the issuer's configured JWKS.
IGNORED_KEY_HEADERS = ("jku", "x5u", "jwk", "x5c")


class TokenError(Exception):
    def __init__(self, reason: Reason, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


@dataclass(frozen=True, slots=True)
class ParsedToken:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header.get("alg", ""))

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def bearer_token(authorization: str | None, max_bytes: int = MAX_TOKEN_BYTES) -> str:
    """The token from an ``Authorization: Bearer …`` header value."""
    if not authorization:
        raise TokenError(Reason.MISSING_CREDENTIALS, "no bearer token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise TokenError(Reason.INVALID_AUTHORIZATION_HEADER, "authorization scheme must be Bearer")
    token = token.strip()
    if not token:
        raise TokenError(Reason.INVALID_AUTHORIZATION_HEADER, "empty bearer token")
    if len(token) > max_bytes:
        raise TokenError(Reason.TOKEN_TOO_LARGE, f"token longer than {max_bytes} bytes")
    return token


def _b64decode(segment: str) -> bytes:
    # base64's decoder skips characters outside the alphabet: check them first.
    if _B64URL.fullmatch(segment) is None or len(segment) % 4 == 1:
        raise ValueError("bad base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise TokenError(Reason.MALFORMED_TOKEN, f"token {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise TokenError(Reason.MALFORMED_TOKEN, f"token {what} is not a JSON object")
    return value


def parse(token: str) -> ParsedToken:
    """Split and decode a compact JWS. Does not verify anything."""
    parts = token.split(".")
    if len(parts) == 5:
        raise TokenError(Reason.ENCRYPTED_TOKEN_UNSUPPORTED, "encrypted tokens (JWE) are not accepted")
    if len(parts) != 3:
        raise TokenError(Reason.MALFORMED_TOKEN, "token is not three dot-separated segments")
    header = _json_object(parts[0], "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise TokenError(Reason.ALGORITHM_NOT_ALLOWED, "unsigned tokens are not accepted")
    if "crit" in header:
        raise TokenError(Reason.MALFORMED_TOKEN, "critical header parameters are not supported")
    claims = _json_object(parts[1], "payload")
    try:
        signature = _b64decode(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise TokenError(Reason.MALFORMED_TOKEN, "token signature is not base64url") from exc
    return ParsedToken(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii", "replace"), signature)


def _claim(claims: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(Reason.INVALID_CLAIMS, f"{name} is not a number")
    return float(value)


def _header_safe(value: Any, name: str, required: bool) -> str:
    """A claim that will be copied into headers: a printable string of bounded length."""
    if value is None or value == "":
        if required:
            raise TokenError(Reason.MISSING_TENANT if name == "tenant" else Reason.INVALID_CLAIMS,
                             f"{name} claim is missing")
        return ""
    if not isinstance(value, str):
        raise TokenError(Reason.MISSING_TENANT if name == "tenant" else Reason.INVALID_CLAIMS,
                         f"{name} claim is not a string")
    if len(value) > MAX_CLAIM_LENGTH or not value.isprintable():
        raise TokenError(Reason.INVALID_CLAIMS, f"{name} claim has control characters or is too long")
    return value


def _string_set(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise TokenError(Reason.INVALID_CLAIMS, f"{name} claim is not a string or list of strings")
    return frozenset(items)


def check_time(claims: dict[str, Any], leeway: float, now: float) -> float:
    """Check exp/nbf/iat against ``now`` with leeway; returns ``exp``."""
    exp = _number(claims, "exp")
    if exp is None:
        raise TokenError(Reason.MISSING_EXPIRY, "token has no exp claim")
    if exp > now + MAX_EXP_AHEAD_SECONDS:
        raise TokenError(Reason.INVALID_CLAIMS, "exp is too far ahead (milliseconds instead of seconds?)")
    if now >= exp + leeway:
        raise TokenError(Reason.TOKEN_EXPIRED, "token expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise TokenError(Reason.TOKEN_NOT_YET_VALID, "token not valid yet (nbf)")
    iat = _number(claims, "iat")
    if iat is not None and now + leeway < iat:
        raise TokenError(Reason.TOKEN_NOT_YET_VALID, "token issued in the future (iat)")
    return exp


def identity_from_claims(claims: dict[str, Any], spec: IssuerSpec, now: float) -> tuple[Identity, float]:
    """Validate registered and configured claims; returns the identity and ``exp``."""
    if claims.get("iss") != spec.issuer:
        raise TokenError(Reason.UNTRUSTED_ISSUER, "token issuer is not trusted")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in spec.audiences for a in audiences):
        raise TokenError(Reason.INVALID_AUDIENCE, "token audience is not accepted")
    exp = check_time(claims, spec.leeway_seconds, now)
    identity = Identity(
        tenant=_header_safe(_claim(claims, spec.tenant_claim), "tenant", required=True),
        subject=_header_safe(_claim(claims, spec.subject_claim), "subject", required=False),
        plan=_header_safe(_claim(claims, spec.plan_claim), "plan", required=False),
        scopes=_string_set(_claim(claims, spec.scopes_claim), "scope"),
        roles=_string_set(_claim(claims, spec.roles_claim), "roles"),
        issuer=spec.issuer,
        issuer_name=spec.name,
        verified=True,
    )
    return identity, exp
