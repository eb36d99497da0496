"""Row-level security on PostgreSQL, proved with plain SQL as a real non-superuser role.

The role is made the way an operator would (``bustrail_grant_app_role``), logs in, and
acts for tenant A; every table and partition is probed for tenant B's rows, and every
kind of write is tried against them. Then the PayloadStore runs through the same role.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from bus.db import Database, new_transaction_id, normalize_url
from bus.errors import TransactionNotFound, TransactionUnavailable
from bus.models import Route, Status, Transaction
from bus.records import transaction_to_row, upsert_transactions
from bus.store import PayloadStore, StoreConfig, TransactionContext
from tests.helpers.roles import as_role, create_role, drop_role

pytestmark = pytest.mark.postgres

PAYLOAD_A = b"tenant A's payload " * 5000
PAYLOAD_B = b"tenant B's secret payload " * 5000
TABLES = ("transactions", "transactions_archive", "chunks")


@dataclass
class World:
    owner: Database  # the superuser that migrated the database (bypasses RLS)
    app_url: str  # the same database, as the non-superuser role
    role: str
    partition: str  # this month's partition of `transactions`
    a_id: uuid.UUID
    b_stored: uuid.UUID  # B's live, stored transaction (chunks in `chunks`)
    b_archived: uuid.UUID  # B's archived transaction
    b_future: uuid.UUID  # B's row in transactions_default (no partition for 2099)


@pytest.fixture
def world(pg_url: str) -> Iterator[World]:
    owner = Database(pg_url)
    role = create_role(owner)
    with owner.begin() as conn:
        is_super, bypass = conn.execute(
            sa.text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).one()
        assert not is_super and not bypass
    try:
        store = PayloadStore(owner, StoreConfig(chunk_bytes=64 * 1024))
        a = store.put(TransactionContext(tenant="A"), PAYLOAD_A)
        b_stored = store.put(TransactionContext(tenant="B"), PAYLOAD_B)
        b_archived = store.put(TransactionContext(tenant="B"), PAYLOAD_B)
        store.delete("B", b_archived.id)
        future_id, future_at = new_transaction_id(datetime(2099, 6, 1, tzinfo=UTC))
        upsert_transactions(
            owner,
            [
                transaction_to_row(
                    Transaction(
                        id=future_id,
                        created_at=future_at,
                        tenant="B",
                        route=Route.INLINE,
                        status=Status.DELIVERED,
                    )
                )
            ],
        )
        now = datetime.now(UTC)
        partition = f"transactions_y{now:%Y}m{now:%m}"
        with owner.begin() as conn:
            where = conn.execute(
                sa.text("SELECT tableoid::regclass::text, id FROM transactions")
            ).all()
        assert (partition, b_stored.id) in where
        assert ("transactions_default", future_id) in where
        yield World(
            owner,
            as_role(pg_url, role),
            role,
            partition,
            a.id,
            b_stored.id,
            b_archived.id,
            future_id,
        )
    finally:
        try:
            drop_role(owner, role)
        finally:
            owner.dispose()


@pytest.fixture
def app(world: World) -> Iterator[sa.Engine]:
    engine = sa.create_engine(normalize_url(world.app_url))
    yield engine
    engine.dispose()


def _tenant(conn: sa.Connection, tenant: str) -> None:
    conn.execute(sa.text("SELECT set_config('bustrail.tenant', :t, true)"), {"t": tenant})


def _rows(conn: sa.Connection, query: str, **params: object) -> list[sa.Row[tuple[object, ...]]]:
    return list(conn.execute(sa.text(query), params))


def _refused(engine: sa.Engine, tenant: str | None, statement: str, **params: object) -> str:
    """Run a write as the role; return the error PostgreSQL refused it with."""
    with pytest.raises(DBAPIError) as info, engine.begin() as conn:
        if tenant is not None:
            _tenant(conn, tenant)
        conn.execute(sa.text(statement), params)
    assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege), info.value
    return str(info.value.orig)


def test_the_role_is_really_subject_to_rls(app: sa.Engine, world: World) -> None:
    with app.connect() as conn:
        user, is_super = conn.execute(
            sa.text("SELECT current_user, current_setting('is_superuser')")
        ).one()
    assert (user, is_super) == (world.role, "off")


def test_tenant_a_sees_none_of_tenant_bs_rows(app: sa.Engine, world: World) -> None:
    b_ids = {world.b_stored, world.b_archived, world.b_future}
    with app.begin() as conn:
        _tenant(conn, "A")
        for table in TABLES:
            key = "transaction_id" if table == "chunks" else "id"
            tenants = {r[0] for r in _rows(conn, f"SELECT DISTINCT tenant FROM {table}")}
            assert tenants <= {"A"}, table
            assert _rows(conn, f"SELECT 1 FROM {table} WHERE tenant = 'B'") == [], table
            ids = {r[0] for r in _rows(conn, f"SELECT {key} FROM {table}")}
            assert not ids & b_ids, table
        assert {r[0] for r in _rows(conn, "SELECT id FROM transactions")} == {world.a_id}
        # B's payload bytes, asked for by id: nothing.
        got = _rows(conn, "SELECT data FROM chunks WHERE transaction_id = :id", id=world.b_stored)
        assert got == []
        got = _rows(conn, "SELECT sum(length(data)) FROM chunks WHERE tenant <> 'A'")
        assert got == [(None,)]
    # The owner (no RLS) sees B's rows: the probes above could have found them.
    with world.owner.begin() as conn:
        assert _rows(conn, "SELECT 1 FROM chunks WHERE transaction_id = :id", id=world.b_stored)
        assert _rows(conn, "SELECT 1 FROM transactions_archive WHERE id = :id", id=world.b_archived)


@pytest.mark.parametrize("which", ["default", "this month"])
def test_partitions_read_directly_show_nothing(app: sa.Engine, world: World, which: str) -> None:
    partition = "transactions_default" if which == "default" else world.partition
    with app.connect() as conn:
        conn.begin()
        _tenant(conn, "A")
        try:
            rows = _rows(conn, f"SELECT id, tenant FROM {partition}")
        except DBAPIError as exc:  # refused outright: no privilege on the partition
            assert isinstance(exc.orig, psycopg.errors.InsufficientPrivilege)
        else:  # or RLS with no policy: nothing at all
            assert rows == []
    with world.owner.begin() as conn:  # while the owner sees B's rows there
        tenants = {r[0] for r in _rows(conn, f"SELECT tenant FROM {partition}")}
        assert "B" in tenants


def test_tenant_a_cannot_change_or_delete_tenant_bs_rows(app: sa.Engine, world: World) -> None:
    def fingerprint() -> list[tuple[object, ...]]:
        with world.owner.begin() as conn:
            return [
                tuple(r)
                for table in TABLES
                for r in _rows(conn, f"SELECT * FROM {table} WHERE tenant = 'B' ORDER BY 1, 2")
            ]

    before = fingerprint()
    with app.begin() as conn:
        _tenant(conn, "A")
        for statement in (
            "UPDATE transactions SET status = 'corrupted' WHERE tenant = 'B'",
            "UPDATE transactions SET fetch_count = 99 WHERE id = :b",
            "UPDATE transactions_archive SET status = 'corrupted' WHERE tenant = 'B'",
            "UPDATE chunks SET data = '\\x00'::bytea WHERE transaction_id = :b",
            "DELETE FROM transactions WHERE tenant = 'B'",
            "DELETE FROM transactions WHERE id = :b",
            "DELETE FROM transactions_archive WHERE id = :archived",
            "DELETE FROM chunks WHERE transaction_id = :b",
            "DELETE FROM chunks WHERE tenant = 'B'",
        ):
            result = conn.execute(
                sa.text(statement), {"b": world.b_stored, "archived": world.b_archived}
            )
            assert result.rowcount == 0, statement
    assert fingerprint() == before

    # Moving one of A's own rows over to B is refused too.
    message = _refused(app, "A", "UPDATE transactions SET tenant = 'B' WHERE id = :a", a=world.a_id)
    assert "row-level security" in message
    assert fingerprint() == before


def test_tenant_a_cannot_insert_rows_claiming_tenant_b(app: sa.Engine, world: World) -> None:
    tx_id, created_at = new_transaction_id()
    columns = "(id, created_at, tenant, route, status)"
    for statement in (
        f"INSERT INTO transactions {columns} VALUES (:id, :at, 'B', 'inline', 'delivered')",
        f"INSERT INTO transactions_archive {columns[:-1]}, archived_at) "
        "VALUES (:id, :at, 'B', 'store', 'expired', now())",
        "INSERT INTO chunks (transaction_id, seq, tenant, checksum, data) "
        "VALUES (:id, 0, 'B', 'x', '\\x00'::bytea)",
    ):
        assert "row-level security" in _refused(app, "A", statement, id=tx_id, at=created_at)
    with world.owner.begin() as conn:
        for table, key in (("transactions", "id"), ("transactions_archive", "id")):
            assert _rows(conn, f"SELECT 1 FROM {table} WHERE {key} = :id", id=tx_id) == []
        assert _rows(conn, "SELECT 1 FROM chunks WHERE transaction_id = :id", id=tx_id) == []


def test_with_no_tenant_set_nothing_is_visible(app: sa.Engine, world: World) -> None:
    with app.connect() as conn:
        for table in TABLES:  # a fresh session: the setting was never set
            assert _rows(conn, f"SELECT 1 FROM {table}") == [], table
        conn.rollback()
        with conn.begin():  # set for one transaction only...
            _tenant(conn, "A")
            assert _rows(conn, "SELECT 1 FROM transactions")
        for table in TABLES:  # ...and gone after it (the setting now reads '')
            assert _rows(conn, f"SELECT 1 FROM {table}") == [], table
        conn.rollback()
    message = _refused(
        app,
        None,
        "INSERT INTO chunks (transaction_id, seq, tenant, checksum, data) "
        "VALUES (gen_random_uuid(), 0, 'A', 'x', '\\x00'::bytea)",
    )
    assert "row-level security" in message


def test_only_granted_roles_may_run_the_cross_tenant_maintenance(world: World) -> None:
    """bustrail_expire and bustrail_abandon_pending run as their owner, across tenants."""
    stranger = create_role(world.owner, "bustrail_stranger", grant=False)
    engine = sa.create_engine(normalize_url(as_role(world.app_url, stranger)))
    try:
        for call in (
            "SELECT bustrail_expire('2999-01-01', 10)",
            "SELECT bustrail_abandon_pending(interval '0 seconds', '2999-01-01')",
        ):
            with pytest.raises(DBAPIError) as info, engine.begin() as conn:
                conn.execute(sa.text(call))
            assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege), call
    finally:
        engine.dispose()
        drop_role(world.owner, stranger)
    with world.owner.begin() as conn:
        assert _rows(conn, "SELECT 1 FROM transactions WHERE id = :id", id=world.b_stored)


def test_the_store_works_through_the_role_for_its_own_tenant(world: World) -> None:
    db = Database(world.app_url)
    try:
        store = PayloadStore(db, StoreConfig(chunk_bytes=64 * 1024, ttl_seconds=60))
        record = store.put(TransactionContext(tenant="A", tool="echo"), iter([PAYLOAD_A] * 4))
        assert record.status is Status.STORED
        assert store.open("A", record.id).read_all() == PAYLOAD_A * 4
        assert store.info("A", record.id).fetch_count == 1
        assert store.open("A", world.a_id).read_all() == PAYLOAD_A

        for b_id in (world.b_stored, world.b_archived, world.b_future):
            with pytest.raises(TransactionNotFound):
                store.info("A", b_id)
        # Even claiming to be B, the store's own tenant filter and RLS agree on B's data.
        assert store.open("B", world.b_stored).read_all() == PAYLOAD_B

        store.delete("A", record.id)
        with pytest.raises(TransactionUnavailable):
            store.open("A", record.id)
        assert store.abandon_pending(3600) == 0
        expired = store.expire(datetime(2999, 1, 1, tzinfo=UTC))  # granted: runs as owner
        assert expired == 2  # A's and B's stored payloads, across tenants
    finally:
        db.dispose()


def test_the_role_cannot_switch_rls_off(app: sa.Engine) -> None:
    for statement in (
        "ALTER TABLE chunks DISABLE ROW LEVEL SECURITY",
        "DROP POLICY tenant_select ON transactions",
        "SET row_security = off; SELECT 1 FROM chunks",
    ):
        with pytest.raises(DBAPIError) as info, app.begin() as conn:
            conn.execute(sa.text(statement))
        assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege), statement
