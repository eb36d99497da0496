"""A daemon killed (SIGKILL) with audit records in its spool loses none and doubles none.

The daemon runs as a subprocess reaching PostgreSQL through a TCP proxy. With the proxy
cut, its calls are answered (inline, and fallback for large results) while their audit
records go to the spool; ``/metrics`` shows them arrive. Then the process is killed:
no shutdown, no flush. The spool files are read as they are on disk, the database is
restored, and a new daemon on the same spool replays them before it takes a call.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bus.audit import Spool
from bus.db import Database
from bus.records import breaker_events, transactions
from daemon.client import Client
from daemon.tools import generate_json
from tests.helpers.daemon import DaemonProcess, daemon_env, daemon_process
from tests.helpers.tcpproxy import TCPProxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WAIT = 60.0
DURING = 150  # echo calls answered while the database is down
LARGE = 6  # large results while it is down: they trip the breaker (threshold 5)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({WAIT:g}s) for: {what}")
        time.sleep(0.05)


def metric(daemon: DaemonProcess, name: str) -> float:
    text = httpx.get(f"{daemon.http}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def spooled(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    spool = Spool(directory)
    return [item for segment in spool.segments() for item in spool.read(segment)]


def audit_rows(db: Database) -> tuple[Counter[str], dict[str, str], Counter[str]]:
    """Rows per transaction id, each id's status, and rows per breaker event id."""
    with db.begin() as conn:
        tx = conn.execute(sa.select(transactions.c.id, transactions.c.status)).all()
        events = conn.execute(sa.select(breaker_events.c.id)).scalars().all()
    return (
        Counter(str(r.id) for r in tx),
        {str(r.id): r.status.value for r in tx},
        Counter(str(e) for e in events),
    )


async def calls_while_down(url: str) -> list[str]:
    """Answered calls while the store is down; their transaction ids."""
    async with await Client.connect(url) as client:
        ids = []
        for i in range(LARGE):  # one by one: the breaker sees each failure in turn
            result = await client.call("generate", {"size": 80_000, "seed": i})
            assert result.route == "fallback"
            assert result.inline_bytes() == generate_json(80_000, i).encode()
            ids.append(str(result.transaction_id))
        results = await asyncio.gather(
            *(client.call("echo", {"text": f"while down {i}"}) for i in range(DURING))
        )
        for i, result in enumerate(results):
            assert result.route == "inline" and result.text == f"while down {i}"
            ids.append(str(result.transaction_id))
        return ids


async def calls_while_up(url: str, count: int) -> list[str]:
    async with await Client.connect(url) as client:
        results = await asyncio.gather(
            *(client.call("echo", {"text": f"while up {i}"}) for i in range(count))
        )
        return [str(r.transaction_id) for r in results]


def test_records_in_the_spool_survive_sigkill_exactly_once(
    pg_url: str, proxied_pg_url: str, pg_proxy: TCPProxy, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    env = daemon_env(
        tmp_path,
        DATABASE_URL=proxied_pg_url,
        MESSAGE_BUS_THRESHOLD_BYTES=64 * 1024,
        BUSTRAIL_AUDIT_FLUSH_SECONDS=0.05,
        CIRCUIT_BREAKER_THRESHOLD=5,
    )
    db = Database(pg_url, pool_size=1)
    try:
        with daemon_process(env) as first:
            before = asyncio.run(calls_while_up(first.url, 20))
            wait_until(
                lambda: [audit_rows(db)[1].get(tx) for tx in before] == ["delivered"] * 20,
                "the first calls' outcomes to be written",
            )

            pg_proxy.cut()
            during = asyncio.run(calls_while_down(first.url))
            # Two records per call (pending, then its outcome) and the breaker's trip.
            expected = 2 * len(during) + 1
            wait_until(
                lambda: (
                    metric(first, "bustrail_audit_spool_records") >= expected
                    and metric(first, "bustrail_audit_queue_records") == 0
                ),
                f"{expected} records in the spool",
            )
            reported = metric(first, "bustrail_audit_spool_records")
            first.kill()  # SIGKILL: no flush, no goodbye
            log = first.log_text()

        on_disk = spooled(spool_dir)
        assert len(on_disk) == reported, log
        spooled_tx = Counter(str(r["id"]) for k, r in on_disk if k == "tx")
        spooled_events = {str(r["id"]): r for k, r in on_disk if k == "breaker"}
        assert set(spooled_tx) == set(during)
        assert [(r["from_state"], r["to_state"]) for r in spooled_events.values()] == [
            ("closed", "open")
        ]
        assert not set(during) & set(audit_rows(db)[0])  # none reached the database
        saved = tmp_path / "saved-segments"
        shutil.copytree(spool_dir, saved)

        pg_proxy.restore()
        with daemon_process(env) as second:  # replays the spool before it listens
            assert Spool(spool_dir).segments() == []
            assert metric(second, "bustrail_audit_spool_records") == 0
            after = asyncio.run(calls_while_up(second.url, 20))
            wait_until(
                lambda: set(after) <= set(audit_rows(db)[0]), "the new daemon's calls written"
            )

        rows, status, events = audit_rows(db)
        assert [tx for tx, n in rows.items() if n > 1] == []
        assert set(rows) == set(before) | set(during) | set(after)
        assert {status[tx] for tx in during} == {"delivered"}
        assert set(spooled_events) <= set(events) and max(events.values()) == 1

        # A crash between replaying a segment and deleting it: the same segments again.
        for segment in Spool(saved).segments():
            shutil.copy(segment, spool_dir / segment.name)
        with daemon_process(env) as third:
            assert Spool(spool_dir).segments() == []
            assert third.proc.poll() is None
        again, status_again, events_again = audit_rows(db)
        assert again == rows and status_again == status and events_again == events
    finally:
        db.dispose()
