"""The claim-check store: payloads in, verified bytes out, scoped by tenant.

A payload (bytes or an iterator of bytes) is compressed and checksummed as it streams
(``bus.codec``) and written chunk by chunk, each chunk in its own short database
transaction, so memory and locks stay bounded whatever the size. The transaction row
goes ``pending`` first (a crash mid-store leaves a trace that start-up recovery turns
into ``failed``/``abandoned``), then ``stored``.

Reading checks each stored chunk against its own SHA-256 *before* decoding it, and the
whole decoded payload against the transaction's checksum and size: bytes that do not
match are never handed on, the transaction becomes ``corrupted`` and the caller gets
:class:`~bus.errors.ChecksumMismatch`.

The same class runs on SQLite and PostgreSQL; the few maintenance statements that differ
(expiry, crash recovery) call the SQL functions of ``sql/migrations`` on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from bus.codec import Compression, Encoder, IncompleteStream, decode, iter_pieces
from bus.db import Database, created_at_of, new_transaction_id, utcnow
from bus.errors import (
    ChecksumMismatch,
    PayloadTooLarge,
    TransactionNotFound,
    TransactionUnavailable,
)
from bus.models import Chunk, Direction, Route, Status, Transaction
from bus.records import (
    TRANSACTION_COLUMNS,
    archive,
    get_transaction,
    row_to_transaction,
    transaction_to_row,
    transactions,
    upsert_transactions,
)

if TYPE_CHECKING:
    from bus.settings import Settings

__all__ = ["OpenPayload", "PayloadStore", "StoreConfig", "TransactionContext"]

log = logging.getLogger(__name__)
chunks: sa.Table = Chunk.__table__  # type: ignore[attr-defined]
_SLICE = 1024 * 1024  # bytes of a stored chunk fetched per query on PostgreSQL
_READABLE = (Status.STORED, Status.FETCHED)


@dataclass(frozen=True)
class StoreConfig:
    compression: Compression = Compression.ZSTD
    chunk_bytes: int = 8 * 1024 * 1024
    level: int | None = None
    ttl_seconds: float = 48 * 3600
    max_payload_bytes: int = 100 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreConfig:
        return cls(
            compression=Compression(settings.message_bus_compression),
            chunk_bytes=settings.message_bus_chunk_bytes,
            level=settings.message_bus_compression_level,
            ttl_seconds=settings.ttl_seconds,
            max_payload_bytes=settings.max_payload_bytes,
        )


@dataclass
class TransactionContext:
    """Who a payload belongs to and where it came from (the audit record's identity)."""

    tenant: str
    tool: str | None = None
    mime_type: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    direction: Direction = Direction.RESULT
    trace_id: str | None = None
    span_id: str | None = None
    tool_ms: float | None = None
    # A successful result that looks like a failure (bus.inspect): recorded as its
    # error_kind while the status stays delivered/stored.
    hint: str | None = None
    transaction_id: uuid.UUID | None = None
    created_at: datetime | None = None
    _checked: tuple[uuid.UUID, datetime] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def ensure_id(self) -> tuple[uuid.UUID, datetime]:
        checked = self._checked
        # Called several times a call: checked once (and compared by identity first).
        if checked is not None and (
            (checked[0] is self.transaction_id and checked[1] is self.created_at)
            or checked == (self.transaction_id, self.created_at)
        ):
            return checked
        if self.transaction_id is None:
            self.transaction_id, self.created_at = new_transaction_id()
        elif self.created_at is None:
            # A caller's id is kept; its creation time is the one inside it (UUIDv7).
            self.created_at = created_at_of(self.transaction_id)
        elif self.created_at != created_at_of(self.transaction_id):
            raise ValueError(
                f"created_at {self.created_at.isoformat()} is not the time inside "
                f"transaction id {self.transaction_id}"
            )
        self._checked = (self.transaction_id, self.created_at)
        return self._checked


@dataclass
class OpenPayload:
    """A stored transaction ready to read: its record, and its verified bytes on demand."""

    record: Transaction
    _chunks: Iterator[bytes] = field(repr=False)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def read_all(self) -> bytes:
        return b"".join(self._chunks)


class PayloadStore:
    def __init__(
        self,
        db: Database,
        config: StoreConfig | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.config = config or StoreConfig()
        self._clock = clock

    # -- writing ------------------------------------------------------------------------
    def put(
        self,
        context: TransactionContext,
        payload: bytes | Iterable[bytes],
        *,
        daemon_id: str | None = None,
    ) -> Transaction:
        """Store a payload; return its transaction (status ``stored``), recorded as
        ``daemon_id``'s (the message bus passes its own).

        Raises PayloadTooLarge (no chunk kept; bytes over the limit are refused before
        any row is written, an iterator that grows past it leaves its row ``rejected``)
        or StoreError (database trouble; the row stays ``pending`` for the caller to
        settle). A payload iterator's own exceptions propagate unchanged.
        """
        limit = self.config.max_payload_bytes
        if isinstance(payload, bytes | bytearray | memoryview) and len(payload) > limit:
            raise PayloadTooLarge(len(payload), limit)
        tx_id, created_at = context.ensure_id()
        started = time.perf_counter()
        record = Transaction(
            id=tx_id,
            created_at=created_at,
            tenant=context.tenant,
            session_id=context.session_id,
            request_id=context.request_id,
            tool=context.tool,
            mime_type=context.mime_type,
            direction=context.direction,
            route=Route.STORE,
            status=Status.PENDING,
            trace_id=context.trace_id,
            span_id=context.span_id,
            tool_ms=context.tool_ms,
            daemon_id=daemon_id,
        )
        upsert_transactions(self.db, [transaction_to_row(record)])
        encoder = Encoder(self.config.compression, self.config.chunk_bytes, level=self.config.level)
        seq = 0
        try:
            for piece in iter_pieces(payload):
                seq = self._write_chunks(context.tenant, tx_id, seq, encoder.feed(piece))
                if encoder.size > limit:
                    raise PayloadTooLarge(encoder.size, limit)
            seq = self._write_chunks(context.tenant, tx_id, seq, encoder.finish())
        except PayloadTooLarge as exc:
            self._discard_chunks(context.tenant, tx_id)
            self._reject(record, exc)
            raise
        except BaseException:
            self._discard_chunks(context.tenant, tx_id)
            raise
        encoded = encoder.result()
        now = self._clock()
        values = {
            "route": Route.STORE,
            "status": Status.STORED,
            "size": encoded.size,
            "stored_size": encoded.stored_size,
            "compression": encoded.compression,
            "checksum": encoded.checksum,
            "chunk_count": encoded.chunk_count,
            "stored_at": now,
            "expires_at": now + timedelta(seconds=self.config.ttl_seconds),
            "store_ms": (time.perf_counter() - started) * 1000,
        }
        if context.hint:
            values["error_kind"] = context.hint
            values["error"] = f"the result looks like a failure ({context.hint})"
        with self.db.begin(context.tenant) as conn:
            conn.execute(
                transactions.update()
                .where(*_key(tx_id, created_at, context.tenant))
                .values(**values)
            )
        for name, value in values.items():
            setattr(record, name, value)
        return record

    def _write_chunks(self, tenant: str, tx_id: uuid.UUID, seq: int, new: list[bytes]) -> int:
        """Write and let go of each chunk in turn (no chunk outlives its write)."""
        new.reverse()
        while new:
            self._write_chunk(tenant, tx_id, seq, new.pop())
            seq += 1
        return seq

    def _reject(self, record: Transaction, exc: PayloadTooLarge) -> None:
        """An iterator outgrew MESSAGE_BUS_MAX_PAYLOAD_MB: the lifecycle says ``rejected``."""
        try:
            with self.db.begin(record.tenant) as conn:
                conn.execute(
                    transactions.update()
                    .where(
                        *_key(record.id, record.created_at, record.tenant),
                        transactions.c.status == Status.PENDING,
                    )
                    .values(
                        status=Status.REJECTED,
                        size=exc.size,
                        error_kind="payload_too_large",
                        error=str(exc),
                    )
                )
        except Exception:
            log.warning("could not mark %s rejected; it stays pending", record.id)
            return
        record.status = Status.REJECTED
        record.size = exc.size
        record.error_kind = "payload_too_large"
        record.error = str(exc)

    def _write_chunk(self, tenant: str, tx_id: uuid.UUID, seq: int, data: bytes) -> None:
        # Values as execute() parameters, not .values(): SQLAlchemy's statement cache
        # would keep the first statement it compiled, with its chunk, for good.
        with self.db.begin(tenant) as conn:
            conn.execute(
                chunks.insert(),
                {
                    "transaction_id": tx_id,
                    "seq": seq,
                    "tenant": tenant,
                    "checksum": hashlib.sha256(data).hexdigest(),
                    "data": data,
                },
            )

    def _discard_chunks(self, tenant: str, tx_id: uuid.UUID) -> None:
        try:
            with self.db.begin(tenant) as conn:
                conn.execute(chunks.delete().where(chunks.c.transaction_id == tx_id))
        except Exception:
            # The database is what failed; crash recovery sweeps these chunks later.
            log.warning("could not discard the chunks of %s; recovery will", tx_id)

    # -- reading ------------------------------------------------------------------------
    def info(self, tenant: str, transaction_id: uuid.UUID) -> Transaction:
        """The record of one of ``tenant``'s transactions (live or archived)."""
        record = get_transaction(self.db, tenant, transaction_id)
        if record is None:
            raise TransactionNotFound(transaction_id)
        return record

    def open(
        self, tenant: str, transaction_id: uuid.UUID, *, count_fetch: bool = True
    ) -> OpenPayload:
        """Open a stored payload. Iterating the result yields verified original bytes;
        a completed read counts as a fetch (``fetch_count``, ``first_fetched_at``)."""
        record = self.info(tenant, transaction_id)
        if record.status is Status.CORRUPTED:
            raise ChecksumMismatch(transaction_id, "a previous read")
        if record.status not in _READABLE:
            raise TransactionUnavailable(transaction_id, record.status.value)
        return OpenPayload(record, self._verified(record, count_fetch=count_fetch))

    def read(self, tenant: str, transaction_id: uuid.UUID) -> Iterator[bytes]:
        return iter(self.open(tenant, transaction_id))

    def _verified(self, record: Transaction, *, count_fetch: bool) -> Iterator[bytes]:
        digest = hashlib.sha256()
        try:
            for piece in decode(
                self._stored_chunks(record), record.compression, expected_size=record.size
            ):
                digest.update(piece)
                yield piece
        except IncompleteStream as exc:
            self._mark_corrupted(record, f"the stored stream: {exc}")
            raise ChecksumMismatch(record.id, "the stored stream") from exc
        if digest.hexdigest() != record.checksum:
            self._mark_corrupted(record, "the payload")
            raise ChecksumMismatch(record.id, "the payload")
        if count_fetch:
            self.record_fetch(record)

    def _stored_chunks(self, record: Transaction) -> Iterator[bytes | bytearray]:
        for seq in range(record.chunk_count):
            row = self._read_chunk(record, seq)
            if row is None:
                self._mark_corrupted(record, f"chunk {seq} is missing")
                raise ChecksumMismatch(record.id, f"chunk {seq} (missing)")
            data, checksum = row
            del row
            if hashlib.sha256(data).hexdigest() != checksum:
                self._mark_corrupted(record, f"chunk {seq} does not match its checksum")
                raise ChecksumMismatch(record.id, f"chunk {seq}")
            yield data
            del data  # not held while the next chunk is read

    def _read_chunk(self, record: Transaction, seq: int) -> tuple[bytes | bytearray, str] | None:
        """One chunk's bytes and checksum, or None when the row is missing.

        On PostgreSQL the bytes come in slices: bytea travels as hex text, twice its size,
        which libpq would hold twice over for a whole chunk. A slice reads only its own
        TOAST pages (``STORAGE EXTERNAL`` keeps chunks uncompressed), and each query
        stays a plain SQLAlchemy statement, so it gets its database span like any other.
        """
        where = (
            chunks.c.transaction_id == record.id,
            chunks.c.seq == seq,
            chunks.c.tenant == record.tenant,
        )
        with self.db.begin(record.tenant) as conn:
            if not self.db.is_postgres:
                row = conn.execute(
                    sa.select(chunks.c.data, chunks.c.checksum).where(*where)
                ).first()
                return None if row is None else (bytes(row[0]), str(row[1]))
            head = conn.execute(
                sa.select(chunks.c.checksum, sa.func.octet_length(chunks.c.data)).where(*where)
            ).first()
            if head is None:
                return None
            checksum, length = str(head[0]), int(head[1])
            data = bytearray(length)
            for start in range(0, length, _SLICE):
                piece = conn.execute(
                    sa.select(sa.func.substring(chunks.c.data, start + 1, _SLICE)).where(*where)
                ).scalar()
                if piece is None:  # the row went away between two slices
                    return None
                data[start : start + len(piece)] = piece
                del piece
            return data, checksum

    def record_fetch(self, record: Transaction) -> None:
        now = self._clock()
        with self.db.begin(record.tenant) as conn:
            conn.execute(
                transactions.update()
                .where(
                    *_key(record.id, record.created_at, record.tenant),
                    transactions.c.status.in_(_READABLE),
                )
                .values(
                    fetch_count=transactions.c.fetch_count + 1,
                    first_fetched_at=sa.func.coalesce(transactions.c.first_fetched_at, now),
                    status=Status.FETCHED,
                )
            )

    def _mark_corrupted(self, record: Transaction, why: str) -> None:
        log.error("transaction %s is corrupted: %s", record.id, why)
        with self.db.begin(record.tenant) as conn:
            conn.execute(
                transactions.update()
                .where(*_key(record.id, record.created_at, record.tenant))
                .values(status=Status.CORRUPTED, error_kind="checksum_mismatch", error=why)
            )

    # -- removing -----------------------------------------------------------------------
    def delete(
        self, tenant: str, transaction_id: uuid.UUID, *, rejected: tuple[str, str] | None = None
    ) -> None:
        """Expire one of ``tenant``'s payloads now: chunks deleted, row archived.

        ``rejected=(error_kind, error)`` archives it as ``rejected`` with that reason
        instead (a payload refused after it was stored, e.g. an upload damaged in
        transit), so the audit trail does not mistake it for an ordinary expiry.
        Deleting an already archived transaction does nothing, also when an expiry
        archives it between this call's read and its write."""
        record = get_transaction(self.db, tenant, transaction_id, include_archive=False)
        if record is None:
            self.info(tenant, transaction_id)  # TransactionNotFound unless archived
            return
        now = self._clock()
        with self.db.begin(tenant) as conn:
            _archive_rows(
                conn, [(record.id, record.created_at, record.tenant)], now, rejected=rejected
            )

    def expire(self, now: datetime | None = None, *, batch: int = 10_000) -> int:
        """Archive every stored payload past ``expires_at`` (all tenants); return how many."""
        now = now or self._clock()
        total = 0
        while True:
            with self.db.begin() as conn:
                if self.db.is_postgres:
                    found = moved = int(
                        conn.execute(
                            sa.text("SELECT bustrail_expire(:now, :limit)"),
                            {"now": now, "limit": batch},
                        ).scalar_one()
                    )
                else:
                    due = conn.execute(
                        sa.select(
                            transactions.c.id, transactions.c.created_at, transactions.c.tenant
                        )
                        .where(
                            transactions.c.status.in_(
                                (Status.STORED, Status.FETCHED, Status.CORRUPTED)
                            ),
                            transactions.c.expires_at <= now,
                        )
                        .order_by(transactions.c.expires_at)
                        .limit(batch)
                    ).all()
                    found = len(due)
                    moved = _archive_rows(conn, [(r.id, r.created_at, r.tenant) for r in due], now)
            total += moved
            if found < batch:
                return total

    def abandon_pending(self, older_than_seconds: float, now: datetime | None = None) -> int:
        """Crash recovery: fail what was left ``pending`` too long (all tenants)."""
        now = now or self._clock()
        with self.db.begin() as conn:
            if self.db.is_postgres:
                return int(
                    conn.execute(
                        sa.text("SELECT bustrail_abandon_pending(make_interval(secs => :s), :now)"),
                        {"s": older_than_seconds, "now": now},
                    ).scalar_one()
                )
            result = conn.execute(
                transactions.update()
                .where(
                    transactions.c.status == Status.PENDING,
                    transactions.c.created_at < now - timedelta(seconds=older_than_seconds),
                )
                .values(
                    status=Status.FAILED,
                    error_kind="abandoned",
                    error="left pending by a daemon that stopped before answering",
                )
            )
            live = sa.select(transactions.c.id).where(
                transactions.c.status.in_(
                    (Status.PENDING, Status.STORED, Status.FETCHED, Status.CORRUPTED)
                )
            )
            conn.execute(chunks.delete().where(chunks.c.transaction_id.not_in(live)))
            return int(result.rowcount)


def _key(tx_id: uuid.UUID, created_at: datetime, tenant: str) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        transactions.c.id == tx_id,
        transactions.c.created_at == created_at,
        transactions.c.tenant == tenant,
    )


def _archive_rows(
    conn: sa.Connection,
    keys: list[tuple[uuid.UUID, datetime, str]],
    now: datetime,
    *,
    rejected: tuple[str, str] | None = None,
) -> int:
    """Move rows to the archive (status ``expired``; ``corrupted`` and ``rejected``
    kept), drop their chunks; return how many moved.

    Each live row is deleted first, and only what the delete hands back is archived,
    as it was at that moment: when a concurrent expiry (or another delete) got to a row
    first, it is simply skipped instead of being archived twice, and a fetch counted
    since ``keys`` (id, created_at, tenant) were read is kept.
    """
    rows = []
    for key in keys:
        gone = (
            conn.execute(
                transactions.delete()
                .where(*_key(*key))
                .returning(*(transactions.c[name] for name in TRANSACTION_COLUMNS))
            )
            .mappings()
            .first()
        )
        if gone is None:
            continue
        row = transaction_to_row(row_to_transaction(gone))
        if rejected is not None:
            row["status"] = Status.REJECTED
            row["error_kind"], row["error"] = rejected
        elif row["status"] not in (Status.CORRUPTED, Status.REJECTED):
            row["status"] = Status.EXPIRED
        row["archived_at"] = now
        rows.append(row)
    if rows:
        conn.execute(archive.insert(), rows)
        conn.execute(chunks.delete().where(chunks.c.transaction_id.in_([r["id"] for r in rows])))
    return len(rows)
