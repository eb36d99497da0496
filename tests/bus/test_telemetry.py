"""Tests for bus.telemetry: span names, kinds, parents and attributes, the HTTP span's
manual lifecycle across threads, and database spans on our engine only.

Spans come from the real SDK into an in-memory exporter; database spans from the real
SQLAlchemy instrumentation on real SQLite engines. The end-to-end trace through a
running daemon is in tests/observability/test_trace.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, SpanKind, StatusCode

from bus.telemetry import Telemetry, make_tracer_provider, untraced

TRACE = 0x0AF7651916CD43DD8448EB211C80319C
PARENT = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE:032x}-{PARENT:016x}-01"
DB_SCOPE = "opentelemetry.instrumentation.sqlalchemy"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(exporter: InMemorySpanExporter) -> Iterator[Telemetry]:
    t = Telemetry(make_tracer_provider(extra=SimpleSpanProcessor(exporter)))
    yield t
    t.shutdown()


def finished(exporter: InMemorySpanExporter, name: str | None = None) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if name is None or s.name == name]


def ids(span: ReadableSpan) -> tuple[int, int, int | None]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id, span.parent and span.parent.span_id


def test_a_tool_call_server_span_follows_the_mcp_conventions(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    meta: dict[str, Any] = {
        "traceparent": TRACEPARENT,
        "baggage": "tenant.hint=acme",
        "progressToken": 7,
    }
    with telemetry.server_span("generate", 12, "session-1", meta) as span:
        trace_hex, span_hex = Telemetry.ids(span)
        assert baggage.get_baggage("tenant.hint") == "acme"
    assert baggage.get_baggage("tenant.hint") is None
    (server,) = finished(exporter)
    assert server.name == "tools/call generate"
    assert server.kind is SpanKind.SERVER
    trace_id, span_id, parent = ids(server)
    assert (trace_id, parent) == (TRACE, PARENT)
    assert (trace_hex, span_hex) == (f"{TRACE:032x}", f"{span_id:016x}")
    assert dict(server.attributes or {}) == {
        "mcp.method.name": "tools/call",
        "mcp.session.id": "session-1",
        "jsonrpc.request.id": "12",
        "network.protocol.name": "websocket",
        "gen_ai.tool.name": "generate",
        "gen_ai.operation.name": "execute_tool",
    }


def test_a_request_without_context_starts_a_trace_and_other_methods_keep_their_name(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    with telemetry.server_span(None, "r-1", "s", {}, method="resources/read"):
        pass
    (span,) = finished(exporter)
    assert span.name == "resources/read"
    assert span.parent is None
    assert "gen_ai.tool.name" not in (span.attributes or {})


def test_mark_error_sets_the_type_and_the_status(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    with telemetry.server_span("fail", 1, "s", {}) as span:
        Telemetry.mark_error(span, "tool_error")
    (server,) = finished(exporter)
    assert (server.attributes or {})["error.type"] == "tool_error"
    assert server.status.status_code is StatusCode.ERROR


def test_ids_of_a_span_that_records_nothing_are_none() -> None:
    assert Telemetry.ids(INVALID_SPAN) == (None, None)


def test_inject_writes_the_current_context(telemetry: Telemetry) -> None:
    with telemetry.span("client work") as span:
        carrier = Telemetry.inject({})
    trace_hex, span_hex = Telemetry.ids(span)
    version, trace_part, span_part, _flags = carrier["traceparent"].split("-")
    assert (version, trace_part, span_part) == ("00", trace_hex, span_hex)


def test_an_http_span_takes_its_parent_from_w3c_headers_and_ends_by_hand(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    headers = {"traceparent": TRACEPARENT, "baggage": "tenant=acme", "user-agent": "x"}
    span, ctx = telemetry.start_http_span(
        "GET", "/v1/transactions/{tx_id}", headers, **{"bustrail.transaction_id": "t1"}
    )

    # The context travels to another thread and is attached there, within one step.
    seen: list[object] = []

    def step() -> None:
        with telemetry.attached(ctx), telemetry.span("bustrail.read"):
            seen.append(baggage.get_baggage("tenant"))

    worker = threading.Thread(target=step)
    worker.start()
    worker.join()
    assert seen == ["acme"]  # the caller's baggage came along
    assert trace.get_current_span() is INVALID_SPAN  # nothing leaked into this thread
    assert finished(exporter, "GET /v1/transactions/{tx_id}") == []  # not ended yet
    Telemetry.end_http(span, 200)

    (server,) = finished(exporter, "GET /v1/transactions/{tx_id}")
    (child,) = finished(exporter, "bustrail.read")
    assert server.kind is SpanKind.SERVER
    assert ids(server)[0] == TRACE and ids(server)[2] == PARENT
    assert ids(child)[0] == TRACE and ids(child)[2] == ids(server)[1]
    assert dict(server.attributes or {}) == {
        "http.request.method": "GET",
        "http.route": "/v1/transactions/{tx_id}",
        "bustrail.transaction_id": "t1",
        "http.response.status_code": 200,
    }
    assert server.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [(404, None, None), (503, None, "503"), (200, "checksum_mismatch", "checksum_mismatch")],
)
def test_an_http_span_is_an_error_on_5xx_or_when_told(
    telemetry: Telemetry,
    exporter: InMemorySpanExporter,
    status: int,
    error_type: str | None,
    expected: str | None,
) -> None:
    span, _ = telemetry.start_http_span("POST", "/v1/transactions", {})
    Telemetry.end_http(span, status, error_type)
    (server,) = finished(exporter)
    assert server.parent is None
    assert (server.attributes or {}).get("error.type") == expected
    failed = server.status.status_code is StatusCode.ERROR
    assert failed is (expected is not None)


def _engine(path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{path}")


def test_database_spans_come_from_the_instrumented_engine_only(
    telemetry: Telemetry, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    ours, theirs = _engine(tmp_path / "ours.db"), _engine(tmp_path / "theirs.db")
    try:
        telemetry.instrument_engine(ours)
        with telemetry.span("bustrail.store.put") as put:
            for engine in (ours, theirs):
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
    finally:
        ours.dispose()
        theirs.dispose()
    db = [s for s in finished(exporter) if s.instrumentation_scope.name == DB_SCOPE]
    assert [s.name for s in db] == [f"SELECT {tmp_path / 'ours.db'}"]
    assert db[0].kind is SpanKind.CLIENT
    assert (db[0].attributes or {})["db.system"] == "sqlite"
    assert ids(db[0])[2] == put.get_span_context().span_id


def test_untraced_work_makes_no_database_spans(
    telemetry: Telemetry, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    engine = _engine(tmp_path / "bg.db")
    try:
        telemetry.instrument_engine(engine)
        with untraced(), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert finished(exporter) == []
        with engine.connect() as conn:  # and outside it, they come back
            conn.execute(sa.text("SELECT 2"))
    finally:
        engine.dispose()
    assert len(finished(exporter)) == 1


def test_tracing_off_makes_no_spans_at_all(exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    telemetry = Telemetry(make_tracer_provider(extra=SimpleSpanProcessor(exporter)), enabled=False)
    engine = _engine(tmp_path / "off.db")
    try:
        telemetry.instrument_engine(engine)
        with telemetry.server_span("echo", 1, "s", {"traceparent": TRACEPARENT}) as span:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            span_ids = Telemetry.ids(span)
        http, _ = telemetry.start_http_span("GET", "/v1/transactions/{tx_id}", {})
        Telemetry.end_http(http, 200)
    finally:
        engine.dispose()
        telemetry.shutdown()
    assert finished(exporter) == []
    # The span carries the caller's context (a no-op tracer passes it through) or none.
    assert span_ids in ((None, None), (f"{TRACE:032x}", f"{PARENT:016x}"))


def _resource_of(**kwargs: Any) -> dict[str, Any]:
    """The resource attributes of a span made through make_tracer_provider(**kwargs)."""
    exporter = InMemorySpanExporter()
    provider = make_tracer_provider(extra=SimpleSpanProcessor(exporter), **kwargs)
    try:
        provider.get_tracer("t").start_span("s").end()
    finally:
        provider.shutdown()
    (span,) = finished(exporter)
    return dict(span.resource.attributes)


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* resource variable from the environment the tests run in."""
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_provider_names_the_service(otel_env: pytest.MonkeyPatch) -> None:
    assert _resource_of(service_name="bustrail-test")["service.name"] == "bustrail-test"


def test_bustrail_is_the_service_name_when_the_environment_names_none(
    otel_env: pytest.MonkeyPatch,
) -> None:
    otel_env.setenv("OTEL_SERVICE_NAME", "")  # empty: not a name (the SDK's reading)
    otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    attributes = _resource_of()
    assert attributes["service.name"] == "bustrail"
    assert attributes["deployment.environment"] == "staging"
    assert attributes["telemetry.sdk.name"] == "opentelemetry"  # the SDK's defaults stay


def test_otel_service_name_wins_over_the_default(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_SERVICE_NAME", "orders-daemon")
    assert _resource_of()["service.name"] == "orders-daemon"
    assert _resource_of(service_name="other")["service.name"] == "orders-daemon"


def test_otel_resource_attributes_name_the_service_and_add_attributes(
    otel_env: pytest.MonkeyPatch,
) -> None:
    otel_env.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,service.namespace=shop"
    )
    attributes = _resource_of()
    assert (attributes["service.name"], attributes["service.namespace"]) == (
        "from-attributes",
        "shop",
    )
    # Both set: OTEL_SERVICE_NAME wins, as the specification says.
    otel_env.setenv("OTEL_SERVICE_NAME", "from-service-name")
    attributes = _resource_of()
    assert (attributes["service.name"], attributes["service.namespace"]) == (
        "from-service-name",
        "shop",
    )


# -- nothing sampled (no exporter, the default): spans made without the SDK's tracer ------
def _context_of(telemetry: Telemetry, meta: dict[str, Any]) -> tuple[Any, Any]:
    with telemetry.server_span("echo", 1, "s", meta) as span, telemetry.span("child") as child:
        return span.get_span_context(), child.get_span_context()


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"},
        {"traceparent": f"00-{TRACE:032x}-{PARENT:016x}-00"},  # the caller did not sample
    ],
)
def test_unsampled_server_spans_are_those_the_sdk_makes(meta: dict[str, Any]) -> None:
    fast = Telemetry()  # exporter "none": its sampler samples nothing
    assert not fast.may_record
    sdk = Telemetry()
    sdk._samples_nothing = False  # the same provider, through the SDK's tracer
    (ours, our_child), (theirs, _) = _context_of(fast, meta), _context_of(sdk, meta)
    for attribute in ("trace_flags", "trace_state", "is_remote", "is_valid"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert ours.span_id != theirs.span_id  # new ids every time
    if meta:  # the caller's trace goes on; the audit record carries its id
        assert ours.trace_id == theirs.trace_id == TRACE
        assert Telemetry.ids(trace.NonRecordingSpan(ours))[0] == f"{TRACE:032x}"
    else:
        assert ours.trace_id != theirs.trace_id
    # No internal child is made for what nobody records: the server span stays current.
    assert our_child == ours


def test_an_unsampled_server_span_is_current_and_propagated() -> None:
    telemetry = Telemetry()
    with telemetry.server_span("echo", 1, "s", {"traceparent": TRACEPARENT}) as span:
        assert trace.get_current_span() is span
        carrier = Telemetry.inject({})
    assert trace.get_current_span() is INVALID_SPAN
    trace_hex, span_hex = Telemetry.ids(span)
    assert trace_hex == f"{TRACE:032x}"
    assert carrier["traceparent"] == f"00-{trace_hex}-{span_hex}-00"


def test_an_exception_leaving_a_span_is_recorded_and_ends_it(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(KeyError), telemetry.server_span("echo", 1, "s", {}):
        raise KeyError("x")
    (span,) = finished(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "KeyError: 'x'"
    assert [e.name for e in span.events] == ["exception"]
    assert trace.get_current_span() is INVALID_SPAN


def test_a_cancellation_leaving_a_span_is_not_an_error(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    class Cancelled(BaseException):
        pass

    with pytest.raises(Cancelled), telemetry.span("bustrail.route"):
        raise Cancelled
    (span,) = finished(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert not span.events
