"""Spans leave a real daemon: over OTLP/HTTP to a receiver, and on the console.

``bustrail serve`` runs in a subprocess with BUSTRAIL_TRACE_EXPORTER=otlp (the SDK's
OTLP/HTTP protobuf exporter, the one the project installs) and the standard OTEL_*
variables; a small HTTP server in this process plays the collector, taking
``POST /v1/traces`` and decoding each body with opentelemetry-proto's
``ExportTraceServiceRequest``. The SIGTERM shutdown flushes the batch processor, so
every span is there once the daemon has exited.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from daemon.client import Client
from tests.helpers.daemon import DaemonProcess, daemon_env
from tests.observability.support import UNIT


class Collector:
    """An OTLP/HTTP trace receiver on an ephemeral port: what it was sent, decoded."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.paths.append(self.path)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.requests.append(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads what arrived, not an access log

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource's attributes."""
        out = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(UNIT)


def _attributes(values: Any) -> dict[str, Any]:
    def value(kv: KeyValue) -> Any:
        field = kv.value.WhichOneof("value")
        return getattr(kv.value, field) if field else None

    return {kv.key: value(kv) for kv in values}


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


def _env(tmp_path: Path, exporter: str, **otel: str) -> dict[str, str]:
    """A daemon's environment with only the OTEL_* variables given here."""
    env = {
        k: v
        for k, v in daemon_env(tmp_path, bustrail_trace_exporter=exporter).items()
        if not k.startswith("OTEL_")
    }
    env.update(otel)
    return env


def _echo_through(daemon: DaemonProcess, text: str) -> tuple[int, int]:
    """One echo call from a traced client; the trace id and span id of its client span."""
    client_spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(client_spans))

    async def call() -> None:
        async with await Client.connect(daemon.url, tracer_provider=provider) as client:
            result = await client.call("echo", {"text": text})
            assert result.text == text

    try:
        asyncio.run(call())
    finally:
        provider.shutdown()
    (span,) = client_spans.get_finished_spans()
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


@pytest.mark.parametrize(
    ("otel", "service_name"),
    [
        ({}, "bustrail"),
        (
            {
                "OTEL_SERVICE_NAME": "orders-bus",
                "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored,deployment.environment=e2e",
            },
            "orders-bus",
        ),
    ],
    ids=["default-name", "otel-variables"],
)
def test_otlp_exports_the_spans_of_a_real_call(
    tmp_path: Path, collector: Collector, otel: dict[str, str], service_name: str
) -> None:
    env = _env(tmp_path, "otlp", OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, **otel)
    daemon = DaemonProcess(env)
    try:
        trace_id, client_span_id = _echo_through(daemon, "exported")
        assert daemon.terminate() == 0, daemon.log_text()
    finally:
        daemon.stop()

    assert set(collector.paths) == {"/v1/traces"}
    received = collector.spans()
    servers = [(r, s) for r, s in received if s.name == "tools/call echo"]
    assert len(servers) == 1, [s.name for _, s in received]
    resource, server = servers[0]
    assert resource["service.name"] == service_name
    if otel:
        assert resource["deployment.environment"] == "e2e"
    # The daemon's server span continues the client's trace, under the client's span.
    assert int.from_bytes(server.trace_id, "big") == trace_id
    assert int.from_bytes(server.parent_span_id, "big") == client_span_id
    attributes = _attributes(server.attributes)
    assert attributes["gen_ai.tool.name"] == "echo"
    assert attributes["mcp.method.name"] == "tools/call"


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects in ``text``, skipping anything else the process printed."""
    decoder = json.JSONDecoder()
    objects, at = [], 0
    while (start := text.find("{", at)) != -1:
        try:
            value, at = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        if isinstance(value, dict):
            objects.append(value)
    return objects


def test_the_console_exporter_prints_the_spans_of_a_real_call(tmp_path: Path) -> None:
    env = _env(tmp_path, "console", OTEL_SERVICE_NAME="console-bus")
    daemon = DaemonProcess(env)
    try:
        trace_id, _ = _echo_through(daemon, "printed")
        assert daemon.terminate() == 0, daemon.log_text()
        assert daemon.proc.stdout is not None
        printed = daemon.proc.stdout.read()
    finally:
        daemon.stop()

    spans = [o for o in _json_objects(printed) if "context" in o and "name" in o]
    servers = [s for s in spans if s["name"] == "tools/call echo"]
    assert len(servers) == 1, printed[-3000:]
    (server,) = servers
    assert server["context"]["trace_id"] == f"0x{trace_id:032x}"
    assert server["kind"] == "SpanKind.SERVER"
    assert server["resource"]["attributes"]["service.name"] == "console-bus"
