"""ext_proc codec: ``ProcessingRequest`` → facts, ``Decision`` → ``ProcessingResponse``."""

from __future__ import annotations

import contextlib
from datetime import datetime

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.envoy_api.headers import facts_from_pairs, header_option, header_value, removals, string_struct

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse
Servicer = pb_grpc.ExternalProcessorServicer
add_to_server = pb_grpc.add_ExternalProcessorServicer_to_server
SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"

#: Namespace of the dynamic metadata we emit (``%DYNAMIC_METADATA(extproc:tenant)%``).
METADATA_NAMESPACE = "extproc"

_ProcessingMode = processing_mode_pb2.ProcessingMode


def _mode(request_body: int, response_body: int) -> processing_mode_pb2.ProcessingMode:
    """A mode override replaces the whole mode, so every field is restated."""
    return _ProcessingMode(
        request_header_mode=_ProcessingMode.SEND, request_body_mode=request_body,
        response_header_mode=_ProcessingMode.SEND, response_body_mode=response_body,
        request_trailer_mode=_ProcessingMode.SKIP, response_trailer_mode=_ProcessingMode.SKIP,
    )


# Both bodies are read BUFFERED_PARTIAL, not BUFFERED: a body over Envoy's buffer limit
# reaches us cut (end_of_stream=false), so a request gets our JSON 413 instead of Envoy's
# bare one, and a response keeps its estimate instead of failing.
_READ_BODY_MODE = _mode(_ProcessingMode.BUFFERED_PARTIAL, _ProcessingMode.NONE)
_READ_RESPONSE_MODE = _mode(_ProcessingMode.NONE, _ProcessingMode.BUFFERED_PARTIAL)


def response_is_json(headers: pb.HttpHeaders) -> bool:
    """A successful, complete-JSON response (not SSE) whose body will follow."""
    if headers.end_of_stream:
        return False
    values = {h.key: header_value(h) for h in headers.headers.headers if h.key in (":status", "content-type")}
    return values.get(":status") == "200" and values.get("content-type", "").startswith("application/json")


def response_status(headers: pb.HttpHeaders) -> int:
    for h in headers.headers.headers:
        if h.key == ":status":
            value = header_value(h)
            return int(value) if value.isdigit() else 0
    return 0


def forwarded_metadata(request: pb.ProcessingRequest) -> dict[str, str]:
    """Our dynamic metadata that Envoy forwarded to this stream, as strings
    (``metadata_options.forwarding_namespaces``: the usage filter gets the decision's)."""
    namespace = request.metadata_context.filter_metadata.get(METADATA_NAMESPACE)
    if namespace is None:
        return {}
    return {key: value.string_value for key, value in namespace.fields.items() if value.string_value}


def response_attributes(request: pb.ProcessingRequest) -> tuple[int, float | None]:
    """``response.code`` and ``request.time`` (unix seconds), which the usage filter asks for
    (``response_attributes``) instead of the response headers: Envoy sends them with its first
    message of the response. (0, None) when absent."""
    status, started = 0, None
    for attributes in request.attributes.values():
        fields = attributes.fields
        if "response.code" in fields:
            status = int(fields["response.code"].number_value)
        if "request.time" in fields:
            with contextlib.suppress(ValueError):
                started = datetime.fromisoformat(fields["request.time"].string_value).timestamp()
    return status, started


def request_facts(headers: pb.HttpHeaders, listener: str) -> RequestFacts:
    return facts_from_pairs(
        ((h.key, header_value(h)) for h in headers.headers.headers), headers.end_of_stream, listener,
        full_duplex=True,
    )


def _strip_mutation(facts: RequestFacts) -> pb.HeaderMutation:
    return pb.HeaderMutation(remove_headers=facts.stripped)


def read_body(facts: RequestFacts) -> pb.ProcessingResponse:
    """Continue the headers (stripped of internal ones) and ask Envoy for the body.

    The route cache is cleared here already. When the body arrives after this
    answer, Envoy (1.40, BUFFERED_PARTIAL) re-injects it and lets the router pick
    its route before it clears the cache for our body response; a route cached
    at request-headers time (no ``x-extproc-upstream`` yet) would then win and
    the request fail with ``cluster_not_found``. Envoy ignores
    ``clear_route_cache`` without a header mutation, so one is always present.
    """
    common = pb.CommonResponse(clear_route_cache=True)
    common.header_mutation.CopyFrom(_strip_mutation(facts))
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(response=common), mode_override=_READ_BODY_MODE
    )


def _allow_common(decision: Decision, facts: RequestFacts) -> pb.CommonResponse:
    upstream = decision.upstream_headers()
    mutation = pb.HeaderMutation(
        set_headers=[header_option(k, v) for k, v in upstream],
        remove_headers=removals(facts, upstream),
    )
    # The router picked its route before we set x-extproc-upstream: clear the
    # route cache so the route (cluster_header) is chosen again with our header.
    return pb.CommonResponse(header_mutation=mutation, clear_route_cache=True)


def _metadata(decision: Decision) -> struct_pb2.Struct:
    inner = string_struct(decision.metadata())
    return struct_pb2.Struct(fields={METADATA_NAMESPACE: struct_pb2.Value(struct_value=inner)})


def decided(decision: Decision, facts: RequestFacts, phase: str) -> pb.ProcessingResponse:
    """The answer to the request ``phase`` ("headers" or "body") that carried the decision."""
    if not decision.allowed:
        return immediate(decision)
    common = _allow_common(decision, facts)
    if decision.body_rewrite is not None and phase == "body":
        # The original content-length no longer holds. Envoy 1.40 rejects a mutated
        # body that disagrees with it and ignores a new value set here, so drop it:
        # the upstream request goes out chunked (HTTP/1.1) or framed (HTTP/2).
        common.body_mutation.body = decision.body_rewrite
        common.header_mutation.remove_headers.append("content-length")
    if phase == "headers":
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=common),
            dynamic_metadata=_metadata(decision),
        )
    return pb.ProcessingResponse(
        request_body=pb.BodyResponse(response=common), dynamic_metadata=_metadata(decision)
    )


def immediate(decision: Decision) -> pb.ProcessingResponse:
    """A denial Envoy sends to the client directly, with the OpenAI-shaped JSON error."""
    headers = pb.HeaderMutation(set_headers=[header_option(k, v) for k, v in decision.denial_headers()])
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=decision.status),
            headers=headers,
            body=decision.error_body(),
            details=f"extproc_{decision.reason.value}",
        ),
        dynamic_metadata=_metadata(decision),
    )


def response_headers(headers: list[tuple[str, str]], read_body: bool = False) -> pb.ProcessingResponse:
    """Tag the upstream's response: decision id, remaining quota, degraded mode; with
    ``read_body``, also ask for the (JSON) response body to read its usage."""
    common = pb.CommonResponse()
    if headers:
        common.header_mutation.set_headers.extend(header_option(k, v) for k, v in headers)
    response = pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))
    if read_body:
        response.mode_override.CopyFrom(_READ_RESPONSE_MODE)
    return response


def _continue(kind: str) -> pb.ProcessingResponse:
    if kind in ("request_trailers", "response_trailers"):
        return pb.ProcessingResponse(**{kind: pb.TrailersResponse()})
    if kind in ("request_body", "response_body"):
        return pb.ProcessingResponse(**{kind: pb.BodyResponse()})
    return pb.ProcessingResponse(**{kind: pb.HeadersResponse()})


# Built once and never mutated: the same message can be written to every stream.
_CONTINUE = {kind: _continue(kind) for kind in (
    "request_headers", "request_body", "request_trailers",
    "response_headers", "response_body", "response_trailers")}


def passthrough(kind: str) -> pb.ProcessingResponse:
    """Continue unchanged for a phase we do not act on (e.g. trailers, response body)."""
    return _CONTINUE[kind]

