"""Named SQL: the analysis queries live in ``analysis/sql/*.sql`` (blocks opened by
``-- name: NAME``, see :mod:`bus.namedsql`); Python uses their names.

:func:`read_frame` runs one block and hands back a DataFrame. Parameters are bound with
their types declared (timestamps as UTC ``DateTime``, lists expanded into ``IN (...)``),
so SQLite compares timestamps in the exact text form bustrail stores them in.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bus.namedsql import NamedSQL, parse_blocks

__all__ = [
    "canonical_id",
    "parse_blocks",
    "queries",
    "query",
    "read_frame",
    "read_sql_frame",
    "statement",
]

SQL_DIR = Path(__file__).resolve().parent / "sql"
_SQL = NamedSQL(SQL_DIR)


def queries() -> dict[str, str]:
    """Every block of every file in ``analysis/sql``."""
    return _SQL.blocks


def query(name: str, dialect: str) -> str:
    """The SQL of ``name`` for ``dialect`` (``postgresql`` or ``sqlite``)."""
    return _SQL.query(name, dialect)


def _bind(name: str, value: Any) -> sa.BindParameter[Any]:
    if isinstance(value, datetime):
        return sa.bindparam(name, type_=sa.DateTime(timezone=True))
    if isinstance(value, list | tuple | set | frozenset):
        return sa.bindparam(name, expanding=True)
    if isinstance(value, bool):
        return sa.bindparam(name, type_=sa.Boolean())
    if isinstance(value, int):
        return sa.bindparam(name, type_=sa.BigInteger())
    if isinstance(value, float):
        return sa.bindparam(name, type_=sa.Float())
    return sa.bindparam(name, type_=sa.Text())


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive timestamp {value.isoformat()}: give it a time zone (UTC)")
        # SQLite keeps timestamps as UTC text without an offset: compare in UTC.
        return value.astimezone(UTC)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    return value


def statement(sql: str, params: Mapping[str, Any]) -> sa.TextClause:
    """``sql`` with each parameter's type declared from its value."""
    return sa.text(sql).bindparams(*(_bind(name, value) for name, value in params.items()))


def read_frame(
    conn: Connection, name: str, dialect: str, params: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Run the named query; its rows as a DataFrame (its columns even when empty).

    Only the parameters the query names are bound, so callers may pass a common set.
    """
    sql = query(name, dialect)
    used = {k: v for k, v in (params or {}).items() if re.search(rf":{k}\b", sql)}
    return read_sql_frame(conn, sql, used)


def read_sql_frame(
    conn: Connection, sql: str, params: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Run ``sql``; its rows as a DataFrame. The one way analysis loads rows."""
    values = {k: _value(v) for k, v in (params or {}).items()}
    result = conn.execute(statement(sql, values), values)
    columns = list(result.keys())
    return pd.DataFrame.from_records(result.fetchall(), columns=columns)


def canonical_id(value: Any) -> str:
    """A transaction id as text with dashes, whichever form the backend returned
    (PostgreSQL: a UUID; SQLite: 32 hex digits)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(uuid.UUID(str(value)))
