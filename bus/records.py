"""Reading and writing transaction rows: the audit trail's data access.

One function per query, no policy: the router decides what a record says, the audit
writer decides when it is written, and this module only knows how.

Writes are upserts keyed by (id, created_at), so writing the same record twice (a spool
replayed after a crash) is harmless. A record never goes back to ``pending``: a late
"call started" record cannot undo the outcome that overtook it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from bus.db import Database, as_utc, created_at_of
from bus.models import BreakerEvent, Status, Transaction, TransactionArchive

__all__ = [
    "TRANSACTION_COLUMNS",
    "archive",
    "breaker_events",
    "get_transaction",
    "insert_breaker_events",
    "row_to_transaction",
    "transaction_to_row",
    "transactions",
    "upsert_transactions",
]

transactions: sa.Table = Transaction.__table__  # type: ignore[attr-defined]
archive: sa.Table = TransactionArchive.__table__  # type: ignore[attr-defined]
breaker_events: sa.Table = BreakerEvent.__table__  # type: ignore[attr-defined]
TRANSACTION_COLUMNS: tuple[str, ...] = tuple(c.name for c in transactions.columns)
_KEY = ("id", "created_at")
_TIMESTAMPS = {c.name for c in transactions.columns if isinstance(c.type, sa.DateTime)} | {
    "archived_at"
}


def transaction_to_row(record: Transaction) -> dict[str, Any]:
    return {name: getattr(record, name) for name in TRANSACTION_COLUMNS}


def row_to_transaction(row: Mapping[str, Any] | sa.RowMapping) -> Transaction:
    values = {name: row[name] for name in TRANSACTION_COLUMNS}
    for name in _TIMESTAMPS & values.keys():
        values[name] = as_utc(values[name])
    if isinstance(values["id"], str):
        values["id"] = uuid.UUID(values["id"])
    return Transaction(**values)


def upsert_transactions(db: Database, rows: Sequence[Mapping[str, Any]]) -> int:
    """Write full transaction rows in one database transaction; return how many.

    Several rows for one transaction collapse to the last. On PostgreSQL the rows go
    through ``COPY`` into a temporary table and one ``INSERT ... SELECT`` per tenant,
    which is several times faster than a multi-row ``INSERT`` of the same rows.
    """
    latest = {(r["id"], r["created_at"]): r for r in rows}
    if not latest:
        return 0
    ordered = sorted(latest.values(), key=lambda r: str(r["tenant"]))
    with db.begin() as conn:
        if db.is_postgres:
            _copy_upsert(db, conn, ordered)
        else:
            for _tenant, group in groupby(ordered, key=lambda r: str(r["tenant"])):
                stmt = sqlite.insert(transactions).values([dict(r) for r in group])
                conn.execute(_on_conflict(stmt))
    return len(latest)


def _on_conflict(stmt: Any) -> Any:
    return stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={name: stmt.excluded[name] for name in TRANSACTION_COLUMNS if name not in _KEY},
        where=sa.or_(
            transactions.c.status == Status.PENDING,
            stmt.excluded.status != Status.PENDING,
        ),
    )


_STAGING = "bustrail_audit_staging"
_COLUMN_LIST = ", ".join(TRANSACTION_COLUMNS)
_UPSERT_FROM_STAGING = (
    f"INSERT INTO transactions ({_COLUMN_LIST}) "
    f"SELECT {_COLUMN_LIST} FROM {_STAGING} WHERE tenant = %s "
    "ON CONFLICT (id, created_at) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in TRANSACTION_COLUMNS if c not in _KEY)
    + " WHERE transactions.status = 'pending' OR excluded.status <> 'pending'"
)


def _copy_upsert(db: Database, conn: Connection, rows: list[Mapping[str, Any]]) -> None:
    raw: Any = conn.connection.dbapi_connection
    with raw.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} "
            "(LIKE transactions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY {_STAGING} ({_COLUMN_LIST}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([_plain(row[c]) for c in TRANSACTION_COLUMNS])
        for tenant, _group in groupby(rows, key=lambda r: str(r["tenant"])):
            cur.execute("SELECT set_config('bustrail.tenant', %s, true)", (tenant,))
            cur.execute(_UPSERT_FROM_STAGING, (tenant,))


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


def insert_breaker_events(db: Database, rows: Sequence[Mapping[str, Any]]) -> int:
    """Record breaker transitions; an event already recorded (same id) is skipped."""
    if not rows:
        return 0
    insert = postgresql.insert if db.is_postgres else sqlite.insert
    with db.begin() as conn:
        conn.execute(
            insert(breaker_events).values([dict(r) for r in rows]).on_conflict_do_nothing()
        )
    return len(rows)


def get_transaction(
    db: Database, tenant: str, transaction_id: uuid.UUID, *, include_archive: bool = True
) -> Transaction | None:
    """The row of one transaction of ``tenant``, from the live table or the archive."""
    try:
        created_at = created_at_of(transaction_id)
    except ValueError:
        return None
    with db.begin(tenant) as conn:
        for table in (transactions, archive) if include_archive else (transactions,):
            row = _select_one(conn, table, tenant, transaction_id, created_at)
            if row is not None:
                return row_to_transaction(row)
    return None


def _select_one(
    conn: Connection, table: sa.Table, tenant: str, transaction_id: uuid.UUID, created_at: datetime
) -> sa.RowMapping | None:
    query = sa.select(*(table.c[name] for name in TRANSACTION_COLUMNS)).where(
        table.c.id == transaction_id,
        table.c.created_at == created_at,
        table.c.tenant == tenant,
    )
    return conn.execute(query).mappings().first()
