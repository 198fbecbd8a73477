"""ext_authz codec: ``CheckRequest`` → facts and body, ``Decision`` → ``CheckResponse``.

ext_authz is the unary path: Envoy sends the body only if the filter has
``with_request_body``, never the response, so it cannot count tokens or settle.
"""

from __future__ import annotations

from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import status_pb2

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.envoy_api.headers import facts_from_pairs, header_option, removals, string_struct

CheckRequest = pb.CheckRequest
CheckResponse = pb.CheckResponse
Servicer = pb_grpc.AuthorizationServicer
add_to_server = pb_grpc.add_AuthorizationServicer_to_server
SERVICE_NAME = "envoy.service.auth.v3.Authorization"

_OK = 0
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


def response(decision: Decision, facts: RequestFacts) -> pb.CheckResponse:
    meta = string_struct(decision.metadata())
    if not decision.allowed:
        return pb.CheckResponse(
            status=status_pb2.Status(code=_PERMISSION_DENIED, message=decision.reason.value),
            denied_response=pb.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=decision.status),
                headers=[header_option(k, v, raw=False) for k, v in decision.denial_headers()],
                body=decision.error_body().decode(),
            ),
            dynamic_metadata=meta,
        )
    upstream = decision.upstream_headers()
    return pb.CheckResponse(
        status=status_pb2.Status(code=_OK),
        ok_response=pb.OkHttpResponse(
            headers=[header_option(k, v, raw=False) for k, v in upstream],
            headers_to_remove=removals(facts, upstream),
            response_headers_to_add=[header_option(k, v, raw=False) for k, v in decision.client_headers()],
        ),
        dynamic_metadata=meta,
    )
