"""An upstream's results during a real store outage: the breaker and the fallback.

The daemon runs on PostgreSQL through a TCP proxy and fronts the FastMCP test server.
The proxy is cut: an upstream result over the threshold that fits the client comes back
inline (``fallback``), byte for byte; one over the client's limit is refused with
``fallback_oversize``; the store's failures open the breaker. The proxy is restored:
results go back to claim checks, and the audit rows written meanwhile (spooled) reach
the database under the upstream's tool names.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from daemon.client import Client, RPCError
from daemon.jsonrpc import Code
from tests.daemon.support import audit_rows, wait_until
from tests.gateway.support import gateway_daemon, metric, readyz, upstream_spec
from tests.gateway.upstream_server import json_rows, text_of
from tests.helpers.daemon import ThreadDaemon
from tests.helpers.tcpproxy import TCPProxy

pytestmark = [pytest.mark.postgres]

THRESHOLD = 4096  # results over this go to the store (the smallest allowed)
CLIENT_CAP = 64 * 1024  # the client's max_message_bytes: the most a fallback may carry
FITS = 20_000  # over THRESHOLD, well under CLIENT_CAP once in a JSON-RPC message
TOO_BIG = 200_000  # over CLIENT_CAP
BREAKER_THRESHOLD = 2
OPEN_SECONDS = 3.0


def _proxied(url: str, proxy: TCPProxy) -> str:
    return (
        sa.engine.make_url(url)
        .set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )


async def _during_outage(daemon: ThreadDaemon) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with await Client.connect(daemon.url, max_message_bytes=CLIENT_CAP) as client:
        # Two store failures in a row: the second opens the breaker.
        text = await client.call("text", {"size": FITS})
        rows = await client.call("rows", {"size": FITS})
        out["text"] = (text.route, text.inline_bytes(), text.transaction_id)
        out["rows"] = (rows.route, rows.inline_bytes(), rows.transaction_id)
        out["readyz"] = readyz(daemon.http)
        # The breaker is open now: the store is not even tried, and this one fits nowhere.
        with pytest.raises(RPCError) as refused:
            await client.call("text", {"size": TOO_BIG})
        out["refused"] = refused.value
        out["after"] = (await client.call("whoami")).text  # the connection survived
    return out


async def _after_outage(daemon: ThreadDaemon) -> list[tuple[str | None, str | None, bytes]]:
    async with await Client.connect(daemon.url, max_message_bytes=CLIENT_CAP) as client:
        results = [await client.call("text", {"size": FITS}) for _ in range(2)]
        return [(r.route, r.transaction_id, await client.result_bytes(r)) for r in results]


def test_upstream_results_fall_back_inline_while_the_store_is_down(
    tmp_path: Path, pg_url: str
) -> None:
    url = sa.engine.make_url(pg_url)
    proxy = TCPProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        with gateway_daemon(
            tmp_path,
            [upstream_spec("up")],
            database_url=_proxied(pg_url, proxy),
            message_bus_threshold_bytes=THRESHOLD,
            circuit_breaker_threshold=BREAKER_THRESHOLD,
            circuit_breaker_open_seconds=OPEN_SECONDS,
            bustrail_audit_flush_seconds=0.1,
        ) as daemon:
            assert metric(daemon.http, "bustrail_breaker_trips_total", breaker="store") == 0
            proxy.cut()
            during = asyncio.run(_during_outage(daemon))
            trips = metric(daemon.http, "bustrail_breaker_trips_total", breaker="store")
            proxy.restore()

            # Once the breaker lets a probe through, results are claim checks again.
            wait_until(lambda: readyz(daemon.http)[0] == 200, "the breaker to let probes in")
            after = asyncio.run(_after_outage(daemon))
            state = metric(daemon.http, "bustrail_breaker_state", breaker="store", state="closed")

            def settled() -> bool:  # the records spooled during the outage are written
                daemon.runtime.audit.flush()
                stats = daemon.runtime.audit.stats()
                return stats.spooled == 0 and stats.queued == 0

            wait_until(settled, "the audit spool to drain")
    finally:
        proxy.close()

    # Fallback: the whole result inline, exactly the upstream's bytes (checksum verified).
    assert during["text"][:2] == ("fallback", text_of(FITS).encode())
    assert during["rows"][:2] == ("fallback", json_rows(FITS).encode())
    status, body = during["readyz"]
    assert status == 503 and body["checks"]["breaker"] == "open"
    assert body["checks"]["upstreams"]["up"]["state"] == "ready"
    assert trips == 1
    refused = during["refused"]
    assert refused.code == Code.RESULT_TOO_LARGE
    assert refused.data["error_kind"] == "fallback_oversize"
    assert "the store is unavailable (breaker open)" in refused.message
    assert f"over this client's limit of {CLIENT_CAP:,} bytes" in refused.message
    assert during["after"] == "up"

    assert [(route, data) for route, _, data in after] == [("store", text_of(FITS).encode())] * 2
    assert state == 1  # both probes succeeded

    rows = audit_rows(pg_url)
    outcomes = Counter(
        (r["tool"], str(r["route"]), str(r["status"]), r["error_kind"], r["size"]) for r in rows
    )
    text_size, too_big_size = len(text_of(FITS).encode()), len(text_of(TOO_BIG).encode())
    assert outcomes == {
        ("up.text", "fallback", "delivered", None, text_size): 1,
        ("up.rows", "fallback", "delivered", None, len(json_rows(FITS).encode())): 1,
        ("up.text", "fallback", "failed", "fallback_oversize", too_big_size): 1,
        ("up.text", "store", "fetched", None, text_size): 2,
        ("up.whoami", "inline", "delivered", None, 2): 1,
    }
    by_id = {str(r["id"]): r for r in rows}
    assert (
        by_id[during["text"][2]]["checksum"] == hashlib.sha256(text_of(FITS).encode()).hexdigest()
    )
    assert "breaker open" in next(r["error"] for r in rows if r["error_kind"])
