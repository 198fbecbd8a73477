"""The Access Log Service codec: Envoy's batched entries → plain "request ended" events."""

from __future__ import annotations

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import struct_pb2

from extproc.domain.usage import ResponseEnd, Usage
from extproc.envoy_api.access_log import request_ends


def _entry(decision: dict[str, str] | None, usage: dict[str, float] | None, status: int = 200,
           **flags: bool) -> accesslog_pb2.HTTPAccessLogEntry:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    common = entry.common_properties
    if decision is not None:
        common.metadata.filter_metadata["extproc"].CopyFrom(struct_pb2.Struct(fields={
            k: struct_pb2.Value(string_value=v) for k, v in decision.items()}))
    if usage is not None:
        common.metadata.filter_metadata["extproc.usage"].CopyFrom(struct_pb2.Struct(fields={
            k: struct_pb2.Value(number_value=v) for k, v in usage.items()}))
    if status:
        entry.response.response_code.value = status
    for name, on in flags.items():
        setattr(common.response_flags, name, on)
    common.time_to_first_upstream_rx_byte.FromMilliseconds(40)
    common.time_to_first_downstream_tx_byte.FromMilliseconds(45)
    common.time_to_last_downstream_tx_byte.FromMilliseconds(900)
    return entry


def _batch(*entries: accesslog_pb2.HTTPAccessLogEntry) -> als_pb2.StreamAccessLogsMessage:
    message = als_pb2.StreamAccessLogsMessage()
    message.http_logs.log_entry.extend(entries)
    return message


def test_a_batch_becomes_one_event_per_decided_request() -> None:
    reported = {"reported": 1, "prompt": 12, "completion": 300, "cached": 4, "completed": 1,
                "text_ascii": 1500, "text_other": 0, "events": 302}
    events = request_ends(_batch(
        _entry({"decision_id": "d1", "usage": "stream", "tenant": "acme"}, reported),
        _entry(None, None),  # not ours: no decision metadata
        _entry({"decision_id": "d2", "usage": "stream"}, {"text_ascii": 10, "text_other": 9, "events": 3},
               downstream_remote_reset=True),
        _entry({"decision_id": "d3"}, None, status=0),
    ))
    assert [e.decision["decision_id"] for e in events] == ["d1", "d2", "d3"]
    first, cut, never = events
    assert first.decision["tenant"] == "acme" and first.status == 200 and first.end is ResponseEnd.COMPLETE
    assert first.seen is not None and first.seen.usage == Usage(12, 300, 4, 0) and first.seen.completed
    assert first.seen.events == 302 and first.seen.text_tokens == 375
    assert (first.timing.ms(first.timing.headers), first.timing.ms(first.timing.first_body),
            first.timing.ms(first.timing.ended)) == (40, 45, 900)
    # The client left mid-stream: no usage reported, the text seen is what an estimate rests on.
    assert cut.end is ResponseEnd.INTERRUPTED and cut.seen is not None and cut.seen.usage is None
    assert cut.seen.text_tokens == 3 + 9 and not cut.seen.completed
    assert never.end is ResponseEnd.NO_RESPONSE and never.seen is None


def test_counts_that_are_not_counts_are_ignored() -> None:
    (event,) = request_ends(_batch(_entry({"decision_id": "d"}, {
        "reported": 1, "prompt": -5, "completion": 1.5, "cached": 2.0**60, "text_ascii": float("nan")})))
    assert event.seen is not None and event.seen.usage == Usage(0, 0, 0, 0) and event.seen.text_tokens == 0
