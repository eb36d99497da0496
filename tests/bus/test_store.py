"""Tests for bus.store on SQLite and on a real PostgreSQL (the ``db`` fixture): payloads
in and out, fetch accounting, tenant scoping, limits, corruption, expiry, deletion and
crash recovery. Damage is done with plain SQL on the tables, never through the store."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bus.codec import Compression
from bus.db import Database, new_transaction_id
from bus.errors import (
    ChecksumMismatch,
    PayloadTooLarge,
    TransactionNotFound,
    TransactionUnavailable,
)
from bus.models import Route, Status, Transaction
from bus.records import transaction_to_row, upsert_transactions
from bus.store import PayloadStore, StoreConfig, TransactionContext

KIB = 1024
CHUNK = 64 * KIB
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def text_like(size: int, seed: int = 0) -> bytes:
    """Compressible, but not trivially (zstd gains ~3x): several chunks even compressed."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(400)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=512)) + b"\n"
    return bytes(out[:size])


def make_store(db: Database, clock: Clock | None = None, **config: Any) -> PayloadStore:
    config.setdefault("chunk_bytes", CHUNK)
    config.setdefault("ttl_seconds", 3600)
    return PayloadStore(db, StoreConfig(**config), clock=clock or Clock())


# -- plain SQL helpers (they bypass the store; on PostgreSQL the test role is superuser) --


def uid(db: Database, tx_id: uuid.UUID) -> Any:
    """How a UUID is bound in plain SQL: SQLite keeps 32 hex digits, PostgreSQL a uuid."""
    return tx_id if db.is_postgres else tx_id.hex


def sql(db: Database, query: str, **params: Any) -> list[Any]:
    with db.begin() as conn:
        result = conn.execute(sa.text(query), params)
        return list(result) if result.returns_rows else []


def chunk_rows(db: Database, tx_id: uuid.UUID) -> list[tuple[int, str, bytes, str]]:
    rows = sql(
        db,
        "SELECT seq, tenant, data, checksum FROM chunks WHERE transaction_id = :id ORDER BY seq",
        id=uid(db, tx_id),
    )
    return [(r[0], r[1], bytes(r[2]), r[3]) for r in rows]


def count(db: Database, table: str) -> int:
    return int(sql(db, f"SELECT count(*) FROM {table}")[0][0])


def ids_in(db: Database, table: str) -> set[uuid.UUID]:
    return {uuid.UUID(str(r[0])) for r in sql(db, f"SELECT id FROM {table}")}


def flip_one_byte(db: Database, tx_id: uuid.UUID, seq: int, at: int = 100) -> None:
    (data,) = sql(
        db,
        "SELECT data FROM chunks WHERE transaction_id = :id AND seq = :seq",
        id=uid(db, tx_id),
        seq=seq,
    )[0]
    damaged = bytearray(data)
    damaged[at] ^= 0x01
    sql(
        db,
        "UPDATE chunks SET data = :data WHERE transaction_id = :id AND seq = :seq",
        data=bytes(damaged),
        id=uid(db, tx_id),
        seq=seq,
    )


def status_of(store: PayloadStore, tenant: str, tx_id: uuid.UUID) -> Status:
    return store.info(tenant, tx_id).status


# -- put and read ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "payload"),
    [
        (Compression.ZSTD, text_like(1500 * KIB)),
        (Compression.GZIP, text_like(1500 * KIB, seed=1)),
        (Compression.NONE, random.Random(2).randbytes(300 * KIB + 5)),
    ],
    ids=["zstd", "gzip", "none"],
)
def test_put_and_read_bytes(db: Database, compression: Compression, payload: bytes) -> None:
    clock = Clock()
    store = make_store(db, clock, compression=compression)
    ctx = TransactionContext(tenant="acme", tool="generate", session_id="s1", request_id="7")
    record = store.put(ctx, payload)

    assert record.id == ctx.transaction_id
    assert (record.route, record.status, record.compression) == (
        Route.STORE,
        Status.STORED,
        compression,
    )
    assert record.size == len(payload)
    assert record.checksum == hashlib.sha256(payload).hexdigest()
    assert record.chunk_count > 2
    assert record.stored_at == clock.now
    assert record.expires_at == clock.now + timedelta(hours=1)
    if compression is not Compression.NONE:
        assert record.stored_size is not None and record.stored_size < len(payload)

    saved = store.info("acme", record.id)
    for name in ("status", "size", "stored_size", "checksum", "chunk_count", "compression"):
        assert getattr(saved, name) == getattr(record, name), name
    assert (saved.tool, saved.session_id, saved.request_id) == ("generate", "s1", "7")
    assert saved.expires_at == record.expires_at
    assert saved.fetch_count == 0 and saved.first_fetched_at is None

    rows = chunk_rows(db, record.id)
    assert [r[0] for r in rows] == list(range(record.chunk_count))
    assert all(r[1] == "acme" for r in rows)
    assert all(hashlib.sha256(r[2]).hexdigest() == r[3] for r in rows)
    assert all(len(r[2]) == CHUNK for r in rows[:-1])
    assert sum(len(r[2]) for r in rows) == record.stored_size

    assert b"".join(store.read("acme", record.id)) == payload
    assert store.open("acme", record.id).read_all() == payload


def test_put_and_read_an_iterator(db: Database) -> None:
    payload = text_like(1500 * KIB, seed=4)
    sizes = [1, 0, 5000, 65_536, 3, 200_001]

    def pieces() -> Iterator[bytes]:
        at = 0
        for n in sizes * 3:
            yield payload[at : at + n]
            at += n
        yield payload[at:]

    store = make_store(db)
    record = store.put(TransactionContext(tenant="acme"), pieces())
    assert record.size == len(payload)
    assert record.checksum == hashlib.sha256(payload).hexdigest()
    assert record.chunk_count > 2
    out = list(store.read("acme", record.id))
    assert all(len(p) <= 1024 * KIB for p in out)
    assert b"".join(out) == payload


def test_chunks_larger_than_a_read_slice(db: Database) -> None:
    """PostgreSQL reads a chunk in 1 MiB slices: chunks of 2.5 MiB, damage in the 3rd
    slice of the 2nd chunk."""
    chunk = 2 * 1024 * KIB + 512 * KIB
    store = make_store(db, compression=Compression.NONE, chunk_bytes=chunk)
    payload = random.Random(12).randbytes(2 * chunk + 1000)
    record = store.put(TransactionContext(tenant="acme"), payload)
    assert record.chunk_count == 3
    assert b"".join(store.read("acme", record.id)) == payload

    flip_one_byte(db, record.id, seq=1, at=2 * 1024 * KIB + 7)
    got = bytearray()
    with pytest.raises(ChecksumMismatch, match="chunk 1"):
        for piece in store.read("acme", record.id):
            got += piece
    assert bytes(got) == payload[:chunk]


def test_empty_payload(db: Database) -> None:
    store = make_store(db)
    record = store.put(TransactionContext(tenant="acme"), b"")
    assert (record.size, record.chunk_count, record.stored_size) == (0, 0, 0)
    assert record.compression is Compression.NONE
    assert b"".join(store.read("acme", record.id)) == b""
    assert store.info("acme", record.id).status is Status.FETCHED


def test_a_callers_transaction_id_is_kept(db: Database) -> None:
    store = make_store(db)
    tx_id, _ = new_transaction_id()
    record = store.put(TransactionContext(tenant="acme", transaction_id=tx_id), b"payload")
    assert record.id == tx_id
    assert store.open("acme", tx_id).read_all() == b"payload"

    other, _ = new_transaction_id(T0)
    wrong_time = TransactionContext(
        tenant="acme", transaction_id=other, created_at=T0 + timedelta(1)
    )
    with pytest.raises(ValueError, match="not the time inside"):
        store.put(wrong_time, b"x")


# -- fetch accounting ------------------------------------------------------------------


def test_a_full_read_counts_as_a_fetch(db: Database) -> None:
    clock = Clock()
    store = make_store(db, clock)
    payload = text_like(300 * KIB)
    record = store.put(TransactionContext(tenant="acme"), payload)

    partial = store.read("acme", record.id)
    next(partial)
    partial.close()  # abandoned mid-way: not a fetch
    assert store.open("acme", record.id, count_fetch=False).read_all() == payload  # not counted
    after = store.info("acme", record.id)
    assert (after.status, after.fetch_count, after.first_fetched_at) == (Status.STORED, 0, None)

    first = clock.now = T0 + timedelta(minutes=5)
    assert b"".join(store.read("acme", record.id)) == payload
    after = store.info("acme", record.id)
    assert (after.status, after.fetch_count, after.first_fetched_at) == (Status.FETCHED, 1, first)

    clock.now = T0 + timedelta(minutes=9)
    assert store.open("acme", record.id).read_all() == payload
    after = store.info("acme", record.id)
    assert (after.status, after.fetch_count, after.first_fetched_at) == (Status.FETCHED, 2, first)


# -- tenants and unknown ids ---------------------------------------------------------------


def test_another_tenant_cannot_reach_a_transaction(db: Database) -> None:
    store = make_store(db)
    payload = text_like(200 * KIB)
    record = store.put(TransactionContext(tenant="acme"), payload)

    with pytest.raises(TransactionNotFound) as info:
        store.info("globex", record.id)
    assert str(record.id) in str(info.value)
    with pytest.raises(TransactionNotFound):
        store.open("globex", record.id)
    with pytest.raises(TransactionNotFound):
        store.read("globex", record.id)
    with pytest.raises(TransactionNotFound):
        store.delete("globex", record.id)

    # Nothing the other tenant tried changed anything.
    assert store.info("acme", record.id).status is Status.STORED
    assert len(chunk_rows(db, record.id)) == record.chunk_count
    assert b"".join(store.read("acme", record.id)) == payload


def test_unknown_ids_are_not_found(db: Database) -> None:
    store = make_store(db)
    store.put(TransactionContext(tenant="acme"), b"something")
    for unknown in (new_transaction_id()[0], uuid.uuid4()):
        with pytest.raises(TransactionNotFound, match=str(unknown)):
            store.info("acme", unknown)
        with pytest.raises(TransactionNotFound):
            store.open("acme", unknown)
        with pytest.raises(TransactionNotFound):
            store.delete("acme", unknown)


def test_a_transaction_without_a_payload_is_unavailable(db: Database) -> None:
    store = make_store(db)
    ctx = TransactionContext(tenant="acme")
    tx_id, created_at = ctx.ensure_id()
    inline = Transaction(
        id=tx_id, created_at=created_at, tenant="acme", route=Route.INLINE, status=Status.DELIVERED
    )
    upsert_transactions(db, [transaction_to_row(inline)])
    with pytest.raises(TransactionUnavailable, match="status delivered"):
        store.open("acme", tx_id)


# -- the size limit ----------------------------------------------------------------------


def test_bytes_over_the_limit_are_refused_before_anything_is_written(db: Database) -> None:
    store = make_store(db, max_payload_bytes=1000)
    with pytest.raises(PayloadTooLarge) as info:
        store.put(TransactionContext(tenant="acme"), b"x" * 1001)
    assert (info.value.size, info.value.limit) == (1001, 1000)
    assert "MESSAGE_BUS_MAX_PAYLOAD_MB" in str(info.value)
    assert count(db, "transactions") == 0
    assert count(db, "chunks") == 0

    at_limit = store.put(TransactionContext(tenant="acme"), b"x" * 1000)
    assert at_limit.size == 1000


def test_an_iterator_growing_past_the_limit_leaves_no_chunk_and_a_rejected_row(
    db: Database,
) -> None:
    """Chunks are written as the payload streams in (256-byte chunks, so several are
    written before the limit is crossed); all of them go, the row says ``rejected``."""
    store = make_store(db, compression=Compression.NONE, chunk_bytes=256, max_payload_bytes=1000)
    kept = store.put(TransactionContext(tenant="acme"), b"k" * 600)  # an unrelated payload
    written: list[int] = []

    def growing() -> Iterator[bytes]:
        for _ in range(10):
            written.append(300)
            yield random.Random(len(written)).randbytes(300)

    ctx = TransactionContext(tenant="acme")
    with pytest.raises(PayloadTooLarge) as info:
        store.put(ctx, growing())
    assert info.value.size > 1000 and info.value.limit == 1000
    assert sum(written) <= 1000 + 300  # it stopped reading at the piece that crossed
    assert ctx.transaction_id is not None

    assert chunk_rows(db, ctx.transaction_id) == []
    assert len(chunk_rows(db, kept.id)) == kept.chunk_count  # another payload untouched
    row = store.info("acme", ctx.transaction_id)
    assert row.status is Status.REJECTED
    assert row.error_kind == "payload_too_large"
    assert row.error is not None and "MESSAGE_BUS_MAX_PAYLOAD_MB" in row.error
    assert row.size == info.value.size
    with pytest.raises(TransactionUnavailable):
        store.open("acme", ctx.transaction_id)


def test_an_iterator_that_raises_leaves_no_chunk(db: Database) -> None:
    store = make_store(db, compression=Compression.NONE, chunk_bytes=256)

    def broken() -> Iterator[bytes]:
        yield b"a" * 1000
        raise OSError("the tool's output pipe broke")

    ctx = TransactionContext(tenant="acme")
    with pytest.raises(OSError, match="pipe broke"):
        store.put(ctx, broken())
    assert ctx.transaction_id is not None
    assert chunk_rows(db, ctx.transaction_id) == []
    assert store.info("acme", ctx.transaction_id).status is Status.PENDING  # caller settles


# -- corruption ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD])
def test_one_flipped_byte_fails_the_read_before_the_damaged_chunk(
    db: Database, compression: Compression
) -> None:
    store = make_store(db, compression=compression)
    if compression is Compression.NONE:
        payload = random.Random(5).randbytes(5 * CHUNK + 100)
    else:
        payload = text_like(1500 * KIB, seed=5)
    record = store.put(TransactionContext(tenant="acme"), payload)
    assert record.compression is compression
    assert record.chunk_count >= 4
    good_chunks = [r[2] for r in chunk_rows(db, record.id)][:2]
    flip_one_byte(db, record.id, seq=2)

    got = bytearray()
    with pytest.raises(ChecksumMismatch) as info:
        for piece in store.read("acme", record.id):
            got += piece
    message = str(info.value)
    assert str(record.id) in message
    assert "chunk 2" in message
    assert "corrupted" in message and "SHA-256" in message
    assert info.value.transaction_id == str(record.id)

    # Only bytes from the two whole undamaged chunks came out, and they were right.
    assert payload.startswith(bytes(got))
    if compression is Compression.NONE:
        assert bytes(got) == payload[: 2 * CHUNK]
    else:
        # No more than those two chunks decode to, on their own.
        most = zstandard.ZstdDecompressor().decompressobj().decompress(b"".join(good_chunks))
        assert payload.startswith(most)
        assert len(got) <= len(most)

    after = store.info("acme", record.id)
    assert after.status is Status.CORRUPTED
    assert after.error_kind == "checksum_mismatch"
    assert after.error is not None and "chunk 2" in after.error
    assert after.fetch_count == 0

    # A second read fails at once, before any byte.
    with pytest.raises(ChecksumMismatch, match="a previous read"):
        store.open("acme", record.id)
    with pytest.raises(ChecksumMismatch):
        store.read("acme", record.id)


def test_a_missing_chunk_corrupts_the_transaction(db: Database) -> None:
    store = make_store(db, compression=Compression.NONE)
    payload = random.Random(6).randbytes(4 * CHUNK)
    record = store.put(TransactionContext(tenant="acme"), payload)
    sql(db, "DELETE FROM chunks WHERE transaction_id = :id AND seq = 1", id=uid(db, record.id))

    got = bytearray()
    with pytest.raises(ChecksumMismatch, match=r"chunk 1 \(missing\)"):
        for piece in store.read("acme", record.id):
            got += piece
    assert bytes(got) == payload[:CHUNK]
    after = store.info("acme", record.id)
    assert after.status is Status.CORRUPTED
    assert after.error == "chunk 1 is missing"


def test_a_size_that_does_not_match_corrupts_the_transaction(db: Database) -> None:
    store = make_store(db)
    payload = text_like(300 * KIB, seed=8)
    record = store.put(TransactionContext(tenant="acme"), payload)
    sql(
        db,
        "UPDATE transactions SET size = :size WHERE id = :id",
        size=len(payload) - 10,
        id=uid(db, record.id),
    )
    got = bytearray()
    with pytest.raises(ChecksumMismatch, match="the stored stream"):
        for piece in store.read("acme", record.id):
            got += piece
    assert len(got) <= len(payload) - 10
    assert store.info("acme", record.id).status is Status.CORRUPTED


# -- expiry --------------------------------------------------------------------------------


def test_expire_archives_exactly_the_due_payloads(db: Database) -> None:
    clock = Clock(T0)
    store = make_store(db, clock, ttl_seconds=3600)
    payloads = {}

    due = []  # stored at T0: expire at T0 + 1h
    for i in range(5):
        record = store.put(
            TransactionContext(tenant=f"t{i % 2}"), text_like(150 * KIB, seed=i), daemon_id=f"d{i}"
        )
        payloads[record.id] = record
        due.append(record)
    for record in due[:2]:  # fetched
        assert b"".join(store.read(record.tenant, record.id))
    flip_one_byte(db, due[2].id, seq=0)  # corrupted
    with pytest.raises(ChecksumMismatch):
        b"".join(store.read(due[2].tenant, due[2].id))

    clock.now = T0 + timedelta(hours=2)  # stored later: expire at T0 + 3h
    not_due = [
        store.put(TransactionContext(tenant="t0"), text_like(150 * KIB, seed=10 + i))
        for i in range(3)
    ]
    tx_id, created_at = new_transaction_id()
    upsert_transactions(  # an inline result: no payload, no expiry
        db,
        [
            transaction_to_row(
                Transaction(
                    id=tx_id,
                    created_at=created_at,
                    tenant="t1",
                    route=Route.INLINE,
                    status=Status.DELIVERED,
                )
            )
        ],
    )

    live_before, archive_before = count(db, "transactions"), count(db, "transactions_archive")
    chunks_before = count(db, "chunks")
    due_chunks = sum(r.chunk_count for r in due)
    assert (live_before, archive_before) == (9, 0)

    now = T0 + timedelta(hours=1, minutes=30)
    assert store.expire(now, batch=2) == 5

    assert count(db, "transactions") + count(db, "transactions_archive") == live_before
    assert ids_in(db, "transactions_archive") == {r.id for r in due}
    assert ids_in(db, "transactions") == {r.id for r in not_due} | {tx_id}
    assert count(db, "chunks") == chunks_before - due_chunks
    for record in due:
        assert chunk_rows(db, record.id) == []
    for record in not_due:
        assert len(chunk_rows(db, record.id)) == record.chunk_count

    for i, record in enumerate(due):
        archived = store.info(record.tenant, record.id)
        expected = Status.CORRUPTED if i == 2 else Status.EXPIRED
        assert archived.status is expected
        assert archived.checksum == record.checksum
        assert archived.fetch_count == (1 if i < 2 else 0)
        assert archived.daemon_id == f"d{i}"  # the daemon that stored it, kept
        with pytest.raises((TransactionUnavailable, ChecksumMismatch)):
            store.open(record.tenant, record.id)
    archived_at = sql(db, "SELECT DISTINCT archived_at FROM transactions_archive")
    assert len(archived_at) == 1
    for record in not_due:
        assert b"".join(store.read(record.tenant, record.id))

    assert store.expire(now) == 0  # nothing left that is due
    assert store.expire(T0 + timedelta(hours=3)) == 3


# -- delete --------------------------------------------------------------------------------


def test_delete_archives_the_transaction_and_drops_its_chunks(db: Database) -> None:
    store = make_store(db)
    keep = store.put(TransactionContext(tenant="acme"), text_like(200 * KIB, seed=1))
    record = store.put(TransactionContext(tenant="acme"), text_like(200 * KIB, seed=2))

    store.delete("acme", record.id)

    assert chunk_rows(db, record.id) == []
    assert ids_in(db, "transactions") == {keep.id}
    assert ids_in(db, "transactions_archive") == {record.id}
    archived = store.info("acme", record.id)
    assert archived.status is Status.EXPIRED
    with pytest.raises(TransactionUnavailable, match="status expired"):
        store.open("acme", record.id)
    store.delete("acme", record.id)  # again: nothing to do, no error
    assert ids_in(db, "transactions_archive") == {record.id}
    assert len(chunk_rows(db, keep.id)) == keep.chunk_count


def test_delete_racing_an_expiry_archives_the_row_once_as_it_was_last(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``delete`` reads the row, then moves it. Whatever lands in between (here, for
    real on the database: a fetch, then an expiry that archives the row first) must
    neither archive it twice nor archive a stale copy."""
    import bus.store

    clock = Clock(T0)
    store = make_store(db, clock, ttl_seconds=60)
    raced = store.put(TransactionContext(tenant="acme"), text_like(100 * KIB, seed=3))
    read_row = bus.store.get_transaction
    between: list[Any] = []

    def read_then_interleave(*args: Any, **kwargs: Any) -> Any:
        record = read_row(*args, **kwargs)
        if between:
            between.pop()()
        return record

    monkeypatch.setattr(bus.store, "get_transaction", read_then_interleave)

    between.append(lambda: store.expire(T0 + timedelta(hours=1)))
    store.delete("acme", raced.id)  # the expiry got there first: nothing left to do
    archived_rows = sql(
        db, "SELECT status FROM transactions_archive WHERE id = :id", id=uid(db, raced.id)
    )
    assert [row[0] for row in archived_rows] == ["expired"]

    clock.now = T0 + timedelta(hours=2)
    fetched = store.put(TransactionContext(tenant="acme"), text_like(100 * KIB, seed=5))
    between.append(lambda: b"".join(store.read("acme", fetched.id)))
    store.delete("acme", fetched.id)  # a fetch lands between the read and the move
    archived = store.info("acme", fetched.id)
    assert (archived.status, archived.fetch_count) == (Status.EXPIRED, 1)
    assert chunk_rows(db, fetched.id) == []


# -- crash recovery --------------------------------------------------------------------------


def test_abandon_pending_fails_old_pending_rows_and_sweeps_orphaned_chunks(db: Database) -> None:
    now = datetime.now(UTC)
    store = make_store(db, Clock(now))

    def pending(age: timedelta, tenant: str) -> uuid.UUID:
        tx_id, created_at = new_transaction_id(now - age)
        row = Transaction(
            id=tx_id,
            created_at=created_at,
            tenant=tenant,
            route=Route.STORE,
            status=Status.PENDING,
            daemon_id="crashed:42",
        )
        upsert_transactions(db, [transaction_to_row(row)])
        return tx_id

    def add_chunk(tx_id: uuid.UUID, tenant: str) -> None:
        data = b"half-written"
        sql(
            db,
            "INSERT INTO chunks (transaction_id, seq, tenant, checksum, data) "
            "VALUES (:id, 0, :tenant, :checksum, :data)",
            id=uid(db, tx_id),
            tenant=tenant,
            checksum=hashlib.sha256(data).hexdigest(),
            data=data,
        )

    old = [pending(timedelta(hours=2), "acme"), pending(timedelta(minutes=61), "globex")]
    young = [pending(timedelta(minutes=1), "acme"), pending(timedelta(seconds=5), "globex")]
    for tx_id, tenant in ((old[0], "acme"), (young[0], "acme")):
        add_chunk(tx_id, tenant)
    orphan = new_transaction_id(now - timedelta(days=1))[0]  # no row at all
    add_chunk(orphan, "acme")
    stored = store.put(TransactionContext(tenant="acme"), text_like(200 * KIB))
    stored_chunks = len(chunk_rows(db, stored.id))

    assert store.abandon_pending(3600, now=now) == 2

    for tx_id, tenant in zip(old, ("acme", "globex"), strict=True):
        row = store.info(tenant, tx_id)
        assert row.status is Status.FAILED
        assert row.error_kind == "abandoned"
        assert row.error and "pending" in row.error
        assert row.daemon_id == "crashed:42"  # still the daemon that left it, not recovery's
    for tx_id, tenant in zip(young, ("acme", "globex"), strict=True):
        row = store.info(tenant, tx_id)
        assert (row.status, row.error_kind) == (Status.PENDING, None)
    assert chunk_rows(db, old[0]) == []
    assert chunk_rows(db, orphan) == []
    assert len(chunk_rows(db, young[0])) == 1  # still being written
    assert len(chunk_rows(db, stored.id)) == stored_chunks
    assert store.info("acme", stored.id).status is Status.STORED

    assert store.abandon_pending(3600, now=now) == 0


# -- the property: any payload, codec and chunk size through the real store --------------

MIB = 1024 * KIB
MB = 1_000_000
MAX_PAYLOAD = 20 * MB
MAX_CHUNKS = 2_000  # each chunk is a database transaction: this bounds a case's time
SHAPES = ("text", "random", "text_then_random", "random_then_text")


class Case(NamedTuple):
    """A payload described by a few numbers (cheap to draw, shrink and print)."""

    shape: str
    size: int
    seed: int
    split: int  # where text turns random, or random turns text
    chunk_bytes: int

    def payload(self) -> bytes:
        """Text (a 64 KiB block of it, repeated) shrinks; random bytes do not."""
        block = text_like(min(self.size, 64 * KIB), self.seed) or b"x"
        rng = random.Random(self.seed)

        def text(n: int) -> bytes:
            return (block * (n // len(block) + 1))[:n]

        head, tail = self.split, self.size - self.split
        return {
            "text": lambda: text(self.size),
            "random": lambda: rng.randbytes(self.size),
            "text_then_random": lambda: text(head) + rng.randbytes(tail),
            "random_then_text": lambda: rng.randbytes(head) + text(tail),
        }[self.shape]()


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Mostly up to 64 KiB or 2 MiB, about one in six up to 20 MB; chunks from 1 KiB to
    6 MiB, but never more than MAX_CHUNKS of them."""
    # Hypothesis favours small integers: a drawn count of KiB or MB spreads the sizes.
    tier = draw(st.sampled_from(["small", "small", "medium", "medium", "medium", "large"]))
    if tier == "small":
        size = draw(st.integers(0, 64 * KIB))
    elif tier == "medium":
        size = draw(st.integers(64, 2 * KIB)) * KIB + draw(st.integers(0, KIB - 1))
    else:
        size = min(draw(st.integers(2, 20)) * MB + draw(st.integers(0, MB - 1)), MAX_PAYLOAD)
    low = max(KIB, -(-size // MAX_CHUNKS))
    chunk_bytes = draw(
        st.one_of(st.integers(low, max(low, 64 * KIB)), st.integers(max(low, 64 * KIB), 6 * MIB))
    )
    return Case(
        shape=draw(st.sampled_from(SHAPES)),
        size=size,
        seed=draw(st.integers(0, 2**32)),
        split=draw(st.integers(0, size)),
        chunk_bytes=chunk_bytes,
    )


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # the largest payload, incompressible, in the most chunks allowed
    case=Case("random", MAX_PAYLOAD, 1, 0, MAX_PAYLOAD // MAX_CHUNKS),
    compression=Compression.ZSTD,
)
@example(  # compressible, in chunks larger than PostgreSQL's 1 MiB read slice
    case=Case("text", 12 * MB, 2, 0, 3 * MIB + 1), compression=Compression.GZIP
)
@given(case=cases(), compression=st.sampled_from(list(Compression)))
def test_any_payload_codec_and_chunk_size_round_trips_through_the_store(
    db: Database, case: Case, compression: Compression
) -> None:
    payload = case.payload()
    store = make_store(
        db, compression=compression, chunk_bytes=case.chunk_bytes, max_payload_bytes=MAX_PAYLOAD
    )
    record = store.put(TransactionContext(tenant="acme"), payload)

    assert record.size == len(payload)
    assert record.checksum == hashlib.sha256(payload).hexdigest()
    stored = sql(
        db,
        "SELECT seq, length(data) FROM chunks WHERE transaction_id = :id ORDER BY seq",
        id=uid(db, record.id),
    )
    assert record.chunk_count == len(stored)
    assert [seq for seq, _ in stored] == list(range(record.chunk_count))
    assert sum(n for _, n in stored) == record.stored_size
    assert all(n == case.chunk_bytes for _, n in stored[:-1])
    assert not stored or 0 < stored[-1][1] <= case.chunk_bytes

    if compression is Compression.NONE or case.shape == "random":
        assert record.compression is Compression.NONE
    elif case.shape == "text" and case.size >= 4 * KIB:
        assert record.compression is compression
        assert record.stored_size is not None and record.stored_size < record.size

    assert b"".join(store.read("acme", record.id)) == payload
