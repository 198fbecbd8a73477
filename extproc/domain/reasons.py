"""The one stable enum of reason codes, with the HTTP status and error type each maps to.

The string values are a public contract: they appear in denial bodies, headers,
metrics labels and decision records. Add new members; never rename existing ones.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why a decision came out the way it did."""

    ALLOWED = "allowed"
    # 401: no usable credential (authentication).
    MISSING_CREDENTIALS = "missing_credentials"
    INVALID_AUTHORIZATION_HEADER = "invalid_authorization_header"
    TOKEN_TOO_LARGE = "token_too_large"
    MALFORMED_TOKEN = "malformed_token"
    ENCRYPTED_TOKEN_UNSUPPORTED = "encrypted_token_unsupported"
    ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed"
    UNKNOWN_SIGNING_KEY = "unknown_signing_key"
    INVALID_SIGNATURE = "invalid_signature"
    UNTRUSTED_ISSUER = "untrusted_issuer"
    INVALID_AUDIENCE = "invalid_audience"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    MISSING_EXPIRY = "missing_expiry"
    INVALID_CLAIMS = "invalid_claims"
    MISSING_TENANT = "missing_tenant"
    # 403: authenticated, not allowed (authorization).
    INSUFFICIENT_SCOPE = "insufficient_scope"
    ROLE_NOT_ALLOWED = "role_not_allowed"
    PLAN_NOT_ALLOWED = "plan_not_allowed"
    ISSUER_NOT_ALLOWED = "issuer_not_allowed"
    # 429: over a quota.
    RATE_LIMITED = "rate_limited"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CONCURRENCY_LIMITED = "concurrency_limited"
    # Request shape and routing.
    UNKNOWN_WORKLOAD = "unknown_workload"
    NO_ROUTE = "no_route"
    BODY_TOO_LARGE = "body_too_large"
    INVALID_JSON = "invalid_json"
    INVALID_FORM = "invalid_form"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INVALID_MODEL = "invalid_model"
    INVALID_PARAMETER = "invalid_parameter"
    REQUEST_BODY_TIMEOUT = "request_body_timeout"
    INTERNAL_ERROR = "internal_error"
    IDENTITY_PROVIDER_UNAVAILABLE = "identity_provider_unavailable"
    QUOTA_STORE_UNAVAILABLE = "quota_store_unavailable"

    @property
    def status(self) -> int:
        return _STATUS[self]

    @property
    def error_type(self) -> str:
        return _ERROR_TYPE[self]


_UNAUTHENTICATED = (
    Reason.MISSING_CREDENTIALS, Reason.INVALID_AUTHORIZATION_HEADER, Reason.TOKEN_TOO_LARGE,
    Reason.MALFORMED_TOKEN, Reason.ENCRYPTED_TOKEN_UNSUPPORTED, Reason.ALGORITHM_NOT_ALLOWED,
    Reason.UNKNOWN_SIGNING_KEY, Reason.INVALID_SIGNATURE, Reason.UNTRUSTED_ISSUER,
    Reason.INVALID_AUDIENCE, Reason.TOKEN_EXPIRED, Reason.TOKEN_NOT_YET_VALID, Reason.MISSING_EXPIRY,
    Reason.INVALID_CLAIMS, Reason.MISSING_TENANT,
)
_FORBIDDEN = (Reason.INSUFFICIENT_SCOPE, Reason.ROLE_NOT_ALLOWED, Reason.PLAN_NOT_ALLOWED,
              Reason.ISSUER_NOT_ALLOWED)


_STATUS: dict[Reason, int] = {
    **dict.fromkeys(_UNAUTHENTICATED, 401),
    **dict.fromkeys(_FORBIDDEN, 403),
    Reason.ALLOWED: 200,
    Reason.UNKNOWN_WORKLOAD: 404,
    Reason.NO_ROUTE: 404,
    Reason.BODY_TOO_LARGE: 413,
    Reason.INVALID_JSON: 400,
    Reason.INVALID_FORM: 400,
    Reason.UNSUPPORTED_MEDIA_TYPE: 415,
    Reason.INVALID_MODEL: 400,
    Reason.INVALID_PARAMETER: 400,
    Reason.REQUEST_BODY_TIMEOUT: 408,
    Reason.INTERNAL_ERROR: 503,
    Reason.IDENTITY_PROVIDER_UNAVAILABLE: 503,
    Reason.QUOTA_STORE_UNAVAILABLE: 503,
    Reason.RATE_LIMITED: 429,
    Reason.BUDGET_EXHAUSTED: 429,
    Reason.CONCURRENCY_LIMITED: 429,
}

# OpenAI-compatible `error.type` values, so existing client SDKs map them sensibly.
_ERROR_TYPE: dict[Reason, str] = {
    **dict.fromkeys(_UNAUTHENTICATED, "authentication_error"),
    **dict.fromkeys(_FORBIDDEN, "permission_error"),
    Reason.ALLOWED: "",
    Reason.UNKNOWN_WORKLOAD: "invalid_request_error",
    Reason.NO_ROUTE: "invalid_request_error",
    Reason.BODY_TOO_LARGE: "invalid_request_error",
    Reason.INVALID_JSON: "invalid_request_error",
    Reason.INVALID_FORM: "invalid_request_error",
    Reason.UNSUPPORTED_MEDIA_TYPE: "invalid_request_error",
    Reason.INVALID_MODEL: "invalid_request_error",
    Reason.INVALID_PARAMETER: "invalid_request_error",
    Reason.REQUEST_BODY_TIMEOUT: "invalid_request_error",
    Reason.INTERNAL_ERROR: "server_error",
    Reason.IDENTITY_PROVIDER_UNAVAILABLE: "server_error",
    Reason.QUOTA_STORE_UNAVAILABLE: "server_error",
    Reason.RATE_LIMITED: "rate_limit_error",
    Reason.BUDGET_EXHAUSTED: "insufficient_quota",
    Reason.CONCURRENCY_LIMITED: "rate_limit_error",
}


def quoted(text: str) -> str:
    """A client's text in a message: its first 64 characters, escaped (``repr``)."""
    return repr(text[:64])


def shown(value: Any) -> str:
    """A client's JSON value in a message, bounded: never the whole input (a 300-digit number is
    "a number out of range")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not value.is_integer():
            return "a fractional number"
        return str(int(value)) if abs(value) < 10**12 else "a number out of range"
    if isinstance(value, str):
        return f"the string {value[:32]!r}" + ("…" if len(value) > 32 else "")
    if isinstance(value, dict):
        return "an object"
    return "a list" if isinstance(value, list) else "null" if value is None else "that value"


class InvalidRequest(Exception):
    """A request the gateway will not decide on as sent (400/408/413/415): the reason and a
    message that says why, safe to send back (bounded, never the whole input)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
