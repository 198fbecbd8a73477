"""The one stable enum of reason codes, with the HTTP status and error type each maps to.

The string values are a public contract: they appear in denial bodies, headers,
metrics labels and decision records. Add new members; never rename existing ones.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a decision came out the way it did."""

    ALLOWED = "allowed"
    UNKNOWN_WORKLOAD = "unknown_workload"
    NO_ROUTE = "no_route"
    BODY_TOO_LARGE = "body_too_large"
    INVALID_JSON = "invalid_json"
    INTERNAL_ERROR = "internal_error"

    @property
    def status(self) -> int:
        return _STATUS[self]

    @property
    def error_type(self) -> str:
        return _ERROR_TYPE[self]


_STATUS: dict[Reason, int] = {
    Reason.ALLOWED: 200,
    Reason.UNKNOWN_WORKLOAD: 404,
    Reason.NO_ROUTE: 404,
    Reason.BODY_TOO_LARGE: 413,
    Reason.INVALID_JSON: 400,
    Reason.INTERNAL_ERROR: 503,
}

# OpenAI-compatible `error.type` values, so existing client SDKs map them sensibly.
_ERROR_TYPE: dict[Reason, str] = {
    Reason.ALLOWED: "",
    Reason.UNKNOWN_WORKLOAD: "invalid_request_error",
    Reason.NO_ROUTE: "invalid_request_error",
    Reason.BODY_TOO_LARGE: "invalid_request_error",
    Reason.INVALID_JSON: "invalid_request_error",
    Reason.INTERNAL_ERROR: "server_error",
}
