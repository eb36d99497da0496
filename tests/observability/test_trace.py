"""One trace from the client to the database, on SQLite and on PostgreSQL.

A real daemon and a real client share one tracer provider whose spans land in memory;
the test follows the parent links span by span and checks that the audit row keeps the
trace the spans tell. The HTTP download and upload join a trace given in W3C headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from daemon.client import CallResult, Client
from tests.helpers.daemon import ThreadDaemon
from tests.observability.support import (
    UNIT,
    Tracing,
    audit_row,
    running_daemon,
    scrape,
    span_id,
    trace_id,
    wait_until,
)

THRESHOLD = 4096  # MESSAGE_BUS_THRESHOLD_BYTES: results above it are stored
# A W3C traceparent as an upstream HTTP client would send it.
UPSTREAM_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
UPSTREAM_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{UPSTREAM_TRACE:032x}-{UPSTREAM_SPAN:016x}-01"


@pytest.fixture
def tracing() -> Tracing:
    return Tracing()


@pytest.fixture
def daemon(tmp_path: Path, db_url: str, tracing: Tracing) -> Any:
    with running_daemon(
        tmp_path, db_url, tracing=tracing, message_bus_threshold_bytes=THRESHOLD
    ) as running:
        yield running


def _backend(daemon: ThreadDaemon) -> str:
    return "postgresql" if daemon.runtime.db.is_postgres else "sqlite"


def _url(daemon: ThreadDaemon) -> str:
    return daemon.runtime.settings.database_url.get_secret_value()


def _call(
    daemon: ThreadDaemon, tracing: Tracing, tool: str, arguments: dict[str, Any]
) -> CallResult:
    async def run() -> CallResult:
        async with await Client.connect(daemon.url, tracer_provider=tracing.provider) as client:
            return await client.call(tool, arguments)

    result = asyncio.run(run())
    daemon.runtime.audit.flush()
    return result


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_a_stored_result_is_one_trace_from_client_to_database(
    daemon: ThreadDaemon, tracing: Tracing
) -> None:
    result = _call(daemon, tracing, "generate", {"size": 20_000})
    assert result.route == "store"

    client = tracing.one("tools/call generate", SpanKind.CLIENT)
    server = tracing.one("tools/call generate", SpanKind.SERVER)
    route = tracing.one("bustrail.route")
    put = tracing.one("bustrail.store.put")
    db = [s for s in tracing.db_spans() if _parent(s) == span_id(put)]

    # One trace, each span the child of the one before.
    assert client.parent is None
    assert _parent(server) == span_id(client)
    assert _parent(route) == span_id(server)
    assert _parent(put) == span_id(route)
    assert db, "no database span under bustrail.store.put"
    assert {trace_id(s) for s in [client, server, route, put, *db]} == {trace_id(client)}
    assert route.kind is SpanKind.INTERNAL and put.kind is SpanKind.INTERNAL
    # The store wrote the chunks and the row, each a database span of this backend.
    statements = [str((s.attributes or {}).get("db.statement", "")) for s in db]
    assert any(st.startswith("INSERT INTO chunks") for st in statements), statements
    assert {(s.attributes or {}).get("db.system") for s in db} == {_backend(daemon)}
    assert all(s.kind is SpanKind.CLIENT for s in db)

    attributes = dict(server.attributes or {})
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == "generate"
    assert attributes["jsonrpc.request.id"] == str(result.request_id)
    assert attributes["network.protocol.name"] == "websocket"
    assert attributes["bustrail.transaction_id"] == result.transaction_id
    assert attributes["bustrail.route"] == "store"
    assert "error.type" not in attributes
    assert server.status.status_code is not StatusCode.ERROR
    assert (put.attributes or {})["bustrail.stored_size"] > 0

    # The audit row keeps the trace and the server span.
    row = audit_row(_url(daemon), str(result.transaction_id))
    assert row["status"].value == "stored"
    assert row["trace_id"] == f"{trace_id(client):032x}"
    assert row["span_id"] == f"{span_id(server):016x}"
    assert attributes["mcp.session.id"] == row["session_id"]

    # Background work (the audit writer's batches) makes no orphan database spans.
    orphans = [s.name for s in tracing.db_spans() if s.parent is None]
    assert orphans == []


def test_a_failing_tool_marks_its_server_span(daemon: ThreadDaemon, tracing: Tracing) -> None:
    result = _call(daemon, tracing, "fail", {"message": "boom"})
    assert result.is_error

    client = tracing.one("tools/call fail", SpanKind.CLIENT)
    server = tracing.one("tools/call fail", SpanKind.SERVER)
    assert _parent(server) == span_id(client)
    assert (server.attributes or {})["error.type"] == "tool_error"
    assert server.status.status_code is StatusCode.ERROR

    row = audit_row(_url(daemon), str(result.transaction_id))
    assert (row["status"].value, row["error_kind"]) == ("failed", "tool_error")
    assert row["trace_id"] == f"{trace_id(server):032x}"
    assert row["span_id"] == f"{span_id(server):016x}"


def test_an_http_download_joins_the_callers_trace(daemon: ThreadDaemon, tracing: Tracing) -> None:
    stored = _call(daemon, tracing, "generate", {"size": 20_000, "seed": 3})
    assert stored.route == "store"
    tracing.exporter.clear()

    response = httpx.get(
        f"{daemon.http}/v1/transactions/{stored.transaction_id}",
        headers={"traceparent": TRACEPARENT},
        timeout=UNIT,
    )
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == stored.checksum

    server = wait_until(
        lambda: tracing.named("GET /v1/transactions/{tx_id}"), "the download span to end"
    )[0]
    assert server.kind is SpanKind.SERVER
    assert trace_id(server) == UPSTREAM_TRACE
    assert _parent(server) == UPSTREAM_SPAN
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/v1/transactions/{tx_id}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["bustrail.transaction_id"] == stored.transaction_id
    assert attributes["bustrail.size"] == len(response.content)
    assert attributes["bustrail.compression"] == "zstd"
    assert server.status.status_code is not StatusCode.ERROR

    # The reads before the stream and the fetch recorded at its end, all under the span.
    db = tracing.db_spans()
    assert db and all(_parent(s) == span_id(server) for s in db), [s.name for s in db]
    assert all(trace_id(s) == UPSTREAM_TRACE for s in db)
    statements = [str((s.attributes or {}).get("db.statement", "")) for s in db]
    assert any(st.startswith("UPDATE transactions") for st in statements), statements

    missing = httpx.get(
        f"{daemon.http}/v1/transactions/{stored.transaction_id[:-4]}0000",
        headers={"traceparent": TRACEPARENT},
        timeout=UNIT,
    )
    assert missing.status_code == 404
    spans = wait_until(lambda: tracing.named("GET /v1/transactions/{tx_id}")[1:], "the 404 span")
    assert (spans[0].attributes or {})["http.response.status_code"] == 404
    assert spans[0].status.status_code is not StatusCode.ERROR  # the client's mistake


def test_an_http_upload_joins_the_callers_trace(daemon: ThreadDaemon, tracing: Tracing) -> None:
    payload = b"upload " * 5_000
    response = httpx.post(
        f"{daemon.http}/v1/transactions",
        content=payload,
        headers={
            "traceparent": TRACEPARENT,
            "content-type": "text/plain",
            "x-bustrail-checksum": f"sha256:{hashlib.sha256(payload).hexdigest()}",
        },
        timeout=UNIT,
    )
    assert response.status_code == 201, response.text
    uploaded = response.json()
    daemon.runtime.audit.flush()

    server = wait_until(lambda: tracing.named("POST /v1/transactions"), "the upload span")[0]
    put = tracing.one("bustrail.store.put")
    assert server.kind is SpanKind.SERVER
    assert (trace_id(server), _parent(server)) == (UPSTREAM_TRACE, UPSTREAM_SPAN)
    assert _parent(put) == span_id(server)
    db = [s for s in tracing.db_spans() if _parent(s) == span_id(put)]
    assert db, "no database span under the upload's store.put"
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 201
    assert attributes["bustrail.transaction_id"] == uploaded["transaction_id"]
    assert attributes["bustrail.size"] == len(payload)

    row = audit_row(_url(daemon), uploaded["transaction_id"])
    assert row["direction"].value == "upload"
    assert row["trace_id"] == f"{UPSTREAM_TRACE:032x}"
    assert row["span_id"] == f"{span_id(server):016x}"


@pytest.mark.slow
def test_a_download_the_client_abandons_ends_its_span_at_once(
    tmp_path: Path, sqlite_url: str, tracing: Tracing
) -> None:
    with running_daemon(
        tmp_path,
        sqlite_url,
        tracing=tracing,
        message_bus_threshold_bytes=THRESHOLD,
        message_bus_compression="none",
        message_bus_chunk_bytes=64 * 1024,
    ) as daemon:
        stored = _call(daemon, tracing, "generate", {"size": 8_000_000})
        assert stored.route == "store"
        host, port = daemon.http.removeprefix("http://").split(":")
        # A client with a tiny window reads the headers and goes away: the server cannot
        # have sent 8 MB by then.
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            sock.sendall(
                f"GET /v1/transactions/{stored.transaction_id} HTTP/1.1\r\n"
                f"Host: {host}\r\ntraceparent: {TRACEPARENT}\r\n\r\n".encode()
            )
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        server = wait_until(
            lambda: tracing.named("GET /v1/transactions/{tx_id}"), "the abandoned download's span"
        )[0]
        assert (server.attributes or {})["error.type"] == "aborted"
        assert server.status.status_code is StatusCode.ERROR
        assert trace_id(server) == UPSTREAM_TRACE
        assert scrape(daemon.http).value("bustrail_fetches_total", via="http") == 0
