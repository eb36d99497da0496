"""Tests for bus.schema and sql/migrations: the SQLModel models and the PostgreSQL schema
agree column by column; upgrades are idempotent (library and CLI); a missing schema is
refused with the fix; monthly partitions are made, filled and dropped as designed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import SQLModel

from bus import models  # noqa: F401  (registers every table in SQLModel.metadata)
from bus.db import Database, new_transaction_id
from bus.errors import SchemaError
from bus.models import Route, Status, Transaction
from bus.records import archive, transaction_to_row, transactions, upsert_transactions
from bus.schema import current_version, migrations, require_schema, upgrade
from bus.store import PayloadStore
from tests.helpers.daemon import bustrail_cli

LATEST = len(migrations())

# information_schema/pg_type names -> a type family; SQLAlchemy's PostgreSQL DDL -> same.
PG_FAMILY = {
    "uuid": "uuid",
    "text": "text",
    "int8": "bigint",
    "int4": "integer",
    "float8": "double",
    "timestamptz": "timestamptz",
    "bytea": "bytea",
    "jsonb": "jsonb",
    "bool": "boolean",
}
SA_FAMILY = {
    "UUID": "uuid",
    "TEXT": "text",
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "DOUBLE PRECISION": "double",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "BYTEA": "bytea",
    "JSONB": "jsonb",
    "BOOLEAN": "boolean",
}


# The hourly rollup: kept from the rows by triggers, on PostgreSQL only (no model).
POSTGRES_ONLY = {
    "transactions_hourly",
    "transactions_hourly_tools",
    "transactions_hourly_errors",
    "transactions_hourly_pending",
    "transactions_hourly_flush",
}


def _model_columns() -> dict[str, dict[str, tuple[bool, str]]]:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    tables: dict[str, dict[str, tuple[bool, str]]] = {}
    for table in SQLModel.metadata.sorted_tables:
        columns = {}
        for column in table.columns:
            if isinstance(column.type, sa.Enum):
                family = f"enum:{column.type.name}"
            else:
                ddl = column.type.compile(dialect=dialect)
                family = SA_FAMILY.get(ddl, f"unmapped:{ddl}")
            columns[column.name] = (bool(column.nullable), family)
        tables[table.name] = columns
    return tables


def _pg_columns(conn: sa.Connection) -> dict[str, dict[str, tuple[bool, str]]]:
    rows = conn.execute(
        sa.text(
            """
            SELECT c.table_name, c.column_name, c.is_nullable = 'YES', t.typname, t.typtype
            FROM information_schema.columns c
            JOIN pg_class r ON r.relname = c.table_name
            JOIN pg_namespace n ON n.oid = r.relnamespace AND n.nspname = c.table_schema
            JOIN pg_type t ON t.typname = c.udt_name
            WHERE c.table_schema = 'public' AND NOT r.relispartition AND r.relkind IN ('r', 'p')
            """
        )
    )
    tables: dict[str, dict[str, tuple[bool, str]]] = {}
    for table, column, nullable, typname, typtype in rows:
        family = f"enum:{typname}" if typtype == "e" else PG_FAMILY.get(typname, typname)
        tables.setdefault(table, {})[column] = (nullable, family)
    return tables


def _primary_keys(conn: sa.Connection) -> dict[str, set[str]]:
    rows = conn.execute(
        sa.text(
            """
            SELECT tc.table_name, kcu.column_name
            FROM information_schema.table_constraints tc
            JOIN information_schema.key_column_usage kcu
              ON kcu.constraint_name = tc.constraint_name AND kcu.table_name = tc.table_name
            JOIN pg_class r ON r.relname = tc.table_name
                AND r.relnamespace = 'public'::regnamespace
            WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'public'
                AND NOT r.relispartition
            """
        )
    )
    keys: dict[str, set[str]] = {}
    for table, column in rows:
        keys.setdefault(table, set()).add(column)
    return keys


# -- (a) models and migrations agree ----------------------------------------------------------


@pytest.mark.postgres
def test_models_and_postgres_schema_agree_column_by_column(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        with db.connect() as conn:
            pg = _pg_columns(conn)
            pg_keys = _primary_keys(conn)
    finally:
        db.dispose()
    model = _model_columns()

    assert set(pg) >= POSTGRES_ONLY
    assert set(pg) - POSTGRES_ONLY == set(model), "tables in one and not the other"
    problems = []
    for table in sorted(model):
        for column in sorted(set(model[table]) | set(pg[table])):
            in_model, in_pg = model[table].get(column), pg[table].get(column)
            if in_model != in_pg:
                problems.append(f"{table}.{column}: model {in_model} != PostgreSQL {in_pg}")
    assert not problems, "\n".join(problems)
    assert not [c for t in model.values() for c in t.values() if c[1].startswith("unmapped")]

    model_keys = {
        t.name: {c.name for c in t.primary_key.columns} for t in SQLModel.metadata.sorted_tables
    }
    assert {t: keys for t, keys in pg_keys.items() if t not in POSTGRES_ONLY} == model_keys


@pytest.mark.postgres
def test_enum_labels_match_the_python_enums(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        with db.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) "
                    "FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname"
                )
            ).all()
    finally:
        db.dispose()
    pg = {name: list(labels) for name, labels in rows}
    python: dict[str, list[str]] = {}
    for table in SQLModel.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, sa.Enum):
                enum_class = column.type.enum_class
                assert enum_class is not None and issubclass(enum_class, StrEnum)
                python[str(column.type.name)] = [m.value for m in enum_class]
    assert pg == python


# -- (b) upgrade is idempotent ------------------------------------------------------------


def _catalog(db: Database) -> list[Any]:
    """Everything an upgrade could change, in a comparable form."""
    with db.connect() as conn:
        if not db.is_postgres:
            return list(conn.execute(sa.text("SELECT type, name, sql FROM sqlite_master")))
        queries = (
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public'",
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
            "SELECT tablename, policyname, cmd, qual, with_check FROM pg_policies",
            "SELECT proname, md5(prosrc), proacl::text FROM pg_proc "
            "WHERE pronamespace = 'public'::regnamespace",
            "SELECT relname, relrowsecurity FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace",
        )
        return [sorted(map(tuple, conn.execute(sa.text(q)))) for q in queries]


def _versions(db: Database) -> list[tuple[int, str]]:
    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT version, name FROM schema_migrations ORDER BY 1"))
        return [(int(v), str(n)) for v, n in rows]


@pytest.fixture
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with no schema at all, on each backend."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
        yield db
        db.dispose()
        return
    server = request.getfixturevalue("pg_server")
    name = server.create_database()
    db = Database(server.url_for(name))
    yield db
    db.dispose()
    server.drop_database(name)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("empty_db", BACKENDS, indirect=True)
def test_upgrade_twice_changes_nothing(empty_db: Database) -> None:
    assert current_version(empty_db) == 0
    first = upgrade(empty_db)
    assert (first.before, first.after, first.applied) == (0, LATEST, list(range(1, LATEST + 1)))
    catalog = _catalog(empty_db)
    versions = _versions(empty_db)
    assert versions == [(m.version, m.name) for m in migrations()]

    second = upgrade(empty_db)
    assert (second.before, second.after, second.applied) == (LATEST, LATEST, [])
    assert _catalog(empty_db) == catalog
    assert _versions(empty_db) == versions  # version 1 recorded once
    require_schema(empty_db)


def test_upgrade_on_the_db_fixture_is_a_no_op(db: Database) -> None:
    result = upgrade(db)
    assert result.applied == [] and result.after == LATEST
    assert [v for v, _ in _versions(db)].count(1) == 1


def _columns(db: Database, table: str) -> dict[str, bool]:
    """A table's columns and whether each is nullable, as the database has them."""
    with db.connect() as conn:
        return {c["name"]: bool(c["nullable"]) for c in sa.inspect(conn).get_columns(table)}


def _version_2_row(now: datetime, age: timedelta, **values: Any) -> dict[str, Any]:
    """A row as bustrail at schema version 2 wrote it: no daemon_id."""
    tx_id, created_at = new_transaction_id(now - age)
    record = Transaction(
        id=tx_id, created_at=created_at, tenant="acme", route=Route.INLINE, status=Status.DELIVERED
    )
    for name, value in values.items():
        setattr(record, name, value)
    return {k: v for k, v in transaction_to_row(record).items() if k != "daemon_id"}


@pytest.mark.parametrize("empty_db", BACKENDS, indirect=True)
def test_a_database_at_version_2_with_rows_upgrades_keeping_them(empty_db: Database) -> None:
    db, now = empty_db, datetime.now(UTC)
    assert upgrade(db, target=2).after == 2
    if not db.is_postgres:
        # An SQLite file made by bustrail at version 2: its tables had no daemon_id yet
        # (create_all makes the tables of today's models, so take the column away).
        with db.begin() as conn:
            for table in ("transactions", "transactions_archive"):
                conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN daemon_id"))
    assert "daemon_id" not in _columns(db, "transactions")
    inline = _version_2_row(now, timedelta(hours=2))
    due = _version_2_row(
        now,
        timedelta(hours=1),
        route=Route.STORE,
        status=Status.STORED,
        expires_at=now - timedelta(minutes=1),
    )
    gone = {**_version_2_row(now, timedelta(days=3), status=Status.EXPIRED), "archived_at": now}
    with db.begin() as conn:
        conn.execute(transactions.insert(), [inline, due])
        conn.execute(archive.insert(), [gone])

    result = upgrade(db)

    assert (result.before, result.after, result.applied) == (2, LATEST, list(range(3, LATEST + 1)))
    model = {c.name: bool(c.nullable) for c in transactions.columns}
    assert _columns(db, "transactions") == model
    assert _columns(db, "transactions_archive") == {**model, "archived_at": False}
    # Rows written from now on name their daemon; expiry archives both kinds as they are.
    new = {
        **_version_2_row(now, timedelta(minutes=30), route=Route.STORE, status=Status.STORED),
        "expires_at": now - timedelta(seconds=1),
        "daemon_id": "d:1",
    }
    upsert_transactions(db, [new])
    assert PayloadStore(db).expire(now) == 2
    with db.connect() as conn:
        live = dict(conn.execute(sa.select(transactions.c.id, transactions.c.daemon_id)).all())
        archived = dict(conn.execute(sa.select(archive.c.id, archive.c.daemon_id)).all())
        if db.is_postgres:  # 0003 replaced bustrail_expire: as privileged and pinned as before
            expire = "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'bustrail_expire'"
            definer, config = conn.execute(sa.text(expire)).one()
            assert definer and config == ["search_path=pg_catalog, public, pg_temp"]
    assert live == {inline["id"]: None}
    assert archived == {gone["id"]: None, due["id"]: None, new["id"]: "d:1"}

    catalog = _catalog(db)
    assert upgrade(db).applied == []
    assert _catalog(db) == catalog
    require_schema(db)


# -- (c) the command line ------------------------------------------------------------------


@pytest.mark.parametrize("empty_db", BACKENDS, indirect=True)
def test_cli_db_upgrade(empty_db: Database, tmp_path: Path) -> None:
    url = empty_db.url.replace("postgresql+psycopg://", "postgresql://")
    first = bustrail_cli(["db", "upgrade"], url, tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"schema 0 -> {LATEST}" in first.stdout
    assert "applied 0001" in first.stdout
    assert "Traceback" not in first.stderr

    second = bustrail_cli(["db", "upgrade"], url, tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"already at version {LATEST}" in second.stdout
    assert "nothing to do" in second.stdout
    assert _versions(empty_db) == [(m.version, m.name) for m in migrations()]


def test_cli_db_upgrade_with_an_unreachable_database_says_so(tmp_path: Path) -> None:
    done = bustrail_cli(
        ["db", "upgrade"], "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", tmp_path
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("bustrail:")


# -- (d) a missing schema --------------------------------------------------------------------


@pytest.mark.parametrize("empty_db", BACKENDS, indirect=True)
def test_require_schema_on_an_empty_database_says_how_to_fix_it(empty_db: Database) -> None:
    with pytest.raises(SchemaError) as info:
        require_schema(empty_db)
    message = str(info.value)
    assert "run `bustrail db upgrade`" in message
    assert f"schema version 0, this bustrail needs {LATEST}" in message

    upgrade(empty_db)
    require_schema(empty_db)
    with empty_db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                "VALUES (:v, 'from_the_future', 'x', :at)"
            ),
            {"v": LATEST + 1, "at": datetime.now(UTC)},
        )
    with pytest.raises(SchemaError, match="newer than this bustrail knows"):
        require_schema(empty_db)


# -- (e) partitions ---------------------------------------------------------------------------


def _month(at: datetime, months: int = 0) -> datetime:
    index = at.year * 12 + at.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _partitions(conn: sa.Connection) -> dict[str, tuple[datetime, datetime] | None]:
    rows = conn.execute(
        sa.text(
            """
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'transactions'::regclass
            """
        )
    ).all()
    out: dict[str, tuple[datetime, datetime] | None] = {}
    for name, bound in rows:
        if bound == "DEFAULT":
            out[name] = None
            continue
        low, high = conn.execute(
            sa.text(
                "SELECT (regexp_match(:b, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz, "
                "(regexp_match(:b, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz"
            ),
            {"b": bound},
        ).one()
        out[name] = (low, high)
    return out


def _row(at: datetime, tenant: str = "acme") -> tuple[Any, dict[str, Any]]:
    tx_id, created_at = new_transaction_id(at)
    record = Transaction(
        id=tx_id, created_at=created_at, tenant=tenant, route=Route.INLINE, status=Status.DELIVERED
    )
    return tx_id, transaction_to_row(record)


@pytest.mark.postgres
def test_partitions_are_monthly_and_rows_land_in_theirs(pg_url: str) -> None:
    db = Database(pg_url)
    now = datetime.now(UTC)
    this_month = _month(now)
    try:
        with db.connect() as conn:
            parts = _partitions(conn)
        expected = {
            f"transactions_y{m:%Y}m{m:%m}": (m, _month(m, 1))
            for m in (_month(now, k) for k in (-1, 0, 1, 2))
        }
        for name, bounds in expected.items():
            assert parts.get(name) == bounds, name
        assert parts["transactions_default"] is None

        placed = {
            "this month": (now, f"transactions_y{this_month:%Y}m{this_month:%m}"),
            "last month": (
                this_month - timedelta(seconds=1),
                f"transactions_y{_month(now, -1):%Y}m{_month(now, -1):%m}",
            ),
            "next month starts": (
                _month(now, 1),
                f"transactions_y{_month(now, 1):%Y}m{_month(now, 1):%m}",
            ),
            "no partition yet": (datetime(2099, 1, 1, tzinfo=UTC), "transactions_default"),
        }
        ids = {}
        for label, (at, _) in placed.items():
            tx_id, row = _row(at)
            ids[label] = tx_id
            upsert_transactions(db, [row])
        with db.connect() as conn:
            query = sa.text("SELECT id, tableoid::regclass::text FROM transactions")
            where = {tx_id: partition for tx_id, partition in conn.execute(query)}
        for label, (_, partition) in placed.items():
            assert where[ids[label]] == partition, label

        with db.begin() as conn:
            assert (
                conn.execute(sa.text("SELECT bustrail_ensure_partitions(now(), 3)")).scalar() == 0
            )
            dropped = list(
                conn.execute(
                    sa.text("SELECT bustrail_drop_partitions_before(:at)"), {"at": this_month}
                ).scalars()
            )
        last = f"transactions_y{_month(now, -1):%Y}m{_month(now, -1):%m}"
        assert dropped == [last]
        with db.connect() as conn:
            parts_after = _partitions(conn)
            left = {r[0] for r in conn.execute(sa.text("SELECT id FROM transactions"))}
        assert last not in parts_after
        assert set(parts_after) == set(parts) - {last}
        assert left == set(ids.values()) - {ids["last month"]}  # its rows went with it
    finally:
        db.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("zone", ["America/New_York", "Pacific/Auckland", "UTC"])
def test_partition_bounds_do_not_depend_on_the_session_time_zone(pg_url: str, zone: str) -> None:
    db = Database(pg_url)
    try:
        with db.begin() as conn:
            conn.execute(sa.text("SELECT set_config('TimeZone', :z, true)"), {"z": zone})
            made = conn.execute(
                sa.text("SELECT bustrail_ensure_partitions('2031-02-15T12:00:00Z', 3)")
            ).scalar()
            assert made == 3
        with db.connect() as conn:
            parts = _partitions(conn)
        for month in (2, 3, 4):
            start = datetime(2031, month, 1, tzinfo=UTC)
            assert parts[f"transactions_y2031m{month:02d}"] == (start, _month(start, 1))
    finally:
        db.dispose()


@pytest.mark.postgres
def test_ensure_partitions_creates_the_coming_months(pg_url: str) -> None:
    from bus.schema import ensure_partitions

    db = Database(pg_url)
    try:
        with db.connect() as conn:
            before = set(
                conn.execute(
                    sa.text(
                        "SELECT relname FROM pg_class "
                        "WHERE relname LIKE 'transactions_y%' AND relkind = 'r'"
                    )
                ).scalars()
            )
        created = ensure_partitions(db, months_ahead=6)
        with db.connect() as conn:
            after = set(
                conn.execute(
                    sa.text(
                        "SELECT relname FROM pg_class "
                        "WHERE relname LIKE 'transactions_y%' AND relkind = 'r'"
                    )
                ).scalars()
            )
        assert created == len(after - before) >= 3  # upgrade made about two months ahead
        assert ensure_partitions(db, months_ahead=6) == 0  # nothing twice
    finally:
        db.dispose()
