"""Reading and writing transaction rows: the audit trail's data access.

One function per query, no policy: the router decides what a record says, the audit
writer decides when it is written, and this module only knows how.

Writes are upserts keyed by (id, created_at), so writing the same record twice (a spool
replayed after a crash) is harmless. A record never goes back to ``pending``: a late
"call started" record cannot undo the outcome that overtook it, nor the route of a store
in progress.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from itertools import groupby
from typing import Any

import psycopg
import psycopg.sql
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from bus.db import Database, as_utc, created_at_of
from bus.errors import StoreError
from bus.models import BreakerEvent, Route, Status, Transaction, TransactionArchive

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

    Several rows for one transaction collapse to the last, except that a ``pending`` row
    never replaces an outcome (the rule the upsert applies to rows already written). Text
    the database cannot hold is made storable (:func:`_storable`). On PostgreSQL the rows go
    through ``COPY`` into a temporary table and one ``INSERT ... SELECT`` per tenant,
    which is several times faster than a multi-row ``INSERT`` of the same rows.
    """
    latest: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    for row in rows:
        key = (row["id"], row["created_at"])
        earlier = latest.get(key)
        # As in the upsert below: a late "call started" never undoes an outcome.
        if (
            earlier is not None
            and row["status"] == Status.PENDING
            and earlier["status"] != Status.PENDING
        ):
            continue
        latest[key] = _storable(row)
    if not latest:
        return 0
    ordered = sorted(latest.values(), key=lambda r: str(r["tenant"]))
    with db.begin() as conn:
        if db.is_postgres:
            _copy_upsert(db, conn, ordered)
        else:
            # One statement, compiled once and cached, run as executemany for each run of
            # rows with the same columns: a multi-row VALUES compiled anew for every batch
            # cost ~0.6 ms a row (bench_daemon), holding the GIL from the event loop.
            for columns, group in groupby(ordered, key=tuple):
                if frozenset(columns) == _COLUMN_SET:
                    _sqlite_upsert(conn, list(group))
                else:
                    conn.execute(_SQLITE_UPSERT, list(group))
    return len(latest)


_TEXT_COLUMNS = tuple(c.name for c in transactions.columns if isinstance(c.type, sa.Text))
_text_values = operator.itemgetter(*_TEXT_COLUMNS)


def _storable(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The row with text both databases can hold; the row itself when it already is.

    Clients choose request ids and tools choose their error text: a NUL character
    (PostgreSQL text refuses it) or a lone surrogate (not encodable as UTF-8) would make
    every write of the batch fail, and the audit writer would spool it, and all behind
    it, forever. Each becomes U+FFFD instead.
    """
    try:
        values = _text_values(row)
    except KeyError:  # a partial row: look column by column
        values = tuple(row.get(name) for name in _TEXT_COLUMNS)
    # One look at all the text of the row (the audit writer's hot path), then details.
    text = "\n".join([v for v in values if isinstance(v, str)])
    if "\x00" not in text and (text.isascii() or _encodable(text)):
        return row
    fixed = dict(row)
    for name, value in zip(_TEXT_COLUMNS, values, strict=True):
        if isinstance(value, str):
            value = value.replace("\x00", "\ufffd")
            fixed[name] = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return fixed


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _on_conflict(stmt: Any) -> Any:
    return stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={name: stmt.excluded[name] for name in TRANSACTION_COLUMNS if name not in _KEY},
        where=sa.or_(
            stmt.excluded.status != Status.PENDING,
            # Pending over pending: only the store's row (route store) replaces the "call
            # started" one; a late "call started" never undoes a store in progress.
            sa.and_(transactions.c.status == Status.PENDING, stmt.excluded.route == Route.STORE),
        ),
    )


_SQLITE_UPSERT = _on_conflict(sqlite.insert(transactions))
_COLUMN_SET = frozenset(TRANSACTION_COLUMNS)  # a full row, as the audit writer submits
# Per parameter of the SQL: (its column, or None for a constant), bind processor, constant.
_Step = tuple[str | None, Callable[[Any], Any] | None, Any]


@functools.lru_cache(maxsize=8)  # one entry per engine's dialect
def _sqlite_plan(dialect: Any) -> tuple[str, list[_Step]]:
    """``_SQLITE_UPSERT`` compiled for ``dialect``, with each parameter's processor."""
    compiled = _SQLITE_UPSERT.compile(dialect=dialect, column_keys=TRANSACTION_COLUMNS)
    steps: list[_Step] = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if name in _COLUMN_SET:
            steps.append((name, process, None))
        else:  # a constant of the WHERE clause
            steps.append((None, None, process(bind.value) if process else bind.value))
    return str(compiled), steps


def _sqlite_upsert(conn: Connection, rows: list[Mapping[str, Any]]) -> None:
    """``_SQLITE_UPSERT`` run by the driver's ``executemany`` over tuples, each value
    converted by SQLAlchemy's own bind processor for its column (made once).

    Through ``conn.execute`` SQLAlchemy took every parameter of every row through its
    general machinery: a fifth of the audit writer's time on a small call
    (bench_daemon). Driver errors become StoreError, as SQLAlchemy's would.
    """
    sql, steps = _sqlite_plan(conn.dialect)
    params = [
        tuple(
            fixed if name is None else (process(row[name]) if process else row[name])
            for name, process, fixed in steps
        )
        for row in rows
    ]
    raw: Any = conn.connection.driver_connection
    try:
        with contextlib.closing(raw.cursor()) as cursor:
            cursor.executemany(sql, params)
    except sqlite3.Error as exc:
        raise StoreError(f"database error: {exc}") from exc


_STAGING = "bustrail_audit_staging"
_COLUMN_LIST = ", ".join(TRANSACTION_COLUMNS)
# One tenant's rows from the staging table, scoped to that tenant for row-level security.
_UPSERT_FROM_STAGING = psycopg.sql.SQL(
    "SELECT set_config('bustrail.tenant', {tenant}, true);\n"
    f"INSERT INTO transactions ({_COLUMN_LIST}) "
    f"SELECT {_COLUMN_LIST} FROM {_STAGING} WHERE tenant = {{tenant}} "
    "ON CONFLICT (id, created_at) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in TRANSACTION_COLUMNS if c not in _KEY)
    + " WHERE excluded.status <> 'pending'"
    " OR (transactions.status = 'pending' AND excluded.route = 'store')"
)


def _copy_upsert(db: Database, conn: Connection, rows: list[Mapping[str, Any]]) -> None:
    raw: Any = conn.connection.dbapi_connection
    try:
        _copy_upsert_raw(raw, rows)
    except psycopg.Error as exc:
        # Straight to psycopg, so SQLAlchemy cannot translate: a connection cut mid-COPY
        # must be a StoreError like any other (the breaker and the writer count on it).
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise StoreError(f"database error: {detail}") from exc


def _copy_upsert_raw(raw: Any, rows: list[Mapping[str, Any]]) -> None:
    with raw.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} "
            "(LIKE transactions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY {_STAGING} ({_COLUMN_LIST}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(_copy_values(row))
        # Every tenant's upsert in one round trip: with no parameters, psycopg uses the
        # simple query protocol, which takes several statements.
        tenants = [tenant for tenant, _group in groupby(rows, key=lambda r: str(r["tenant"]))]
        cur.execute(
            psycopg.sql.SQL(";\n").join(
                _UPSERT_FROM_STAGING.format(tenant=psycopg.sql.Literal(t)) for t in tenants
            )
        )


_row_values = operator.itemgetter(*TRANSACTION_COLUMNS)
_ENUM_POSITIONS = tuple(
    i for i, c in enumerate(transactions.columns) if isinstance(c.type, sa.Enum)
)


def _copy_values(row: Mapping[str, Any]) -> list[Any]:
    """The row's values in column order, enums as their values (the COPY hot path)."""
    values = list(_row_values(row))
    for i in _ENUM_POSITIONS:
        value = values[i]
        if isinstance(value, StrEnum):
            values[i] = value.value
    return values


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
