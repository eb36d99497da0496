"""The tables, as SQLModel models, and the enums of the transaction lifecycle.

On SQLite these models *are* the schema (``create_all``). On PostgreSQL the schema comes
from ``sql/migrations`` (partitions, RLS, functions) and ``tests/bus/test_schema.py``
proves both agree column by column.

Lifecycle (``status``)::

    inline:    pending -> delivered | failed
    store:     pending -> stored -> fetched -> expired
    fallback:  pending -> delivered | failed          (store failed, fallback allowed)
    any:       rejected (over MESSAGE_BUS_MAX_PAYLOAD_MB), corrupted (checksum mismatch)
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

from bus.codec import Compression

__all__ = [
    "AnalysisRun",
    "BreakerEvent",
    "Chunk",
    "Compression",
    "Direction",
    "Finding",
    "FindingStatus",
    "Route",
    "SchemaMigration",
    "Severity",
    "Status",
    "Transaction",
    "TransactionArchive",
    "TransactionColumns",
]


class Route(StrEnum):
    INLINE = "inline"
    STORE = "store"
    FALLBACK = "fallback"


class Status(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    STORED = "stored"
    FETCHED = "fetched"
    EXPIRED = "expired"
    REJECTED = "rejected"
    CORRUPTED = "corrupted"


class Direction(StrEnum):
    RESULT = "result"
    UPLOAD = "upload"


class FindingStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


def _enum(enum: type[StrEnum], name: str) -> sa.Enum:
    return sa.Enum(
        enum,
        name=name,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.DateTime(timezone=True), nullable=nullable)


# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class TransactionColumns(SQLModel):
    """The columns of one transaction: shared by the live table and the archive."""

    id: uuid.UUID = Field(primary_key=True)
    created_at: datetime = Field(sa_type=sa.DateTime(timezone=True), primary_key=True)
    tenant: str = Field(sa_type=sa.Text)
    session_id: str | None = Field(default=None, sa_type=sa.Text)
    request_id: str | None = Field(default=None, sa_type=sa.Text)
    tool: str | None = Field(default=None, sa_type=sa.Text)
    mime_type: str | None = Field(default=None, sa_type=sa.Text)
    direction: Direction = Field(
        default=Direction.RESULT,
        sa_type=_enum(Direction, "tx_direction"),
    )
    route: Route = Field(sa_type=_enum(Route, "tx_route"))
    status: Status = Field(sa_type=_enum(Status, "tx_status"))
    size: int = Field(default=0, sa_type=sa.BigInteger)
    stored_size: int | None = Field(default=None, sa_type=sa.BigInteger)
    compression: Compression = Field(
        default=Compression.NONE,
        sa_type=_enum(Compression, "tx_compression"),
    )
    checksum: str | None = Field(default=None, sa_type=sa.Text)
    chunk_count: int = Field(default=0, sa_type=sa.Integer)
    stored_at: datetime | None = _ts()
    delivered_at: datetime | None = _ts()
    first_fetched_at: datetime | None = _ts()
    expires_at: datetime | None = _ts()
    fetch_count: int = Field(default=0, sa_type=sa.Integer)
    tool_ms: float | None = Field(default=None, sa_type=sa.Double)
    store_ms: float | None = Field(default=None, sa_type=sa.Double)
    trace_id: str | None = Field(default=None, sa_type=sa.Text)
    span_id: str | None = Field(default=None, sa_type=sa.Text)
    error_kind: str | None = Field(default=None, sa_type=sa.Text)
    error: str | None = Field(default=None, sa_type=sa.Text)
    # The daemon that recorded it (as in breaker_events.daemon_id); NULL before schema 3.
    daemon_id: str | None = Field(default=None, sa_type=sa.Text)


class Transaction(TransactionColumns, table=True):
    __tablename__ = "transactions"
    # On SQLite these are the indexes; on PostgreSQL sql/migrations declares them.
    __table_args__ = (
        sa.Index("transactions_created_at_idx", "created_at"),
        sa.Index("transactions_tenant_created_at_idx", "tenant", "created_at"),
        sa.Index("transactions_tool_created_at_idx", "tool", "created_at"),
        sa.Index("transactions_status_created_at_idx", "status", "created_at"),
        sa.Index("transactions_expires_at_idx", "expires_at"),
        sa.Index("transactions_trace_id_idx", "trace_id"),
    )


class TransactionArchive(TransactionColumns, table=True):
    __tablename__ = "transactions_archive"

    archived_at: datetime = Field(sa_type=sa.DateTime(timezone=True))


class Chunk(SQLModel, table=True):
    """One stored piece of a payload, already compressed (PostgreSQL must not re-compress)."""

    __tablename__ = "chunks"

    transaction_id: uuid.UUID = Field(primary_key=True)
    seq: int = Field(primary_key=True, sa_type=sa.Integer)
    tenant: str = Field(sa_type=sa.Text)
    checksum: str = Field(sa_type=sa.Text)  # SHA-256 of `data`, checked before decoding
    data: bytes = Field(sa_type=sa.LargeBinary)


class BreakerEvent(SQLModel, table=True):
    __tablename__ = "breaker_events"

    id: uuid.UUID = Field(primary_key=True)  # made by the daemon: replays are idempotent
    at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    breaker: str = Field(sa_type=sa.Text)
    daemon_id: str | None = Field(default=None, sa_type=sa.Text)
    from_state: str = Field(sa_type=sa.Text)
    to_state: str = Field(sa_type=sa.Text)
    reason: str = Field(sa_type=sa.Text)
    failure_rate: float | None = Field(default=None, sa_type=sa.Double)
    consecutive_failures: int | None = Field(default=None, sa_type=sa.Integer)


class Finding(SQLModel, table=True):
    """One row of the debt ledger: a silent failure, grouped by fingerprint."""

    __tablename__ = "findings"

    id: int | None = Field(default=None, primary_key=True, sa_type=_ID)
    fingerprint: str = Field(sa_type=sa.Text, unique=True)
    kind: str = Field(sa_type=sa.Text)
    severity: Severity = Field(sa_type=_enum(Severity, "finding_severity"))
    status: FindingStatus = Field(sa_type=_enum(FindingStatus, "finding_status"))
    title: str = Field(sa_type=sa.Text)
    explanation: str = Field(sa_type=sa.Text)
    remedy: str = Field(sa_type=sa.Text)
    tool: str | None = Field(default=None, sa_type=sa.Text)
    tenant: str | None = Field(default=None, sa_type=sa.Text)
    first_seen_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    last_seen_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    resolved_at: datetime | None = _ts()
    acknowledged_at: datetime | None = _ts()
    acknowledged_by: str | None = Field(default=None, sa_type=sa.Text)
    occurrences: int = Field(default=0, sa_type=sa.BigInteger)
    sample_transaction_ids: list[str] = Field(default_factory=list, sa_type=_JSON)
    regression: bool = Field(default=False, sa_type=sa.Boolean)
    reopened_count: int = Field(default=0, sa_type=sa.Integer)
    last_run_id: int | None = Field(default=None, sa_type=sa.BigInteger)


class AnalysisRun(SQLModel, table=True):
    __tablename__ = "analysis_runs"

    id: int | None = Field(default=None, primary_key=True, sa_type=_ID)
    started_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    finished_at: datetime | None = _ts()
    window_start: datetime | None = _ts()
    window_end: datetime | None = _ts()
    transactions_scanned: int = Field(default=0, sa_type=sa.BigInteger)
    counts: dict[str, int] = Field(default_factory=dict, sa_type=_JSON)
    new_count: int = Field(default=0, sa_type=sa.Integer)
    resolved_count: int = Field(default=0, sa_type=sa.Integer)
    reopened_count: int = Field(default=0, sa_type=sa.Integer)
    open_count: int = Field(default=0, sa_type=sa.Integer)


class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migrations"

    version: int = Field(
        primary_key=True, sa_type=sa.Integer, sa_column_kwargs={"autoincrement": False}
    )
    name: str = Field(sa_type=sa.Text)
    checksum: str = Field(sa_type=sa.Text)
    applied_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
