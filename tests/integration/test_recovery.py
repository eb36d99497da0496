"""Crash recovery at start-up: what a dead daemon left ``pending`` fails as ``abandoned``.

A daemon is killed (SIGKILL) while a call is running, so its transaction stays
``pending``; older ones, as an earlier crash left them, are written beside it. Each
new daemon fails, before it listens, the pending transactions older than
BUSTRAIL_ABANDON_PENDING_SECONDS (their stored chunks go too), and leaves younger ones
and finished ones alone. On both backends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bus.db import Database, new_transaction_id, utcnow
from bus.models import Compression, Route, Status, Transaction
from bus.records import row_to_transaction, transaction_to_row, transactions, upsert_transactions
from bus.store import chunks
from daemon.client import Client, ClientError
from tests.helpers.daemon import DaemonProcess, daemon_env, daemon_process

pytestmark = pytest.mark.slow

WAIT = 60.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({WAIT:g}s) for: {what}")
        time.sleep(0.05)


def rows(db: Database) -> dict[uuid.UUID, Transaction]:
    with db.begin() as conn:
        found = conn.execute(sa.select(transactions)).mappings().all()
    return {t.id: t for t in map(row_to_transaction, found)}


def chunk_count(db: Database, tx_id: uuid.UUID) -> int:
    with db.begin() as conn:
        query = sa.select(sa.func.count()).where(chunks.c.transaction_id == tx_id)
        return int(conn.execute(query).scalar_one())


def history(db: Database, minutes_ago: float) -> dict[str, uuid.UUID]:
    """What an earlier crash left, ``minutes_ago``: two pending rows and a finished one."""
    made = {}
    when = utcnow() - timedelta(minutes=minutes_ago)
    records = []
    for name, route, status in (
        ("pending_inline", Route.INLINE, Status.PENDING),
        ("pending_store", Route.STORE, Status.PENDING),
        ("delivered", Route.INLINE, Status.DELIVERED),
    ):
        tx_id, created_at = new_transaction_id(when)
        made[name] = tx_id
        records.append(
            transaction_to_row(
                Transaction(
                    id=tx_id,
                    created_at=created_at,
                    tenant="default",
                    tool="generate",
                    route=route,
                    status=status,
                    compression=Compression.NONE,
                    chunk_count=0,
                    fetch_count=0,
                )
            )
        )
    upsert_transactions(db, records)
    with db.begin("default") as conn:  # a store that died after its first chunk
        conn.execute(
            chunks.insert(),
            {
                "transaction_id": made["pending_store"],
                "seq": 0,
                "tenant": "default",
                "checksum": "00" * 32,
                "data": b"half a payload",
            },
        )
    return made


async def crash_during_a_call(daemon: DaemonProcess, db: Database) -> uuid.UUID:
    """Kill the daemon while a tool runs; return the transaction it left pending."""
    async with await Client.connect(daemon.url) as client:
        call = asyncio.ensure_future(client.call("sleep", {"seconds": 60}))

        def running() -> list[uuid.UUID]:
            return [t.id for t in rows(db).values() if t.tool == "sleep"]

        await asyncio.to_thread(wait_until, lambda: bool(running()), "the call's pending row")
        daemon.kill()
        with pytest.raises(ClientError):
            await call
        (tx_id,) = running()
        return tx_id


def test_startup_abandons_old_pending_transactions_and_leaves_young_ones(
    db_url: str, tmp_path: Path
) -> None:
    settings = {"DATABASE_URL": db_url, "BUSTRAIL_AUDIT_FLUSH_SECONDS": 0.05}
    db = Database(db_url, pool_size=1)
    try:
        old = history(db, minutes_ago=20)
        with daemon_process(
            daemon_env(tmp_path, BUSTRAIL_ABANDON_PENDING_SECONDS=3600, **settings)
        ) as first:
            crashed = asyncio.run(crash_during_a_call(first, db))
        assert rows(db)[crashed].status is Status.PENDING

        # Ten minutes: the 20-minute-old rows are abandoned, the crash just now is not.
        with daemon_process(daemon_env(tmp_path, BUSTRAIL_ABANDON_PENDING_SECONDS=600, **settings)):
            found = rows(db)  # start-up recovery is over once the daemon listens
        for name in ("pending_inline", "pending_store"):
            row = found[old[name]]
            assert (row.status, row.error_kind) == (Status.FAILED, "abandoned"), name
            assert row.error is not None and "left pending" in row.error
        assert chunk_count(db, old["pending_store"]) == 0
        assert (found[old["delivered"]].status, found[old["delivered"]].error_kind) == (
            Status.DELIVERED,
            None,
        )
        young = found[crashed]
        assert (young.status, young.error_kind, young.tool) == (Status.PENDING, None, "sleep")

        # One second: now the crashed call is old enough too.
        wait_until(lambda: utcnow() - young.created_at > timedelta(seconds=1.5), "1.5s to pass")
        with daemon_process(daemon_env(tmp_path, BUSTRAIL_ABANDON_PENDING_SECONDS=1, **settings)):
            found = rows(db)
        assert (found[crashed].status, found[crashed].error_kind) == (Status.FAILED, "abandoned")
        assert found[old["delivered"]].status is Status.DELIVERED
        assert len(found) == 4
    finally:
        db.dispose()
