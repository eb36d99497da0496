"""Bringing a database's schema up to date: `bustrail db upgrade`.

PostgreSQL gets the numbered files of ``sql/migrations`` (the one source of truth for
its schema), each applied once, in order, in its own transaction, and recorded with its
checksum in ``schema_migrations``. SQLite gets the SQLModel tables (``create_all``), the
columns an older file lacks (``ALTER TABLE ... ADD COLUMN``: ``create_all`` only makes
missing tables) and the same version record, so both answer :func:`current_version`
alike. Running an upgrade twice changes nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import cast

import psycopg
import sqlalchemy as sa
from sqlmodel import SQLModel

from bus import models
from bus.db import Database, utcnow
from bus.errors import SchemaError

__all__ = [
    "Migration",
    "UpgradeResult",
    "current_version",
    "migrations",
    "require_schema",
    "upgrade",
]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class UpgradeResult:
    before: int
    after: int
    applied: list[int]


def _migrations_dir() -> Path:
    packaged = resources.files("bus") / "_sql" / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "sql" / "migrations"


def migrations() -> list[Migration]:
    """Every migration file, in order; refuses gaps and misnamed files."""
    found = []
    for path in sorted(_migrations_dir().glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise SchemaError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise SchemaError(f"migrations jump from {expected - 1} to {migration.version}")
    return found


def latest_version() -> int:
    return len(migrations())


_VERSIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL
)
"""


def current_version(db: Database) -> int:
    """The highest migration applied; 0 for an empty database."""
    with db.connect() as conn:
        if not sa.inspect(conn).has_table("schema_migrations"):
            return 0
        value = conn.execute(sa.text("SELECT max(version) FROM schema_migrations")).scalar()
    return int(value or 0)


def upgrade(db: Database, *, target: int | None = None) -> UpgradeResult:
    """Apply what is missing (up to version ``target``, default: all); return the
    versions before and after."""
    before = current_version(db)
    wanted = [m for m in migrations() if target is None or m.version <= target]
    applied: list[int] = []
    if db.is_postgres:
        with db.begin() as conn:
            conn.execute(sa.text(_VERSIONS_DDL))
            # One upgrader at a time, even with several daemons starting together.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
        for migration in wanted:
            with db.begin() as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
                done = conn.execute(
                    sa.text("SELECT checksum FROM schema_migrations WHERE version = :v"),
                    {"v": migration.version},
                ).scalar()
                if done is not None:
                    continue
                _run_script(conn, migration)
                _record(conn, migration)
                applied.append(migration.version)
        with db.begin() as conn:
            conn.execute(
                sa.text("SELECT bustrail_ensure_partitions(now() - interval '1 month', 4)")
            )
    else:
        SQLModel.metadata.create_all(db.engine, tables=_sqlite_tables())
        with db.begin() as conn:
            _sqlite_add_columns(conn)
            have = set(conn.execute(sa.text("SELECT version FROM schema_migrations")).scalars())
            for migration in wanted:
                if migration.version not in have:
                    _record(conn, migration)
                    applied.append(migration.version)
    return UpgradeResult(before=before, after=current_version(db), applied=applied)


def ensure_partitions(db: Database, months_ahead: int = 3) -> int:
    """PostgreSQL: create the monthly partitions of the coming months (0 on SQLite).

    `db upgrade` and `cleanup` call it: rows of a month without its partition land in
    the default partition, and that month's partition could then no longer be made.
    """
    if not db.is_postgres:
        return 0
    with db.begin() as conn:
        created = conn.execute(
            sa.text("SELECT bustrail_ensure_partitions(now(), :months)"),
            {"months": months_ahead + 1},
        ).scalar_one()
    return int(created)


def require_schema(db: Database) -> None:
    """Raise SchemaError with the fix when the database is not at the latest version."""
    version = current_version(db)
    latest = latest_version()
    if version < latest:
        raise SchemaError(
            f"database {db.safe_url} is at schema version {version}, this bustrail needs "
            f"{latest}: run `bustrail db upgrade`"
        )
    if version > latest:
        raise SchemaError(
            f"database {db.safe_url} is at schema version {version}, newer than this "
            f"bustrail knows ({latest}): upgrade bustrail"
        )


def _sqlite_tables() -> list[sa.Table]:
    return [
        cast(sa.Table, model.__table__)  # type: ignore[union-attr]
        for model in (
            models.Transaction,
            models.TransactionArchive,
            models.Chunk,
            models.BreakerEvent,
            models.Finding,
            models.AnalysisRun,
            models.SchemaMigration,
        )
    ]


def _sqlite_add_columns(conn: sa.Connection) -> None:
    """Add the model columns an SQLite file made by an older bustrail lacks.

    Only nullable columns without a default can be added to rows already there, which is
    how every column after version 1 has been added (on PostgreSQL too)."""
    for table in _sqlite_tables():
        have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable or column.primary_key:
                raise SchemaError(
                    f"cannot add column {table.name}.{column.name} to an existing SQLite "
                    "database: it is not nullable"
                )
            ddl = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {ddl}'))


def _run_script(conn: sa.Connection, migration: Migration) -> None:
    # Straight to psycopg: with no parameters it leaves `%` (format's %I) alone.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(migration.sql)
    except psycopg.Error as exc:
        raise SchemaError(
            f"migration {migration.version:04d}_{migration.name} failed: {exc}"
        ) from exc
    finally:
        cursor.close()


def _record(conn: sa.Connection, migration: Migration) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
            "VALUES (:v, :n, :c, :at)"
        ),
        {"v": migration.version, "n": migration.name, "c": migration.checksum, "at": utcnow()},
    )
