"""ext_authz codec: ``CheckRequest`` → facts and body, ``Decision`` → ``CheckResponse``.

ext_authz is the unary path: Envoy sends the body only if the filter has
``with_request_body``, never the response, so it cannot count tokens or settle.
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import status_pb2

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.envoy_api import wire
from extproc.envoy_api.headers import facts_from_pairs, removals

CheckRequest = pb.CheckRequest
CheckResponse = pb.CheckResponse
Servicer = pb_grpc.AuthorizationServicer
SERVICE_NAME = "envoy.service.auth.v3.Authorization"

_PERMISSION_DENIED = 7
# Envoy sets this header when ``allow_partial_message`` cut the body at ``max_request_bytes``.
_PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


def request_facts(req: pb.CheckRequest, listener: str) -> tuple[RequestFacts, bytes | None, bool]:
    """Facts, the body (None when Envoy sent none) and whether the body is complete."""
    http = req.attributes.request.http
    pairs = [(":method", http.method), (":path", http.path), (":authority", http.host)]
    pairs.extend((k, v) for k, v in http.headers.items() if k[:1] != ":")
    body: bytes | None = http.raw_body or (http.body.encode() if http.body else None)
    has_body = body is not None or (http.size > 0)
    facts = facts_from_pairs(pairs, end_of_stream=not has_body, listener=listener)
    complete = http.headers.get(_PARTIAL_BODY_HEADER, "false") != "true"
    return facts, body, complete


# Answers are wire bytes written directly, as ext_proc answers are (``wire``).
_STATUS = wire.tag(pb.CheckResponse, "status")
_STATUS_OK = wire.field(_STATUS, b"")  # google.rpc.Status, code 0
_DENIED_RESPONSE = wire.tag(pb.CheckResponse, "denied_response")
_OK_RESPONSE = wire.tag(pb.CheckResponse, "ok_response")
_DYNAMIC_METADATA = wire.tag(pb.CheckResponse, "dynamic_metadata")
_HEADERS = wire.tag(pb.OkHttpResponse, "headers")
_HEADERS_TO_REMOVE = wire.tag(pb.OkHttpResponse, "headers_to_remove")
_RESPONSE_HEADERS_TO_ADD = wire.tag(pb.OkHttpResponse, "response_headers_to_add")
_DENIED_STATUS = wire.tag(pb.DeniedHttpResponse, "status")
_DENIED_HEADERS = wire.tag(pb.DeniedHttpResponse, "headers")
_DENIED_BODY = wire.tag(pb.DeniedHttpResponse, "body")
_STATUS_MESSAGE = wire.tag(status_pb2.Status, "message")


def _options(field_tag: bytes, headers: list[tuple[str, str]]) -> bytes:
    return b"".join([wire.field(field_tag, wire.header_option(k, v, raw=False)) for k, v in headers])


def response(decision: Decision, facts: RequestFacts) -> bytes:
    """The ``CheckResponse`` for a decision, as wire bytes."""
    meta = wire.field(_DYNAMIC_METADATA, wire.string_struct(decision.metadata()))
    if not decision.allowed:
        status = (wire.varint_field(status_pb2.Status, "code", _PERMISSION_DENIED)
                  + wire.field(_STATUS_MESSAGE, decision.reason.value.encode()))
        http_status = wire.varint_field(http_status_pb2.HttpStatus, "code", decision.status)
        denied = (wire.field(_DENIED_STATUS, http_status)
                  + _options(_DENIED_HEADERS, decision.denial_headers())
                  + wire.field(_DENIED_BODY, decision.error_body()))
        return wire.field(_STATUS, status) + wire.field(_DENIED_RESPONSE, denied) + meta
    upstream = decision.upstream_headers()
    ok = (_options(_HEADERS, upstream)
          + b"".join([wire.field(_HEADERS_TO_REMOVE, h.encode()) for h in removals(facts, upstream)])
          + _options(_RESPONSE_HEADERS_TO_ADD, decision.client_headers()))
    return _STATUS_OK + wire.field(_OK_RESPONSE, ok) + meta


def add_to_server(servicer: Any, server: grpc.aio.Server) -> None:
    """The generated registration, except that answers are sent as the bytes we wrote."""
    wire.add_method(server, SERVICE_NAME, "Check", grpc.unary_unary_rpc_method_handler, servicer.Check,
                    pb.CheckRequest)
