"""Helpers shared by the two servicers."""

from __future__ import annotations

import logging

import grpc

from extproc.domain.decision import Decision, deny
from extproc.domain.ids import new_decision_id
from extproc.domain.reasons import Reason

log = logging.getLogger("extproc.service")

#: gRPC metadata key Envoy sets (``grpc_service.initial_metadata``) to name the listener.
LISTENER_METADATA_KEY = "x-extproc-listener"


def listener_name(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == LISTENER_METADATA_KEY:
            return str(value)
    return "default"


def internal_error(adapter: str) -> Decision:
    """Fail closed with a 503 that says so, and log the traceback (never the request)."""
    decision = deny(new_decision_id(), Reason.INTERNAL_ERROR,
                    "the gateway could not decide on this request; try again")
    log.exception("pipeline error; answered 503", extra={"decision_id": decision.decision_id,
                                                        "adapter": adapter})
    return decision
