"""A real OTLP/gRPC trace collector for tests: keeps every span it is sent."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.support import free_port


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[tuple[str, str, str, dict[str, str]]] = []  # service, trace id, name, attributes
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self._lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes
                                if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {a.key: a.value.string_value for a in span.attributes}
                        self.spans.append((service, span.trace_id.hex(), span.name, attrs))
        return trace_service_pb2.ExportTraceServiceResponse()

    def find(self, trace_id: str) -> list[tuple[str, str, str, dict[str, str]]]:
        with self._lock:
            return [s for s in self.spans if s[1] == trace_id]

    def stop(self) -> None:
        self._server.stop(None)
