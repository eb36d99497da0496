"""Tracing: the OpenTelemetry SDK, set up from settings and the standard OTEL_* variables.

Span names and attributes follow the OpenTelemetry semantic conventions for MCP: the
server span is ``tools/call <tool>`` with ``mcp.method.name``, ``mcp.session.id``,
``jsonrpc.request.id``, ``gen_ai.tool.name``, ``network.protocol.name=websocket`` and,
on failure, ``error.type``. Context arrives in ``params._meta`` (``traceparent``,
``tracestate``, ``baggage``), as MCP propagates it.

A tracer provider exists even when nothing is exported (the default): every audit record
keeps its request's trace and span id, so the audit trail and traces line up as soon as
an exporter is switched on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = ["Telemetry", "make_tracer_provider"]

INSTRUMENTATION = "bustrail"


def make_tracer_provider(
    exporter: str = "none", *, service_name: str = "bustrail", extra: SpanProcessor | None = None
) -> TracerProvider:
    """A provider exporting to ``none``, ``console`` or ``otlp`` (OTEL_EXPORTER_OTLP_*)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if extra is not None:
        provider.add_span_processor(extra)
    return provider


class Telemetry:
    """The spans bustrail makes, from its own tracer provider (the global one is left
    alone, so an application embedding bustrail keeps control of its tracing)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider or make_tracer_provider()
        self.tracer = self.provider.get_tracer(INSTRUMENTATION)

    @contextlib.contextmanager
    def server_span(
        self, tool: str, request_id: Any, session_id: str, meta: Mapping[str, Any]
    ) -> Iterator[Span]:
        carrier = {k: v for k, v in meta.items() if isinstance(v, str)}
        parent = propagate.extract(carrier)
        with self.tracer.start_as_current_span(
            f"tools/call {tool}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "mcp.method.name": "tools/call",
                "mcp.session.id": session_id,
                "jsonrpc.request.id": str(request_id),
                "gen_ai.tool.name": tool,
                "gen_ai.operation.name": "execute_tool",
                "network.protocol.name": "websocket",
            },
        ) as span:
            yield span

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            name, attributes={k: v for k, v in attributes.items() if v is not None}
        ) as span:
            yield span

    @staticmethod
    def ids(span: Span) -> tuple[str | None, str | None]:
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None, None
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

    @staticmethod
    def annotate(span: Span, delivery: Any) -> None:
        span.set_attribute("bustrail.transaction_id", str(delivery.transaction_id))
        span.set_attribute("bustrail.route", str(delivery.route.value))
        span.set_attribute("bustrail.size", int(delivery.size))
        if delivery.record is not None:
            span.set_attribute("bustrail.compression", str(delivery.record.compression.value))

    @staticmethod
    def mark_error(span: Span, error_type: str) -> None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR))

    @staticmethod
    def inject(carrier: dict[str, Any]) -> dict[str, Any]:
        """Write the current context (traceparent, tracestate, baggage) into ``carrier``."""
        propagate.inject(carrier)
        return carrier

    def shutdown(self) -> None:
        self.provider.shutdown()
