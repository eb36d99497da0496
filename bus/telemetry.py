"""Tracing: the OpenTelemetry SDK, set up from settings and the standard OTEL_* variables.

Span names and attributes follow the OpenTelemetry semantic conventions for MCP: the
server span is ``tools/call <tool>`` with ``mcp.method.name``, ``mcp.session.id``,
``jsonrpc.request.id``, ``gen_ai.tool.name``, ``network.protocol.name=websocket`` and,
on failure, ``error.type``. Context arrives in ``params._meta`` (``traceparent``,
``tracestate``, ``baggage``), as MCP propagates it.

HTTP requests (download, upload) get a server span ``{method} {route}`` with the HTTP
conventions (``http.request.method``, ``http.route``, ``http.response.status_code``);
their parent comes from the same W3C headers. A streamed download outlives its handler,
so that span is started and ended by hand and its context attached around each step of
the stream (:meth:`Telemetry.attached`).

A tracer provider exists even when nothing is exported (the default): every audit record
keeps its request's trace and span id, so the audit trail and traces line up as soon as
an exporter is switched on. While nothing is sampled, server spans are made as the SDK
would make them but without its machinery (real W3C ids, the caller's trace continued),
and internal child spans, which nobody could ever see, are not made at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracer,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from sqlalchemy.engine import Engine

__all__ = ["ActiveSpan", "Telemetry", "make_tracer_provider", "untraced"]

INSTRUMENTATION = "bustrail"
_PROPAGATED = ("traceparent", "tracestate", "baggage")


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """No spans from instrumentations in here (background work that answers no request:
    the audit writer's batches, start-up, cleanup)."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def make_tracer_provider(
    exporter: str = "none", *, service_name: str = "bustrail", extra: SpanProcessor | None = None
) -> TracerProvider:
    """A provider exporting to ``none``, ``console`` or ``otlp`` (OTEL_EXPORTER_OTLP_*).

    Its resource is the SDK's, so the standard variables are obeyed: OTEL_SERVICE_NAME
    and OTEL_RESOURCE_ATTRIBUTES win; ``service_name`` only names the service when
    neither sets ``service.name``.

    With nothing to export to (``none`` and no ``extra`` processor) no span is ever read,
    so spans are not recorded: each still gets its trace and span id (kept in the audit
    records, propagated to child spans), without the attributes and bookkeeping that
    were a third of a small call's time in the daemon (bench_daemon).
    """
    sampler = ALWAYS_OFF if exporter == "none" and extra is None else None
    provider = TracerProvider(resource=_resource(service_name), sampler=sampler)
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if extra is not None:
        provider.add_span_processor(extra)
    return provider


def _resource(default_service_name: str) -> Resource:
    """The SDK's resource (its defaults, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME),
    named ``default_service_name`` when the environment names no service. Attributes
    given to ``Resource.create`` override the environment's, so ours is only given then."""
    from_env = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    return Resource.create({} if from_env else {SERVICE_NAME: default_service_name})


class ActiveSpan:
    """A started span, current (and ended) inside a ``with`` block.

    What ``tracer.start_as_current_span`` and ``trace.use_span(span, end_on_exit=True)``
    do, as one plain context manager: their two generator-based layers cost more than
    the span itself when nothing is recorded (the default), twice a tool call. An
    exception (not a ``BaseException`` such as a cancellation) leaving the block is
    recorded on a recording span and sets its status to ERROR, as ``use_span`` does.
    """

    __slots__ = ("_context", "_span", "_token")

    def __init__(self, span: Span, context: Context) -> None:
        self._span = span
        self._context = context
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(self._context)
        return self._span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        span = self._span
        if not span.is_recording():
            return  # ending a non-recording span does nothing
        if isinstance(exc, Exception):
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()


class _CurrentSpan:
    """``with _CURRENT_SPAN as span``: the current span, nothing started or ended."""

    def __enter__(self) -> Span:
        return trace.get_current_span()

    def __exit__(self, *exc: object) -> None:
        return None


_CURRENT_SPAN = _CurrentSpan()


class Telemetry:
    """The spans bustrail makes, from its own tracer provider (the global one is left
    alone, so an application embedding bustrail keeps control of its tracing)."""

    def __init__(self, provider: TracerProvider | None = None, *, enabled: bool = True) -> None:
        self.provider = provider or make_tracer_provider()
        self.enabled = enabled
        self.tracer: Tracer = self.provider.get_tracer(INSTRUMENTATION) if enabled else NoOpTracer()
        # A provider that samples nothing (nothing to export to, the default) records no
        # span: its spans are made here, as its tracer would make them (below).
        self._samples_nothing = enabled and self.provider.sampler is ALWAYS_OFF
        # False when no span can be recorded: attributes need not be worked out.
        self.may_record = enabled and not self._samples_nothing
        self._ids = self.provider.id_generator

    @classmethod
    def from_exporter(cls, exporter: str) -> Telemetry:
        """From BUSTRAIL_TRACE_EXPORTER: none, console, otlp, or off (no tracing at all)."""
        if exporter == "off":
            return cls(make_tracer_provider("none"), enabled=False)
        return cls(make_tracer_provider(exporter))

    def server_span(
        self,
        tool: str | None,
        request_id: Any,
        session_id: str,
        meta: Mapping[str, Any],
        *,
        method: str = "tools/call",
    ) -> ActiveSpan:
        """The server span of one JSON-RPC request: ``tools/call <tool>`` for a tool
        call, else the method name (``resources/read``); its parent (and baggage) come
        from ``_meta``. Use it as ``with telemetry.server_span(...) as span``."""
        carrier = {k: v for k, v in meta.items() if k in _PROPAGATED and isinstance(v, str)}
        parent = propagate.extract(carrier)
        if self._samples_nothing:
            span = self._unsampled(parent)  # nothing reads a name or attributes
        else:
            attributes = {
                "mcp.method.name": method,
                "mcp.session.id": session_id,
                "jsonrpc.request.id": str(request_id),
                "network.protocol.name": "websocket",
            }
            if tool is not None:
                attributes["gen_ai.tool.name"] = tool
                attributes["gen_ai.operation.name"] = "execute_tool"
            span = self.tracer.start_span(
                f"{method} {tool}" if tool is not None else method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
            )
        # The caller's baggage stays current too.
        return ActiveSpan(span, trace.set_span_in_context(span, parent))

    def start_http_span(
        self, method: str, route: str, headers: Mapping[str, str], **attributes: Any
    ) -> tuple[Span, Context]:
        """Start the server span of one HTTP request, its parent taken from the W3C
        headers. The caller ends it (:meth:`end_http`), and attaches the context returned
        (:meth:`attached`) around the work done for the request."""
        carrier = {k: str(headers[k]) for k in _PROPAGATED if headers.get(k)}
        parent = propagate.extract(carrier)
        values = {"http.request.method": method, "http.route": route, **attributes}
        span = self.tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={k: v for k, v in values.items() if v is not None},
        )
        return span, trace.set_span_in_context(span, parent)  # baggage kept

    @staticmethod
    @contextlib.contextmanager
    def attached(ctx: Context) -> Iterator[None]:
        """Make ``ctx`` current in here. Attach and detach happen in the same thread and
        step: never hold this across a ``yield`` (a generator's next step may run in
        another thread, whose context the token does not belong to)."""
        token = otel_context.attach(ctx)
        try:
            yield
        finally:
            otel_context.detach(token)

    @classmethod
    def end_http(cls, span: Span, status_code: int, error_type: str | None = None) -> None:
        """Record the response status and end the span; 5xx (or ``error_type``) is an
        error, 4xx is the client's business (the HTTP server span convention)."""
        span.set_attribute("http.response.status_code", status_code)
        if error_type is None and status_code >= 500:
            error_type = str(status_code)
        if error_type is not None:
            cls.mark_error(span, error_type)
        span.end()

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
        """A child of the current span, current inside ``with telemetry.span(...) as s``.

        When nothing is sampled, no child is made: the current span is handed back, left
        current. An internal span that is never recorded has nothing to show for itself
        (its ids are in no audit record; the request's server span's are), and making
        one was ~5% of the daemon's Python work on a small call (bench_daemon)."""
        if self._samples_nothing:
            return _CURRENT_SPAN
        span = self.tracer.start_span(
            name, attributes={k: v for k, v in attributes.items() if v is not None}
        )
        return ActiveSpan(span, trace.set_span_in_context(span))

    def _unsampled(self, parent: Context | None) -> Span:
        """The span the SDK's tracer starts under a sampler that samples nothing: not
        recording, with a new span id, in the parent's trace (or a new one) and with its
        trace state, flagged not sampled (and random-trace-id as the SDK flags it).

        Made without the tracer: its sampler call, its span-limit and metrics machinery
        and its argument checks were most of the cost of two spans a call, ~10% of the
        daemon's Python work on a small call (bench_daemon), for spans nothing ever
        reads but their ids.
        """
        ids = self._ids
        parent_context = trace.get_current_span(parent).get_span_context()
        if parent_context.is_valid:
            trace_id = parent_context.trace_id
            random_id = parent_context.trace_flags.random_trace_id
            trace_state = parent_context.trace_state
        else:
            trace_id = ids.generate_trace_id()
            random_id = ids.is_trace_id_random()
            trace_state = None
        flags = TraceFlags(TraceFlags.RANDOM_TRACE_ID if random_id else TraceFlags.DEFAULT)
        return NonRecordingSpan(
            SpanContext(
                trace_id,
                ids.generate_span_id(),
                is_remote=False,
                trace_flags=flags,
                trace_state=trace_state,
            )
        )

    @staticmethod
    def ids(span: Span) -> tuple[str | None, str | None]:
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None, None
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

    @staticmethod
    def annotate(span: Span, delivery: Any) -> None:
        if not span.is_recording():
            return  # the attributes would be dropped: not worth formatting them
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

    def instrument_engine(self, engine: Engine) -> None:
        """Database spans from the OpenTelemetry SQLAlchemy instrumentation, for this
        engine only (its global ``instrument()`` would patch every engine ever made)."""
        if not self.enabled:
            return
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.metrics import NoOpMeter

        tracer = self.provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
        usage = NoOpMeter("bustrail").create_up_down_counter("db.client.connections.usage")
        EngineTracer(tracer, engine, usage)  # type: ignore[no-untyped-call]

    def shutdown(self) -> None:
        self.provider.shutdown()
