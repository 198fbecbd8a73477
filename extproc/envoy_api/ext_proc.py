"""ext_proc codec: ``ProcessingRequest`` → facts, ``Decision`` → ``ProcessingResponse``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from extproc.domain.decision import Decision
from extproc.domain.facts import RequestFacts
from extproc.envoy_api import wire
from extproc.envoy_api.headers import facts_from_pairs, header_value, removals

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse
Servicer = pb_grpc.ExternalProcessorServicer
SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"

#: Namespace of the dynamic metadata we emit (``%DYNAMIC_METADATA(extproc:tenant)%``).
METADATA_NAMESPACE = "extproc"

_ProcessingMode = processing_mode_pb2.ProcessingMode


# The request body is read BUFFERED_PARTIAL, not BUFFERED: a body over Envoy's buffer limit
# reaches us cut (end_of_stream=false), so a request gets our JSON 413 instead of Envoy's bare
# one. A mode override replaces the whole mode, so every field is restated. The response is
# never sent to the sidecar (envoy/README.md "Usage accounting", "Response headers").
_READ_BODY_MODE = _ProcessingMode(
    request_header_mode=_ProcessingMode.SEND, request_body_mode=_ProcessingMode.BUFFERED_PARTIAL,
    response_header_mode=_ProcessingMode.SKIP, response_body_mode=_ProcessingMode.NONE,
    request_trailer_mode=_ProcessingMode.SKIP, response_trailer_mode=_ProcessingMode.SKIP,
)


def request_facts(headers: pb.HttpHeaders, listener: str) -> RequestFacts:
    return facts_from_pairs(
        ((h.key, header_value(h)) for h in headers.headers.headers), headers.end_of_stream, listener,
        full_duplex=True,
    )


# The answers are protobuf wire bytes written directly (``wire``: building the messages field
# by field cost more than the rest of the codec), and grpc sends them as they are
# (``add_to_server``). Tags of the fields they use:
_PR = pb.ProcessingResponse
_REQUEST_HEADERS = wire.tag(_PR, "request_headers")
_REQUEST_BODY, _DYNAMIC_METADATA = wire.tag(_PR, "request_body"), wire.tag(_PR, "dynamic_metadata")
_HEADERS_RESPONSE = wire.tag(pb.HeadersResponse, "response")
_BODY_RESPONSE = wire.tag(pb.BodyResponse, "response")
_HEADER_MUTATION = wire.tag(pb.CommonResponse, "header_mutation")
_BODY_MUTATION = wire.tag(pb.CommonResponse, "body_mutation")
_CLEAR_ROUTE_CACHE = wire.varint_field(pb.CommonResponse, "clear_route_cache", 1)
_SET_HEADERS = wire.tag(pb.HeaderMutation, "set_headers")
_REMOVE_HEADERS = wire.tag(pb.HeaderMutation, "remove_headers")
_BODY = wire.tag(pb.BodyMutation, "body")
_READ_BODY_OVERRIDE = wire.field(wire.tag(_PR, "mode_override"), _READ_BODY_MODE.SerializeToString())


def _mutation(sets: list[tuple[str, str]], removes: Iterable[str] = ()) -> bytes:
    """A ``HeaderMutation``: set (overwrite or add) these headers, remove those."""
    return b"".join([*(wire.field(_SET_HEADERS, wire.header_option(k, v)) for k, v in sets),
                     *(wire.field(_REMOVE_HEADERS, h.encode()) for h in removes)])


def read_body(facts: RequestFacts) -> bytes:
    """Continue the headers (stripped of internal ones) and ask Envoy for the body.

    The route cache is cleared here already. When the body arrives after this
    answer, Envoy (1.40, BUFFERED_PARTIAL) re-injects it and lets the router pick
    its route before it clears the cache for our body response; a route cached
    at request-headers time (no ``x-extproc-upstream`` yet) would then win and
    the request fail with ``cluster_not_found``. Envoy ignores
    ``clear_route_cache`` without a header mutation, so one is always present
    (an empty one is still sent).
    """
    common = wire.field(_HEADER_MUTATION, _mutation([], facts.stripped)) + _CLEAR_ROUTE_CACHE
    return wire.field(_REQUEST_HEADERS, wire.field(_HEADERS_RESPONSE, common)) + _READ_BODY_OVERRIDE


def _metadata(decision: Decision) -> bytes:
    """The decision's dynamic metadata, ``{extproc: {...}}``, as a ``dynamic_metadata`` field."""
    return wire.field(_DYNAMIC_METADATA,
                      wire.namespaced_struct(METADATA_NAMESPACE, wire.string_struct(decision.metadata())))


def decided(decision: Decision, facts: RequestFacts, phase: str) -> bytes:
    """The answer to the request ``phase`` ("headers" or "body") that carried the decision."""
    if not decision.allowed:
        return immediate(decision)
    upstream = decision.upstream_headers()
    removes = removals(facts, upstream)
    body = b""
    if decision.body_rewrite is not None and phase == "body":
        # The original content-length no longer holds. Envoy 1.40 rejects a mutated
        # body that disagrees with it and ignores a new value set here, so drop it:
        # the upstream request goes out chunked (HTTP/1.1) or framed (HTTP/2).
        body = wire.field(_BODY_MUTATION, wire.field(_BODY, decision.body_rewrite))
        removes.append("content-length")
    # The router picked its route before we set x-extproc-upstream: clear the
    # route cache so the route (cluster_header) is chosen again with our header.
    common = wire.field(_HEADER_MUTATION, _mutation(upstream, removes)) + body + _CLEAR_ROUTE_CACHE
    if phase == "headers":
        return wire.field(_REQUEST_HEADERS, wire.field(_HEADERS_RESPONSE, common)) + _metadata(decision)
    return wire.field(_REQUEST_BODY, wire.field(_BODY_RESPONSE, common)) + _metadata(decision)


_IMMEDIATE_RESPONSE = wire.tag(_PR, "immediate_response")
_STATUS, _HEADERS = wire.tag(pb.ImmediateResponse, "status"), wire.tag(pb.ImmediateResponse, "headers")
_ERROR_BODY, _DETAILS = wire.tag(pb.ImmediateResponse, "body"), wire.tag(pb.ImmediateResponse, "details")


def immediate(decision: Decision) -> bytes:
    """A denial Envoy sends to the client directly, with the OpenAI-shaped JSON error."""
    answer = (wire.field(_STATUS, wire.varint_field(http_status_pb2.HttpStatus, "code", decision.status))
              + wire.field(_HEADERS, _mutation(decision.denial_headers()))
              + wire.field(_ERROR_BODY, decision.error_body())
              + wire.field(_DETAILS, f"extproc_{decision.reason.value}".encode()))
    return wire.field(_IMMEDIATE_RESPONSE, answer) + _metadata(decision)


def _continue(kind: str) -> pb.ProcessingResponse:
    if kind in ("request_trailers", "response_trailers"):
        return pb.ProcessingResponse(**{kind: pb.TrailersResponse()})
    if kind in ("request_body", "response_body"):
        return pb.ProcessingResponse(**{kind: pb.BodyResponse()})
    return pb.ProcessingResponse(**{kind: pb.HeadersResponse()})


# Serialized once: the same bytes are written to every stream.
_CONTINUE: dict[str, bytes] = {kind: _continue(kind).SerializeToString() for kind in (
    "request_headers", "request_body", "request_trailers",
    "response_headers", "response_body", "response_trailers")}


def passthrough(kind: str) -> bytes:
    """Continue unchanged for a phase we do not act on (e.g. trailers, response body)."""
    return _CONTINUE[kind]


def add_to_server(servicer: Any, server: grpc.aio.Server) -> None:
    """The generated registration, except that answers are sent as the bytes we wrote."""
    wire.add_method(server, SERVICE_NAME, "Process", grpc.stream_stream_rpc_method_handler, servicer.Process,
                    pb.ProcessingRequest)
