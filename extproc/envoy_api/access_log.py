"""Access Log Service codec: Envoy's batched access-log entries → ``RequestEnded`` events.

Envoy's gRPC access logger (``envoy.access_loggers.http_grpc``, envoy/README.md "Usage
accounting") streams an entry per finished request, batched. Each carries the request's
dynamic metadata: the decision's (namespace ``extproc``, set by the deciding call) and what the
usage reader in Envoy saw of the response body (namespace ``extproc.usage``, set by
``envoy/usage.lua``), with the status, the response flags and the timings.
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.accesslog.v3 import als_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2

from extproc.domain.token_estimate import tokens_of
from extproc.domain.usage import MAX_TOKENS, ResponseEnd, Usage
from extproc.envoy_api.ext_proc import METADATA_NAMESPACE
from extproc.ledger.records import Timing
from extproc.settlement.events import RequestEnded, UsageSeen

Servicer = pb_grpc.AccessLogServiceServicer
SERVICE_NAME = "envoy.service.accesslog.v3.AccessLogService"
#: The namespace of what ``envoy/usage.lua`` saw.
USAGE_NAMESPACE = "extproc.usage"
StreamAccessLogsMessage = als_pb2.StreamAccessLogsMessage
StreamAccessLogsResponse = als_pb2.StreamAccessLogsResponse
EMPTY_RESPONSE = StreamAccessLogsResponse()


def request_ends(message: als_pb2.StreamAccessLogsMessage) -> list[RequestEnded]:
    """The ended requests of one batch that carry a decision (others are not ours)."""
    out = []
    for entry in message.http_logs.log_entry:
        common = entry.common_properties
        metadata = common.metadata.filter_metadata
        decision = metadata.get(METADATA_NAMESPACE)
        if decision is None:
            continue
        strings = {key: value.string_value for key, value in decision.fields.items() if value.string_value}
        status = entry.response.response_code.value
        seen = _usage_seen(metadata.get(USAGE_NAMESPACE))
        out.append(RequestEnded(strings, status, _end(common, status), seen, _timing(common)))
    return out


def _end(common: Any, status: int) -> ResponseEnd:
    """From Envoy's response flags: a reset on either side cut the response short."""
    flags = common.response_flags
    cut = (flags.downstream_remote_reset or flags.downstream_connection_termination
           or flags.upstream_remote_reset or flags.upstream_connection_termination or flags.local_reset
           or flags.stream_idle_timeout or flags.upstream_request_timeout)
    if status == 0:
        return ResponseEnd.NO_RESPONSE
    return ResponseEnd.INTERRUPTED if cut else ResponseEnd.COMPLETE


def _timing(common: Any) -> Timing:
    """Seconds from the request's start: response headers, first body bytes to the client, end."""
    def seconds(name: str) -> float | None:
        if not common.HasField(name):
            return None
        duration: duration_pb2.Duration = getattr(common, name)
        return float(duration.seconds + duration.nanos / 1e9)
    return Timing(0.0, seconds("time_to_first_upstream_rx_byte"), seconds("time_to_first_downstream_tx_byte"),
                  seconds("time_to_last_downstream_tx_byte"))


def _usage_seen(struct: Any) -> UsageSeen | None:
    if struct is None:
        return None
    fields = struct.fields

    def count(name: str) -> int:
        value = fields.get(name)
        if value is None or value.WhichOneof("kind") != "number_value":
            return 0
        number = value.number_value
        return int(number) if 0 <= number <= MAX_TOKENS and number == int(number) else 0

    usage = None
    if count("reported"):
        usage = Usage(count("prompt"), count("completion"), count("cached"), count("reasoning"))
    text_tokens = tokens_of(count("text_ascii"), count("text_other"))
    read = fields.get("read")
    streamed = read is not None and read.string_value == "sse"
    return UsageSeen(usage, bool(count("completed")), text_tokens, count("events"), streamed)


def add_to_server(servicer: Any, server: grpc.aio.Server) -> None:
    pb_grpc.add_AccessLogServiceServicer_to_server(servicer, server)
