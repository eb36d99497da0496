"""Tests for bus.audit: batching, coalescing, the spool across real outages, stats, close.

Outages are real: the writer reaches PostgreSQL through a TCP proxy the test cuts
(connections refused and reset), never through a mocked exception.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bus.audit import GROUP_BATCHES, AuditWriter, Spool
from bus.db import Database, new_transaction_id, normalize_url
from bus.errors import BustrailError
from bus.models import Compression, Route, Status, Transaction
from bus.records import (
    breaker_events,
    row_to_transaction,
    transaction_to_row,
    transactions,
)
from tests.helpers.tcpproxy import TCPProxy

# A generous bound for waiting on the writer thread; never a performance claim.
WAIT = 30.0


# -- helpers ---------------------------------------------------------------------------
def tx_row(
    status: Status = Status.PENDING,
    *,
    tx: tuple[uuid.UUID, Any] | None = None,
    tenant: str = "acme",
    **values: Any,
) -> dict[str, Any]:
    """A full transaction row, as the message bus submits one."""
    tx_id, created_at = tx or new_transaction_id()
    record = Transaction(
        id=tx_id,
        created_at=created_at,
        tenant=tenant,
        session_id="s-1",
        request_id="7",
        tool="echo",
        route=Route.INLINE,
        status=status,
        compression=Compression.NONE,
        chunk_count=0,
        fetch_count=0,
    )
    for name, value in values.items():
        setattr(record, name, value)
    return transaction_to_row(record)


def final_row(tx: tuple[uuid.UUID, Any], **values: Any) -> dict[str, Any]:
    return tx_row(Status.DELIVERED, tx=tx, size=5, checksum="ab" * 32, **values)


def failed_row(tx: tuple[uuid.UUID, Any]) -> dict[str, Any]:
    return tx_row(Status.FAILED, tx=tx, error_kind="send_failed", error="connection closed")


def breaker_row(to_state: str = "open") -> dict[str, Any]:
    event_id, at = new_transaction_id()
    return {
        "id": event_id,
        "at": at,
        "breaker": "store",
        "daemon_id": "test:1",
        "from_state": "closed",
        "to_state": to_state,
        "reason": "consecutive_failures",
        "failure_rate": 1.0,
        "consecutive_failures": 3,
    }


def stored(db: Database) -> dict[uuid.UUID, Transaction]:
    """Every transaction row in the database, by id (read as the owner: no RLS)."""
    with db.begin() as conn:
        rows = conn.execute(sa.select(transactions)).mappings().all()
    found = [row_to_transaction(r) for r in rows]
    by_id = {t.id: t for t in found}
    assert len(by_id) == len(found), "one transaction id has several rows"
    return by_id


def event_ids(db: Database) -> list[uuid.UUID]:
    with db.begin() as conn:
        return [uuid.UUID(str(v)) for v in conn.execute(sa.select(breaker_events.c.id)).scalars()]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({timeout:g}s) for: {what}")
        time.sleep(0.02)


def drain(writer: AuditWriter) -> None:
    """Everything queued is written: the queue is empty and so is the spool."""
    assert writer.flush(WAIT)
    wait_until(lambda: writer.stats().spooled == 0, "the spool to be replayed")
    assert writer.flush(WAIT)


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[Callable[..., AuditWriter]]:
    """Make started writers (spool under tmp_path by default); all closed afterwards."""
    made: list[AuditWriter] = []

    def make(
        db: Database, *, spool: Path | None = None, start: bool = True, **kw: Any
    ) -> AuditWriter:
        options: dict[str, Any] = {"batch_size": 500, "flush_seconds": 0.05, "retry_seconds": 0.1}
        options.update(kw)
        writer = AuditWriter(db, spool or tmp_path / "spool", **options)
        made.append(writer)
        if start:
            writer.start()
        return writer

    yield make
    for writer in made:
        writer.close(timeout=5)


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TCPProxy]:
    """A TCP proxy in front of the test PostgreSQL server, for real outages."""
    url = sa.engine.make_url(normalize_url(pg_url))
    p = TCPProxy(url.host or "127.0.0.1", url.port or 5432)
    yield p
    p.close()


@pytest.fixture
def proxied_db(pg_url: str, proxy: TCPProxy) -> Iterator[Database]:
    """The test database, reached through ``proxy``."""
    url = sa.engine.make_url(normalize_url(pg_url)).set(host="127.0.0.1", port=proxy.port)
    database = Database(url.render_as_string(hide_password=False), pool_size=2)
    yield database
    database.dispose()


@pytest.fixture
def direct_db(pg_url: str) -> Iterator[Database]:
    """The same test database, reached directly (to look while the proxy is cut)."""
    database = Database(pg_url, pool_size=2)
    yield database
    database.dispose()


# -- batching --------------------------------------------------------------------------
def test_batches_flush_by_count(db: Database, writers: Callable[..., AuditWriter]) -> None:
    writer = writers(db, batch_size=10, flush_seconds=3600)
    full = [tx_row(Status.DELIVERED) for _ in range(10)]
    for row in full:
        writer.submit(row)
    # A full batch goes at once; the timer (an hour) never fires in this test.
    wait_until(lambda: len(stored(db)) == 10, "a full batch of 10 to be written")
    partial = [tx_row(Status.DELIVERED) for _ in range(5)]
    for row in partial:
        writer.submit(row)
    wait_until(lambda: writer.stats().queued == 5, "the previous batch to be done")
    assert writer.stats().written_total == 10  # a partial batch waits for the timer
    assert set(stored(db)) == {r["id"] for r in full}
    assert writer.flush(WAIT)
    assert set(stored(db)) == {r["id"] for r in full + partial}


def test_a_writer_behind_takes_several_batches_in_one_write(
    db: Database, writers: Callable[..., AuditWriter], tmp_path: Path
) -> None:
    writer = writers(db, batch_size=10, flush_seconds=3600, start=False)
    rows = [tx_row(Status.DELIVERED) for _ in range(GROUP_BATCHES * 10 + 5)]
    for row in rows:  # queued before the thread runs: it is behind from the start
        writer.submit(row)
    writer.start()
    wait_until(lambda: writer.stats().queued == 5, "one write of the most it may take")
    assert writer.stats().written_total == GROUP_BATCHES * 10
    assert writer.flush(WAIT)
    assert set(stored(db)) == {r["id"] for r in rows}


def test_batches_flush_by_time(db: Database, writers: Callable[..., AuditWriter]) -> None:
    writer = writers(db, batch_size=1000, flush_seconds=0.05)
    rows = [tx_row(Status.DELIVERED) for _ in range(3)]
    for row in rows:
        writer.submit(row)
    # Far from a full batch: only the timer can write these (no flush() called).
    wait_until(lambda: len(stored(db)) == 3, "a partial batch to be written by the timer")
    assert writer.stats().written_total == 3
    assert writer.stats().queued == 0


def test_flush_writes_a_partial_batch_without_waiting_for_the_timer(
    db: Database, writers: Callable[..., AuditWriter]
) -> None:
    writer = writers(db, batch_size=1000, flush_seconds=3600)
    rows = [tx_row(Status.DELIVERED) for _ in range(3)]
    for row in rows:
        writer.submit(row)
    assert writer.flush(timeout=20), "flush() gave up with records still queued"
    assert set(stored(db)) == {r["id"] for r in rows}


def test_several_records_of_one_transaction_coalesce_to_the_last(
    db: Database, writers: Callable[..., AuditWriter]
) -> None:
    writer = writers(db, batch_size=1000, flush_seconds=3600)
    a, b = new_transaction_id(), new_transaction_id()
    writer.submit(tx_row(tx=a))
    writer.submit(tx_row(tx=b, tenant="globex"))
    writer.submit(final_row(a))
    writer.submit(tx_row(Status.FAILED, tx=b, tenant="globex", error_kind="tool_error", error="x"))
    assert writer.flush(WAIT)
    rows = stored(db)
    assert set(rows) == {a[0], b[0]}
    assert rows[a[0]].status is Status.DELIVERED and rows[a[0]].checksum == "ab" * 32
    assert (rows[b[0]].status, rows[b[0]].error_kind, rows[b[0]].tenant) == (
        Status.FAILED,
        "tool_error",
        "globex",
    )
    stats = writer.stats()
    assert (stats.written_total, stats.spooled_total, stats.write_failures_total) == (4, 0, 0)


def test_a_late_pending_never_overwrites_a_final_status(
    db: Database, writers: Callable[..., AuditWriter]
) -> None:
    writer = writers(db, batch_size=1000, flush_seconds=3600)
    earlier, same_batch = new_transaction_id(), new_transaction_id()
    # In separate batches: the final one is already in the database.
    writer.submit(final_row(earlier))
    assert writer.flush(WAIT)
    writer.submit(tx_row(tx=earlier))
    # In one batch, the final record ahead of a late pending one.
    writer.submit(final_row(same_batch))
    writer.submit(tx_row(tx=same_batch))
    assert writer.flush(WAIT)
    rows = stored(db)
    assert rows[earlier[0]].status is Status.DELIVERED
    assert rows[same_batch[0]].status is Status.DELIVERED


def test_text_the_database_cannot_hold_does_not_block_the_writer(
    db: Database, writers: Callable[..., AuditWriter]
) -> None:
    # A client chooses its request ids and a tool's error text: NUL bytes (PostgreSQL
    # text refuses them) and lone surrogates (not encodable as UTF-8) both come in.
    writer = writers(db, batch_size=1000, flush_seconds=3600)
    odd = tx_row(Status.FAILED, request_id="a\udc80b", error_kind="tool_error", error="bad\x00news")
    writer.submit(odd)
    assert writer.flush(WAIT)
    after = tx_row(Status.DELIVERED)
    writer.submit(after)
    assert writer.flush(WAIT)
    stats = writer.stats()
    assert (stats.spooled, stats.write_failures_total, stats.database_up) == (0, 0, True)
    rows = stored(db)
    assert set(rows) == {odd["id"], after["id"]}
    kept = rows[odd["id"]]
    assert kept.error is not None and kept.error.startswith("bad") and kept.error.endswith("news")
    assert kept.request_id is not None and kept.request_id[0] == "a" and kept.request_id[-1] == "b"


# -- close -----------------------------------------------------------------------------
def test_close_flushes_then_refuses_new_records(
    db: Database, writers: Callable[..., AuditWriter]
) -> None:
    writer = writers(db, batch_size=1000, flush_seconds=3600)
    rows = [tx_row(Status.DELIVERED) for _ in range(10)]
    for row in rows:
        writer.submit(row)
    writer.close(timeout=20)
    assert set(stored(db)) == {r["id"] for r in rows}
    assert writer.stats().queued == 0 and writer.stats().spooled == 0
    with pytest.raises(BustrailError, match="closed"):
        writer.submit(tx_row())


# -- the spool -------------------------------------------------------------------------
def test_replaying_the_same_segment_twice_is_harmless(
    db: Database, writers: Callable[..., AuditWriter], tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    a, b = new_transaction_id(), new_transaction_id()
    events = [breaker_row("open"), breaker_row("half_open")]
    Spool(spool_dir).append(
        [("tx", tx_row(tx=a)), ("tx", final_row(a)), ("tx", final_row(b))]
        + [("breaker", e) for e in events]
    )
    (segment,) = Spool(spool_dir).segments()
    # A crash between writing a segment and deleting it: the same records come back.
    shutil.copy(segment, spool_dir / segment.name.replace("segment-", "segment-9"))
    writer = writers(db, spool=spool_dir, start=False)
    assert writer.stats().spooled == 10
    writer.start()  # replays both copies before taking new records
    assert writer.stats().spooled == 0
    assert Spool(spool_dir).segments() == []
    rows = stored(db)
    assert set(rows) == {a[0], b[0]}
    assert rows[a[0]].status is Status.DELIVERED
    assert sorted(event_ids(db)) == sorted(e["id"] for e in events)


def test_a_spool_written_before_daemon_id_existed_replays(
    db: Database, writers: Callable[..., AuditWriter], tmp_path: Path
) -> None:
    """Rows spooled by a bustrail older than schema 3 lack daemon_id: they are written
    with it NULL (PostgreSQL's COPY and SQLite's upsert alike), not retried forever."""
    spool_dir = tmp_path / "spool"
    old, new = new_transaction_id(), new_transaction_id()
    older = {k: v for k, v in final_row(old).items() if k != "daemon_id"}
    Spool(spool_dir).append([("tx", older), ("tx", final_row(new, daemon_id="host:7"))])
    writer = writers(db, spool=spool_dir)
    drain(writer)
    rows = stored(db)
    assert {tx_id: row.daemon_id for tx_id, row in rows.items()} == {old[0]: None, new[0]: "host:7"}
    assert rows[old[0]].status is Status.DELIVERED and writer.stats().rejected_total == 0


def test_an_unreadable_spool_line_names_the_file(
    db: Database, writers: Callable[..., AuditWriter], tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    good = tx_row(Status.DELIVERED)
    Spool(spool_dir).append([("tx", good)])
    (first,) = Spool(spool_dir).segments()
    bad = spool_dir / first.name.replace("segment-", "segment-9")
    bad.write_text(first.read_text() + '{"k": "tx", "r": {"id": \n', encoding="utf-8")
    writer = writers(db, spool=spool_dir, start=False)
    with pytest.raises(BustrailError) as caught:
        writer.start()
    message = str(caught.value)
    assert str(bad) in message and "line 2" in message
    assert set(stored(db)) == {good["id"]}  # the good segment, oldest, went first
    assert bad.exists()  # nothing thrown away


def test_a_spool_segment_that_is_not_utf8_names_the_file(
    db: Database, writers: Callable[..., AuditWriter], tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    Spool(spool_dir).append([("tx", tx_row(Status.DELIVERED))])
    (segment,) = Spool(spool_dir).segments()
    segment.write_bytes(segment.read_bytes() + b'{"k": "tx", "r": "\xff\xfe"}\n')
    with pytest.raises(BustrailError) as caught:
        writer = writers(db, spool=spool_dir, start=False)
        writer.start()
    assert str(segment) in str(caught.value) and "line 2" in str(caught.value)


# -- real outages (PostgreSQL through a proxy the test cuts) ---------------------------
@pytest.mark.postgres
def test_records_written_during_an_outage_arrive_after_it_in_order(
    proxied_db: Database,
    direct_db: Database,
    proxy: TCPProxy,
    writers: Callable[..., AuditWriter],
) -> None:
    writer = writers(proxied_db, batch_size=1000, flush_seconds=3600, retry_seconds=0.05)
    spooled_then_final = new_transaction_id()  # pending -> spool, final after recovery
    both_spooled = new_transaction_id()  # pending and final both spooled, separate batches
    written_then_spooled = new_transaction_id()  # pending written, final spooled
    final_then_late_pending = new_transaction_id()  # final spooled, pending after recovery
    # Two outcomes of one transaction: the later must win, so the spool's order counts.
    second_outcome_spooled = new_transaction_id()  # both outcomes in separate segments
    second_outcome_after = new_transaction_id()  # first spooled, second after recovery

    writer.submit(tx_row(tx=written_then_spooled))
    assert writer.flush(WAIT)
    assert stored(direct_db)[written_then_spooled[0]].status is Status.PENDING

    proxy.cut()
    writer.submit(tx_row(tx=spooled_then_final))
    writer.submit(tx_row(tx=both_spooled))
    writer.submit(failed_row(second_outcome_spooled))
    writer.submit(failed_row(second_outcome_after))
    assert writer.flush(WAIT)
    writer.submit(final_row(both_spooled))
    writer.submit(final_row(written_then_spooled))
    writer.submit(final_row(final_then_late_pending))
    writer.submit(final_row(second_outcome_spooled))
    assert writer.flush(WAIT)
    stats = writer.stats()
    assert stats.spooled == 8 and not stats.database_up
    assert len(Spool(writer.spool.directory).segments()) == 2
    assert stored(direct_db)[written_then_spooled[0]].status is Status.PENDING

    proxy.restore()
    writer.submit(final_row(spooled_then_final))
    writer.submit(tx_row(tx=final_then_late_pending))
    writer.submit(final_row(second_outcome_after))
    drain(writer)
    rows = stored(direct_db)
    for tx in (
        spooled_then_final,
        both_spooled,
        written_then_spooled,
        final_then_late_pending,
        second_outcome_spooled,
        second_outcome_after,
    ):
        assert (rows[tx[0]].status, rows[tx[0]].error_kind) == (Status.DELIVERED, None), tx
    assert len(rows) == 6
    assert writer.stats().database_up


@pytest.mark.postgres
def test_the_spool_survives_a_writer_restart(
    proxied_db: Database,
    direct_db: Database,
    proxy: TCPProxy,
    writers: Callable[..., AuditWriter],
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    first = writers(proxied_db, spool=spool_dir, batch_size=8, flush_seconds=3600)
    proxy.cut()
    rows = [tx_row(Status.DELIVERED) for _ in range(30)]
    events = [breaker_row("open")]
    for row in rows:
        first.submit(row)
    first.submit_breaker_event(events[0])
    first.close(timeout=WAIT)  # the database is still down: everything is on disk
    assert first.stats().spooled == 31
    on_disk = [item for seg in Spool(spool_dir).segments() for item in Spool(spool_dir).read(seg)]
    assert sorted(str(r["id"]) for _k, r in on_disk) == sorted(
        str(r["id"]) for r in [*rows, *events]
    )
    assert stored(direct_db) == {}

    # A new writer while the database is still down: it starts, keeps the spool.
    second = writers(proxied_db, spool=spool_dir, start=False)
    assert second.stats().spooled == 31
    second.start()
    assert second.stats().spooled == 31

    proxy.restore()
    drain(second)
    assert set(stored(direct_db)) == {r["id"] for r in rows}
    assert event_ids(direct_db) == [events[0]["id"]]
    assert Spool(spool_dir).segments() == []


@pytest.mark.postgres
def test_stats_count_queued_spooled_and_failed_writes(
    proxied_db: Database,
    direct_db: Database,
    proxy: TCPProxy,
    writers: Callable[..., AuditWriter],
) -> None:
    writer = writers(proxied_db, batch_size=1000, flush_seconds=3600, retry_seconds=0.05)
    stats = writer.stats()
    assert (stats.queued, stats.spooled, stats.written_total) == (0, 0, 0)
    assert (stats.spooled_total, stats.write_failures_total, stats.database_up) == (0, 0, True)

    for _ in range(3):
        writer.submit(tx_row(Status.DELIVERED))
    assert writer.stats().queued == 3
    assert writer.flush(WAIT)
    stats = writer.stats()
    assert (stats.queued, stats.written_total, stats.write_failures_total) == (0, 3, 0)

    proxy.cut()
    for _ in range(7):
        writer.submit(tx_row(Status.DELIVERED))
    writer.submit_breaker_event(breaker_row())
    assert writer.flush(WAIT)
    stats = writer.stats()
    assert (stats.queued, stats.spooled, stats.spooled_total) == (0, 8, 8)
    assert stats.write_failures_total == 1  # one batch, refused once
    assert not stats.database_up
    assert stats.written_total == 3

    proxy.restore()
    drain(writer)
    stats = writer.stats()
    assert (stats.queued, stats.spooled, stats.spooled_total) == (0, 0, 8)
    assert stats.written_total == 11 and stats.database_up
    assert len(stored(direct_db)) == 10 and len(event_ids(direct_db)) == 1


def test_spool_segments_hold_plain_json_lines(tmp_path: Path) -> None:
    """The on-disk format operators may read: one {"k", "r"} object per line."""
    spool = Spool(tmp_path)
    row = tx_row(Status.DELIVERED)
    spool.append([("tx", row)])
    (segment,) = spool.segments()
    (line,) = segment.read_text(encoding="utf-8").splitlines()
    item = json.loads(line)
    assert item["k"] == "tx" and item["r"]["id"] == str(row["id"])
    assert item["r"]["status"] == "delivered"
    assert spool.read(segment) == [("tx", row)]


@pytest.mark.postgres
def test_a_statement_the_server_cancels_counts_as_a_failed_write(
    pg_url: str, writers: Callable[..., AuditWriter]
) -> None:
    """The PostgreSQL write path talks to psycopg directly (COPY); a server error there
    must be a StoreError like any other, so the writer counts it and retries."""
    db, admin = Database(pg_url, pool_size=1), Database(pg_url, pool_size=1)
    try:
        # The timer writes the record: this thread is busy holding the lock.
        writer = writers(db, batch_size=1000, flush_seconds=0.05, retry_seconds=0.05)
        row = tx_row(Status.DELIVERED)
        with admin.engine.connect() as locker:
            locker.execute(sa.text("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE"))
            writer.submit(row)
            me = locker.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            blocked = sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> :me"
            )
            # Autocommit: in one transaction pg_stat_activity would never change.
            with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
                wait_until(
                    lambda: watcher.execute(blocked, {"me": me}).first() is not None,
                    "the writer to wait on the lock",
                )
                pid = watcher.execute(blocked, {"me": me}).scalar()
                watcher.execute(sa.text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
            assert writer.flush(WAIT)
            stats = writer.stats()
            assert (stats.spooled, stats.write_failures_total, stats.database_up) == (1, 1, False)
            locker.rollback()
        drain(writer)
        assert set(stored(admin)) == {row["id"]}
    finally:
        db.dispose()
        admin.dispose()


# -- records the database refuses; a spool that cannot be written ------------------------
def test_a_record_the_database_refuses_is_set_aside_and_the_rest_written(
    db: Database, writers: Callable[..., AuditWriter], tmp_path: Path
) -> None:
    writer = writers(db, batch_size=1000, flush_seconds=3600)
    good = [tx_row(Status.DELIVERED) for _ in range(15)]
    poison = tx_row(Status.DELIVERED, size=2**70)  # no database column holds it
    for row in [*good[:10], poison, *good[10:]]:
        writer.submit(row)
    drain(writer)

    assert set(stored(db)) == {row["id"] for row in good}
    stats = writer.stats()
    assert (stats.rejected_total, stats.spooled, stats.queued) == (1, 0, 0)
    assert stats.written_total == 15 and stats.database_up
    (line,) = (tmp_path / "spool" / "rejected.jsonl").read_text().splitlines()
    set_aside = json.loads(line)
    assert set_aside["k"] == "tx" and set_aside["r"]["id"] == str(poison["id"])
    assert set_aside["r"]["size"] == 2**70
    assert set_aside["error"]  # the database's (or its driver's) own words

    # The writer goes on: nothing blocks behind the refused record.
    after = tx_row(Status.DELIVERED)
    writer.submit(after)
    drain(writer)
    assert after["id"] in stored(db)


@pytest.mark.postgres
def test_a_spool_that_cannot_be_written_holds_the_records_and_loses_none(
    proxied_db: Database,
    direct_db: Database,
    proxy: TCPProxy,
    writers: Callable[..., AuditWriter],
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    writer = writers(proxied_db, spool=spool, batch_size=1000, flush_seconds=0.05,
                     retry_seconds=0.05)  # fmt: skip
    proxy.cut()
    # The disk refuses too: where the spool was there is now a file (root ignores
    # permissions, so a read-only directory would not do).
    shutil.rmtree(spool)
    spool.write_text("not a directory")
    rows = [tx_row(Status.DELIVERED) for _ in range(6)]
    for row in rows:
        writer.submit(row)
    wait_until(lambda: not writer.stats().spool_writable, "the spool write to fail")
    stats = writer.stats()
    assert stats.queued == 6 and stats.spooled == 0 and not stats.database_up
    assert not writer.flush(0.3)  # not written, not spooled: flush says so

    spool.unlink()
    spool.mkdir()
    wait_until(lambda: writer.stats().spooled == 6, "the held records to reach the spool")
    assert writer.stats().spool_writable and writer.stats().queued == 0

    proxy.restore()
    drain(writer)
    assert set(stored(direct_db)) == {row["id"] for row in rows}


def test_the_sqlite_fast_path_stores_exactly_what_sqlalchemy_would(tmp_path: Path) -> None:
    """Full rows go to SQLite through the driver's executemany with SQLAlchemy's bind
    processors; the stored text of every column must be what ``conn.execute`` stores."""
    from bus import records
    from bus.schema import upgrade

    tx = new_transaction_id()
    rows = [
        tx_row(Status.PENDING, tx=tx),
        final_row(tx, tool_ms=1.25, trace_id="a" * 32, span_id="b" * 16),
        failed_row(new_transaction_id()),
        tx_row(
            Status.STORED,
            route=Route.STORE,
            compression=Compression.ZSTD,
            size=2**40,
            stored_size=7,
            chunk_count=1,
            store_ms=0.5,
            request_id="ü\x00x",
            error_kind=None,
            mime_type="application/json",
        ),
    ]
    assert all(set(row) == set(records.TRANSACTION_COLUMNS) for row in rows)  # full rows
    stored_text = []
    for fast in (True, False):
        db = Database(f"sqlite:///{tmp_path / f'fast-{fast}.db'}")
        try:
            upgrade(db)
            if fast:
                records.upsert_transactions(db, rows)
            else:
                with db.begin() as conn:  # what the fast path replaces
                    for row in rows:
                        conn.execute(records._SQLITE_UPSERT, [records._storable(row)])
            with db.connect() as conn:
                stored_text.append(
                    conn.execute(sa.text("SELECT * FROM transactions ORDER BY id")).all()
                )
        finally:
            db.dispose()
    assert len(stored_text[0]) == 3
    assert stored_text[0] == stored_text[1]
