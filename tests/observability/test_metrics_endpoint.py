"""/metrics after a mixed workload: every metric the issue names, with the values the
workload must have produced.

A real daemon on PostgreSQL behind a TCP proxy runs inline, stored and failing calls,
gets bad frames, serves a fetch and a corrupted read, then lives through a real outage
(the proxy cut): fallbacks, a breaker trip, a result lost to ``fallback_oversize``, an
audit writer that spools. The scrape is parsed by prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import websockets

from bus.db import Database
from bus.store import chunks
from daemon.client import Client, RPCError
from tests.helpers.daemon import ThreadDaemon
from tests.helpers.tcpproxy import TCPProxy
from tests.observability.support import UNIT, Scrape, running_daemon, scrape, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

THRESHOLD = 4096
BREAKER_THRESHOLD = 3
N_INLINE, N_STORED, N_ERRORS, N_FALLBACK = 3, 4, 2, BREAKER_THRESHOLD + 1
FINDINGS = {"empty_success": 2, "stored_never_fetched": 1}


def _proxied(url: str, proxy: TCPProxy) -> str:
    return (
        sa.engine.make_url(url)
        .set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )


def _corrupt(database_url: str, transaction_id: str) -> None:
    """Damage a stored chunk at rest (its bytes no longer match its checksum)."""
    db = Database(database_url)
    try:
        with db.begin() as conn:
            changed = conn.execute(
                chunks.update()
                .where(chunks.c.transaction_id == uuid.UUID(transaction_id), chunks.c.seq == 0)
                .values(data=b"\x00 bit rot \x00" * 10)
            ).rowcount
        assert changed == 1
    finally:
        db.dispose()


async def _bad_frames(url: str) -> list[int]:
    """Two frames that are not JSON, one unknown method: their error codes."""
    codes = []
    async with websockets.connect(url, open_timeout=UNIT) as ws:
        for frame in ("not json", "{", '{"jsonrpc": "2.0", "id": 1, "method": "nope"}'):
            await ws.send(frame)
            codes.append(int(json.loads(await ws.recv())["error"]["code"]))
    return codes


async def _before_outage(daemon: ThreadDaemon, database_url: str) -> dict[str, Any]:
    async with await Client.connect(daemon.url) as client:
        inline = [await client.call("echo", {"text": f"hello {i}"}) for i in range(N_INLINE)]
        stored = [
            await client.call("generate", {"size": 20_000, "seed": i}) for i in range(N_STORED)
        ]
        errors = [await client.call("fail", {"message": f"boom {i}"}) for i in range(N_ERRORS)]
        good, bad = (str(stored[0].transaction_id), str(stored[1].transaction_id))
        fetched = await client.fetch(good)
        read = await client.read_resource(f"bustrail://transactions/{good}")
        _corrupt(database_url, bad)
        with pytest.raises(httpx.HTTPError):  # the stream breaks: no wrong bytes
            httpx.get(f"{daemon.http}/v1/transactions/{bad}", timeout=UNIT).raise_for_status()
        with pytest.raises(RPCError) as corrupted:  # known corrupted: refused, not re-read
            await client.read_resource(f"bustrail://transactions/{bad}")
    return {
        "routes": [r.route for r in inline + stored] + [r.is_error for r in errors],
        "fetched": (fetched, read),
        "corrupted_code": corrupted.value.code,
        "bad_frames": await _bad_frames(daemon.url),
    }


async def _during_outage(daemon: ThreadDaemon) -> dict[str, Any]:
    async with await Client.connect(daemon.url) as client:
        routes = [
            (await client.call("generate", {"size": 20_000, "seed": 100 + i})).route
            for i in range(N_FALLBACK)
        ]
    # A client that takes small messages only: its result can go neither way.
    async with await Client.connect(daemon.url, max_message_bytes=16 * 1024) as small:
        with pytest.raises(RPCError) as lost:
            await small.call("generate", {"size": 20_000, "seed": 200})
    return {"routes": routes, "lost": lost.value}


def test_metrics_after_a_mixed_workload(tmp_path: Path, pg_url: str) -> None:
    url = sa.engine.make_url(pg_url)
    proxy = TCPProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        with running_daemon(
            tmp_path,
            _proxied(pg_url, proxy),
            message_bus_threshold_bytes=THRESHOLD,
            circuit_breaker_threshold=BREAKER_THRESHOLD,
            circuit_breaker_open_seconds=600,
            database_pool_size=2,
        ) as daemon:
            daemon.runtime.metrics.watch_findings(lambda: FINDINGS)
            before = asyncio.run(_before_outage(daemon, pg_url))
            assert (
                before["routes"] == ["inline"] * N_INLINE + ["store"] * N_STORED + [True] * N_ERRORS
            )
            assert before["fetched"][0] == before["fetched"][1]
            assert before["corrupted_code"] == -32005
            assert before["bad_frames"] == [-32700, -32700, -32601]

            # Everything before the outage reaches the database first (else whether any
            # record was written before the cut would be a race with the flush timer).
            assert daemon.runtime.audit.flush(30)
            proxy.cut()
            during = asyncio.run(_during_outage(daemon))
            assert during["routes"] == ["fallback"] * N_FALLBACK
            assert during["lost"].data["error_kind"] == "fallback_oversize"
            # The audit writer notices the outage on its next batch (in the background):
            # it counts the failed write, then spools the batch, then counts it as spooled.
            # Wait for the last of the three, else a scrape can fall between them.
            metrics = wait_until(
                lambda: (
                    (s := scrape(daemon.http)).get("bustrail_audit_records_spooled_total") and s
                ),
                "the audit writer to spool a batch it could not write",
            )
            check(metrics)
            proxy.restore()
    finally:
        proxy.close()


def check(m: Scrape) -> None:
    # Transactions by route and status: one per call, by how it ended.
    assert m.value("bustrail_transactions_total", route="store", status="stored") == N_STORED
    assert m.value("bustrail_transactions_total", route="inline", status="delivered") == N_INLINE
    assert m.value("bustrail_transactions_total", route="inline", status="failed") == N_ERRORS
    assert m.value("bustrail_transactions_total", route="fallback", status="delivered") == (
        N_FALLBACK
    )
    assert m.value("bustrail_transactions_total", route="fallback", status="failed") == 1

    # Sizes: every stored payload once, before and after compression.
    assert m.value("bustrail_payload_size_bytes_count", route="store") == N_STORED
    assert m.value("bustrail_payload_size_bytes_sum", route="store") > N_STORED * 19_000
    assert m.value("bustrail_stored_size_bytes_count") == N_STORED
    stored_sum = m.value("bustrail_stored_size_bytes_sum")
    assert 0 < stored_sum < m.value("bustrail_payload_size_bytes_sum", route="store")
    ratio_count = m.value("bustrail_compression_ratio_count", compression="zstd")
    assert ratio_count == N_STORED
    assert m.value("bustrail_compression_ratio_sum", compression="zstd") / ratio_count > 1

    # Store latency by operation: successful puts; whole verified reads.
    assert m.value("bustrail_store_duration_seconds_count", operation="put") == N_STORED
    assert m.value("bustrail_store_duration_seconds_count", operation="read") == 2
    assert m.value("bustrail_store_duration_seconds_sum", operation="put") > 0
    # Failures tried against the store; after the breaker opened, nothing was tried.
    assert m.value("bustrail_store_errors_total", operation="put") == BREAKER_THRESHOLD

    # The breaker: open, one trip, the transition that made it.
    assert m.value("bustrail_breaker_state", breaker="store", state="open") == 1
    assert m.value("bustrail_breaker_state", breaker="store", state="closed") == 0
    assert m.value("bustrail_breaker_trips_total", breaker="store") == 1
    transitions = {
        (s.labels["from_state"], s.labels["to_state"]): s.value
        for s in m.samples
        if s.name == "bustrail_breaker_transitions_total"
    }
    assert transitions[("closed", "open")] == 1
    assert sum(transitions.values()) == 1

    # Fallbacks, and the one too big to fall back.
    assert m.value("bustrail_fallbacks_total", outcome="delivered") == N_FALLBACK
    assert m.value("bustrail_fallbacks_total", outcome="fallback_oversize") == 1
    assert m.value("bustrail_fallback_oversize_total") == 1

    # The audit writer: its queue, its spool, the write that failed.
    assert m.value("bustrail_audit_write_failures_total") >= 1
    assert m.value("bustrail_audit_spool_records") >= 1
    assert m.value("bustrail_audit_records_spooled_total") >= 1
    assert m.value("bustrail_audit_queue_records") >= 0
    assert m.value("bustrail_audit_database_up") == 0
    assert m.value("bustrail_audit_records_written_total") > 0  # before the outage

    # Reads: one fetch each way; the corrupted chunk found once (the re-read is refused).
    assert m.value("bustrail_fetches_total", via="http") == 1
    assert m.value("bustrail_fetches_total", via="resources/read") == 1
    assert m.value("bustrail_checksum_mismatches_total") == 1

    # Refusals by code: bad frames, unknown method, corrupted read, the lost result.
    assert m.value("bustrail_refused_frames_total", code="-32700") == 2
    assert m.value("bustrail_refused_frames_total", code="-32601") == 1
    assert m.value("bustrail_refused_frames_total", code="-32005") == 1
    assert m.value("bustrail_refused_frames_total", code="-32001") == 1

    # Open findings by kind, from the ledger's callable.
    for kind, count in FINDINGS.items():
        assert m.value("bustrail_findings_open", kind=kind) == count

    # Tools: each call timed, none left running.
    assert m.value("bustrail_tool_duration_seconds_count", tool="echo") == N_INLINE
    assert m.value("bustrail_tool_duration_seconds_count", tool="fail") == N_ERRORS
    generated = N_STORED + N_FALLBACK + 1
    assert m.value("bustrail_tool_duration_seconds_count", tool="generate") == generated
    assert m.value("bustrail_tool_calls_in_flight") == 0
    assert {s.labels["source"]: s.value for s in m.samples if s.name.endswith("source_up")} == {
        "audit": 1,
        "breaker": 1,
        "findings": 1,
    }
