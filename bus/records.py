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
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from bus.db import Database, as_utc, created_at_of
from bus.models import Status, Transaction, TransactionArchive

__all__ = [
    "TRANSACTION_COLUMNS",
    "archive",
    "get_transaction",
    "row_to_transaction",
    "transaction_to_row",
    "transactions",
    "upsert_transactions",
]

transactions: sa.Table = Transaction.__table__  # type: ignore[attr-defined]
archive: sa.Table = TransactionArchive.__table__  # type: ignore[attr-defined]
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


def _insert(db: Database) -> Any:
    return postgresql.insert if db.is_postgres else sqlite.insert


def upsert_transactions(db: Database, rows: Sequence[Mapping[str, Any]]) -> int:
    """Write full transaction rows in one database transaction; return how many."""
    if not rows:
        return 0
    insert = _insert(db)
    ordered = sorted(rows, key=lambda r: str(r["tenant"]))
    with db.begin() as conn:
        for tenant, group in groupby(ordered, key=lambda r: str(r["tenant"])):
            db.scope(conn, tenant)
            stmt = insert(transactions).values([dict(r) for r in group])
            updates = {
                name: stmt.excluded[name] for name in TRANSACTION_COLUMNS if name not in _KEY
            }
            stmt = stmt.on_conflict_do_update(
                index_elements=list(_KEY),
                set_=updates,
                where=sa.or_(
                    transactions.c.status == Status.PENDING,
                    stmt.excluded.status != Status.PENDING,
                ),
            )
            conn.execute(stmt)
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
