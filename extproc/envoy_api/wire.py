"""Protobuf wire encoding of the Envoy answers built on every request.

Building a ``ProcessingResponse`` field by field costs tens of µs per request in Python (each
header option is two messages, the metadata Struct one ``Value`` per key) before grpc
serializes it again. The answers on the hot path are small and regular, so their bytes are
written directly in the proto3 wire format: for each field a tag, a length, the payload.
Field numbers are read from the generated descriptors, so they cannot drift from the schema;
the unit tests parse every answer back with the generated classes and compare it with the
same answer built field by field. ``add_method`` registers a servicer whose answers are such bytes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message

_SMALL_LENGTHS = [bytes((n,)) for n in range(128)]


def varint(value: int) -> bytes:
    if value < 128:
        return _SMALL_LENGTHS[value]
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(message: type[Message], name: str) -> bytes:
    """The tag of a length-delimited field (string, bytes, message): number and wire type 2."""
    return varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)


def varint_field(message: type[Message], name: str, value: int) -> bytes:
    """A whole varint field (enum, bool, integer): number, wire type 0, value."""
    return varint(message.DESCRIPTOR.fields_by_name[name].number << 3) + varint(value)


def field(field_tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``field_tag`` (from ``tag``), the length, the payload."""
    n = len(payload)
    return field_tag + (_SMALL_LENGTHS[n] if n < 128 else varint(n)) + payload


_KEY, _RAW_VALUE = tag(base_pb2.HeaderValue, "key"), tag(base_pb2.HeaderValue, "raw_value")
_VALUE = tag(base_pb2.HeaderValue, "value")
_HEADER = tag(base_pb2.HeaderValueOption, "header")
_OVERWRITE = varint_field(base_pb2.HeaderValueOption, "append_action",
                          base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)


# Most headers and metadata entries repeat from request to request (class, tenant, route,
# model…), so their encodings are memoized; ids and counters do not, so the memo is bounded.
_MEMO_SIZE = 4096


@lru_cache(maxsize=_MEMO_SIZE)
def header_option(key: str, value: str, raw: bool = True) -> bytes:
    """A ``HeaderValueOption`` that sets ``key`` to ``value`` (overwrite or add). ext_proc reads
    ``raw_value``; ext_authz reads only ``value`` (``raw=False``)."""
    value_tag = _RAW_VALUE if raw else _VALUE
    return field(_HEADER, field(_KEY, key.encode()) + field(value_tag, value.encode())) + _OVERWRITE


_STRUCT_FIELDS = tag(struct_pb2.Struct, "fields")
# A map field is a repeated entry message with ``key`` = 1 and ``value`` = 2.
_ENTRY_KEY, _ENTRY_VALUE = varint(1 << 3 | 2), varint(2 << 3 | 2)
_STRING_VALUE = tag(struct_pb2.Value, "string_value")
_STRUCT_VALUE = tag(struct_pb2.Value, "struct_value")


@lru_cache(maxsize=_MEMO_SIZE)
def _entry(key: str, value: str) -> bytes:
    return field(_STRUCT_FIELDS, field(_ENTRY_KEY, key.encode())
                 + field(_ENTRY_VALUE, field(_STRING_VALUE, value.encode())))


def string_struct(values: dict[str, str]) -> bytes:
    """A ``Struct`` whose values are all strings."""
    return b"".join([_entry(k, v) for k, v in values.items()])


def namespaced_struct(namespace: str, inner: bytes) -> bytes:
    """A ``Struct`` holding one ``Struct`` (already encoded) under ``namespace``: the shape of
    Envoy's dynamic metadata (``{namespace: {key: value, ...}}``)."""
    return field(_STRUCT_FIELDS, field(_ENTRY_KEY, namespace.encode())
                 + field(_ENTRY_VALUE, field(_STRUCT_VALUE, inner)))


def _send_as_is(answer: bytes | Message) -> bytes:
    if isinstance(answer, bytes):
        return answer
    encoded: bytes = answer.SerializeToString()
    return encoded


def add_method(server: grpc.aio.Server, service: str, method: str, make_handler: Any, behaviour: Any,
               request: type[Message]) -> None:
    """Register a servicer method as the generated ``add_*_to_server`` does, except that its
    answers, the bytes we wrote, are sent as they are (a message is still serialized).
    ``make_handler``: ``grpc.unary_unary_rpc_method_handler`` or another of its family."""
    handlers = {method: make_handler(behaviour, request_deserializer=request.FromString,
                                     response_serializer=_send_as_is)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
