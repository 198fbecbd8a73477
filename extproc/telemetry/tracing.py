"""OpenTelemetry tracing, configured by the standard ``OTEL_*`` environment variables.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_TRACES_ENDPOINT``) is set and
``OTEL_TRACES_EXPORTER`` is not ``none``; spans go to that OTLP/gRPC collector in
batches. Each decision is a span continuing the trace context Envoy sends with the
ext_proc/ext_authz call (W3C ``traceparent`` in gRPC metadata); Redis calls are its
children. Off, the API's no-op tracer costs next to nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from extproc.domain.decision import Decision

_PROPAGATOR = TraceContextTextMapPropagator()
tracer = trace.get_tracer("extproc")
_enabled = False


def configure(service_name: str = "extproc") -> bool:
    """Install the SDK tracer provider when the environment asks for an exporter."""
    global _enabled, tracer
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("extproc")
    _enabled = True
    return True


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if _enabled and hasattr(provider, "shutdown"):
        provider.shutdown()


def context_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context | None:
    """The trace context Envoy put in the gRPC call's metadata, if any."""
    if not _enabled or not metadata:
        return None
    carrier = {k: v for k, v in metadata if isinstance(v, str) and k in ("traceparent", "tracestate")}
    return _PROPAGATOR.extract(carrier) if carrier else None


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class DecisionSpan:
    """The span of one decision: started at the request headers, ended with the decision."""

    __slots__ = ("_span",)

    def __init__(self, metadata: Iterable[tuple[str, str | bytes]] | None, adapter: str) -> None:
        self._span: trace.Span | None = None
        if _enabled:
            self._span = tracer.start_span(
                "extproc.decision", context=context_from_metadata(metadata), kind=trace.SpanKind.SERVER,
                attributes={"extproc.adapter": adapter})

    def active(self) -> contextlib.AbstractContextManager[object]:
        """Make the span current (so Redis calls become its children)."""
        if self._span is None:
            return contextlib.nullcontext()
        return trace.use_span(self._span, end_on_exit=False)

    def finish(self, decision: Decision) -> None:
        span = self._span
        if span is None:
            return
        self._span = None
        span.set_attributes({
            "extproc.decision_id": decision.decision_id,
            "extproc.outcome": "allow" if decision.allowed else "deny",
            "extproc.reason": decision.reason.value,
            "extproc.workload_class": decision.workload.value,
            "extproc.route": decision.route or "",
            "extproc.route_version": -1 if decision.route_version is None else decision.route_version,
            "extproc.upstream": decision.upstream or "",
            "gen_ai.request.model": decision.model or "",
        })
        if _trace_tenant and decision.tenant:
            span.set_attribute("extproc.tenant", decision.tenant)
        if decision.degraded:
            span.set_attribute("extproc.degraded", decision.degraded)
        if not decision.allowed:
            span.set_status(trace.Status(trace.StatusCode.ERROR, decision.reason.value))
        span.end()


#: Tenant names can be personal data: recorded on spans only when EXTPROC_TRACE_TENANT=1.
_trace_tenant = os.environ.get("EXTPROC_TRACE_TENANT", "1") == "1"


def child_span(name: str, attributes: dict[str, str]) -> contextlib.AbstractContextManager[object]:
    """A span under the current one (a Redis call under its decision); nothing when off."""
    if not _enabled:
        return contextlib.nullcontext()
    return tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes)
