"""The hourly rollup on PostgreSQL (sql/migrations/0002): after every kind of write the
audit trail sees, its three tables equal a GROUP BY over the rows of ``transactions`` and
``transactions_archive``, to the last transaction and byte.

A seeded random sequence drives the real code paths: the audit writer's upserts (a call
started, then its outcome; late "call started" rows that must change nothing), the
payload store (put, fetch, delete, expiry through ``bustrail_expire``, crash recovery),
plain SQL updates and deletes, rolled back transactions and savepoints, a partition
drop, TRUNCATE. Then concurrent writers, to show the merge at commit never deadlocks; a
non-superuser role; and the backfill of ``bustrail db upgrade`` on a database that
already holds rows.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from bus.db import Database, new_transaction_id
from bus.errors import TransactionNotFound, TransactionUnavailable
from bus.models import Route, Status, Transaction
from bus.records import transaction_to_row, upsert_transactions
from bus.schema import current_version, upgrade
from bus.store import PayloadStore, StoreConfig, TransactionContext
from tests.helpers import roles
from tests.helpers.daemon import bustrail_cli

pytestmark = pytest.mark.postgres

TENANTS = ("acme", "globex", "initech")
TOOLS = ("echo", "generate", "search", None)
ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"
AUDIT = f"""
    WITH audit AS (
        SELECT date_bin('1 hour', created_at, {ORIGIN}) AS hour, tenant, tool, route, status,
               error_kind, size, stored_size, tool_ms, store_ms
        FROM transactions
        UNION ALL
        SELECT date_bin('1 hour', created_at, {ORIGIN}), tenant, tool, route, status,
               error_kind, size, stored_size, tool_ms, store_ms
        FROM transactions_archive
    )
"""
FAILED = "status IN ('failed', 'rejected', 'corrupted')"
# table: (the rollup's key and figures, the same from the rows), in the same order.
EXPECTED = {
    "transactions_hourly": (
        "SELECT hour, tenant, route::text, status::text, transactions, bytes, stored_bytes, "
        "tool_n, store_n, tool_ms_sum, store_ms_sum FROM transactions_hourly",
        AUDIT + "SELECT hour, tenant, route::text, status::text, count(*), sum(size), "
        "coalesce(sum(stored_size), 0), count(tool_ms), count(store_ms), "
        "coalesce(sum(tool_ms), 0), coalesce(sum(store_ms), 0) FROM audit GROUP BY 1, 2, 3, 4",
    ),
    "transactions_hourly_tools": (
        "SELECT hour, tenant, tool, transactions, failed, bytes, tool_n, tool_ms_sum "
        "FROM transactions_hourly_tools",
        AUDIT + f"SELECT hour, tenant, tool, count(*), count(*) FILTER (WHERE {FAILED}), "
        "sum(size), count(tool_ms), coalesce(sum(tool_ms), 0) FROM audit GROUP BY 1, 2, 3",
    ),
    "transactions_hourly_errors": (
        "SELECT hour, tenant, error_kind, transactions, failed FROM transactions_hourly_errors",
        AUDIT + f"SELECT hour, tenant, error_kind, count(*), count(*) FILTER (WHERE {FAILED}) "
        "FROM audit WHERE error_kind IS NOT NULL GROUP BY 1, 2, 3",
    ),
}
KEYS = {"transactions_hourly": 4, "transactions_hourly_tools": 3, "transactions_hourly_errors": 3}


def _keyed(conn: sa.Connection, sql: str, width: int) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    return {tuple(row[:width]): tuple(row[width:]) for row in conn.execute(sa.text(sql))}


def rollup_differences(db: Database) -> list[str]:
    """Where the rollup and the rows disagree (latency sums: to float rounding)."""
    problems = []
    with db.begin() as conn:
        for table, (rollup_sql, rows_sql) in EXPECTED.items():
            width = KEYS[table]
            have = _keyed(conn, rollup_sql, width)
            want = _keyed(conn, rows_sql, width)
            for key in sorted(have.keys() | want.keys(), key=repr):
                got, expected = have.get(key), want.get(key)
                if got is None or expected is None or not _same(got, expected):
                    problems.append(f"{table} {key}: rollup {got} != rows {expected}")
        pending = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM transactions_hourly_pending) "
                "+ (SELECT count(*) FROM transactions_hourly_flush)"
            )
        ).scalar_one()
        if pending:
            problems.append(f"{pending} pending changes left after commit")
    return problems


def _same(got: tuple[Any, ...], expected: tuple[Any, ...]) -> bool:
    for a, b in zip(got, expected, strict=True):
        if isinstance(a, float) or isinstance(b, float):
            if a != pytest.approx(float(b), rel=1e-9, abs=1e-6):
                return False
        elif int(a) != int(b):
            return False
    return True


def assert_exact(db: Database, after: str = "") -> None:
    problems = rollup_differences(db)
    assert not problems, f"after {after}:\n" + "\n".join(problems[:20])


def _count(db: Database, sql: str) -> int:
    with db.begin() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


# -- a realistic, seeded sequence of writes ---------------------------------------------------
class Workload:
    """The writes a daemon, its store and an operator make, picked at random."""

    def __init__(self, db: Database, seed: int) -> None:
        self.db = db
        self.rng = random.Random(seed)
        self.now = datetime.now(UTC)
        self.store = PayloadStore(db, StoreConfig(chunk_bytes=4096, ttl_seconds=3600))
        self.pending: list[dict[str, Any]] = []
        self.finished: list[dict[str, Any]] = []
        self.stored: list[Transaction] = []
        self.dropped_partition = False

    def _at(self) -> datetime:
        if self.rng.random() < 0.1:  # last month's partition (dropped later on)
            first = self.now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            return first - timedelta(hours=self.rng.uniform(1, 30))
        return self.now - timedelta(minutes=self.rng.uniform(0, 300))

    def _row(self, **values: Any) -> dict[str, Any]:
        tx_id, created_at = new_transaction_id(self._at())
        fields: dict[str, Any] = {
            "tenant": self.rng.choice(TENANTS),
            "tool": self.rng.choice(TOOLS),
            "route": Route.INLINE,
            "status": Status.PENDING,
            **values,
        }
        return transaction_to_row(Transaction(id=tx_id, created_at=created_at, **fields))

    def start_calls(self) -> None:
        rows = [self._row() for _ in range(self.rng.randint(1, 12))]
        upsert_transactions(self.db, rows)
        self.pending += rows

    def finish_calls(self) -> None:
        """Outcomes of calls started earlier, with new calls in the same batch (an upsert
        that inserts and updates at once)."""
        self.rng.shuffle(self.pending)
        done, self.pending = self.pending[:6], self.pending[6:]
        batch = []
        for row in done:
            outcome = dict(row, size=self.rng.randint(0, 50_000), tool_ms=self._ms())
            if self.rng.random() < 0.25:
                outcome.update(
                    status=Status.FAILED, error_kind=self.rng.choice(["timeout", "boom"])
                )
            else:
                outcome.update(status=Status.DELIVERED)
                if self.rng.random() < 0.2:
                    outcome.update(route=Route.FALLBACK)
            batch.append(outcome)
        fresh = [self._row(size=5, tool_ms=self._ms(), status=Status.DELIVERED) for _ in range(3)]
        upsert_transactions(self.db, batch + fresh)
        self.finished += batch + fresh

    def late_call_started(self) -> None:
        """A spooled "call started" replayed after its outcome: changes nothing."""
        if self.finished:
            late = [dict(r, status=Status.PENDING, tool_ms=None) for r in self.finished[-4:]]
            upsert_transactions(self.db, late)

    def _ms(self) -> float:
        return round(self.rng.lognormvariate(3, 1), 3)

    def put_payload(self) -> None:
        tx_id, created_at = new_transaction_id(self._at())
        context = TransactionContext(
            tenant=self.rng.choice(TENANTS),
            tool=self.rng.choice(TOOLS),
            tool_ms=self._ms(),
            transaction_id=tx_id,
            created_at=created_at,
            hint="looks_like_error" if self.rng.random() < 0.2 else None,
        )
        payload = self.rng.randbytes(self.rng.randint(10, 20_000))
        self.stored.append(self.store.put(context, payload))

    def fetch_payload(self) -> None:
        if self.stored:
            record = self.rng.choice(self.stored)
            # Archived by now, or gone: nothing to fetch.
            with contextlib.suppress(TransactionNotFound, TransactionUnavailable):
                self.store.open(record.tenant, record.id).read_all()

    def delete_payload(self) -> None:
        if self.stored:
            record = self.stored.pop(self.rng.randrange(len(self.stored)))
            rejected = ("upload_damaged", "bad bytes") if self.rng.random() < 0.3 else None
            # Its partition dropped, or the archive emptied: nothing to delete.
            with contextlib.suppress(TransactionNotFound):
                self.store.delete(record.tenant, record.id, rejected=rejected)

    def expire(self) -> None:
        self.store.expire(self.now + timedelta(hours=self.rng.choice([0.5, 2, 48])), batch=7)

    def abandon(self) -> None:
        self.store.abandon_pending(self.rng.choice([60, 3600]), now=self.now)

    def sql_update(self) -> None:
        """An operator's fix: a different tool, a bigger size (key and figures change;
        not of stored payloads, whose size their bytes are checked against)."""
        with self.db.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE transactions SET tool = 'renamed', size = size + 1 "
                    "WHERE id IN (SELECT id FROM transactions WHERE route <> 'store' "
                    "ORDER BY random() LIMIT 5)"
                )
            )
            conn.execute(
                sa.text(
                    "UPDATE transactions_archive SET tenant = 'globex' "
                    "WHERE id IN (SELECT id FROM transactions_archive ORDER BY random() LIMIT 2)"
                )
            )

    def sql_delete(self) -> None:
        with self.db.begin() as conn:
            conn.execute(
                sa.text(
                    "DELETE FROM transactions "
                    "WHERE id IN (SELECT id FROM transactions ORDER BY random() LIMIT 3)"
                )
            )
            conn.execute(
                sa.text(
                    "DELETE FROM transactions_archive "
                    "WHERE id IN (SELECT id FROM transactions_archive ORDER BY random() LIMIT 2)"
                )
            )

    def rolled_back(self) -> None:
        """Writes of a transaction that fails count for nothing."""
        rows = [self._row() for _ in range(4)]
        with pytest.raises(RuntimeError), self.db.begin() as conn:
            conn.execute(sa.insert(Transaction.__table__), rows)  # type: ignore[attr-defined]
            conn.execute(sa.text("DELETE FROM transactions_archive"))
            raise RuntimeError("changed my mind")

    def savepoint(self) -> None:
        """A savepoint rolled back, then more writes, in one transaction."""
        kept = [self._row(status=Status.DELIVERED, tool_ms=self._ms()) for _ in range(3)]
        with self.db.begin() as conn:
            table = Transaction.__table__  # type: ignore[attr-defined]
            nested = conn.begin_nested()
            conn.execute(sa.insert(table), [self._row() for _ in range(3)])
            nested.rollback()
            conn.execute(sa.insert(table), kept)
        self.finished += kept

    def drop_last_month(self) -> None:
        if not self.dropped_partition:
            first = self.now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            with self.db.begin() as conn:
                conn.execute(sa.text("SELECT bustrail_drop_partitions_before(:at)"), {"at": first})
            self.dropped_partition = True
            self.pending = [r for r in self.pending if r["created_at"] >= first]

    def truncate_archive(self) -> None:
        with self.db.begin() as conn:
            conn.execute(sa.text("TRUNCATE transactions_archive"))

    def steps(self) -> list[tuple[Callable[[], None], int]]:
        return [
            (self.start_calls, 6),
            (self.finish_calls, 6),
            (self.late_call_started, 2),
            (self.put_payload, 4),
            (self.fetch_payload, 3),
            (self.delete_payload, 2),
            (self.expire, 1),
            (self.abandon, 1),
            (self.sql_update, 1),
            (self.sql_delete, 1),
            (self.rolled_back, 1),
            (self.savepoint, 1),
            (self.drop_last_month, 1),
            (self.truncate_archive, 1),
        ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rollup_equals_the_rows_after_every_write(pg_url: str, seed: int) -> None:
    db = Database(pg_url)
    try:
        work = Workload(db, seed)
        steps, weights = zip(*work.steps(), strict=True)
        done = []
        for _ in range(60):
            step = work.rng.choices(steps, weights)[0]
            step()
            done.append(step.__name__)
            assert_exact(db, " > ".join(done[-5:]))
        assert _count(db, "SELECT count(*) FROM transactions_hourly") > 0
        assert _count(db, "SELECT count(*) FROM transactions_hourly_errors") > 0
    finally:
        db.dispose()


def test_rows_whose_count_comes_to_zero_go(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        work = Workload(db, 7)
        for _ in range(5):
            work.start_calls()
            work.finish_calls()
        assert _count(db, "SELECT count(*) FROM transactions_hourly") > 0
        with db.begin() as conn:
            conn.execute(sa.text("DELETE FROM transactions"))
        assert_exact(db, "deleting every row")
        for table in EXPECTED:
            assert _count(db, f"SELECT count(*) FROM {table}") == 0, table
    finally:
        db.dispose()


def test_rebuild_recounts_what_writing_a_partition_directly_skipped(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        work = Workload(db, 11)
        work.start_calls()
        partition = f"transactions_y{work.now:%Y}m{work.now:%m}"
        with db.begin() as conn:  # a partition written directly: no trigger of the parent
            conn.execute(sa.text(f"UPDATE {partition} SET size = size + 1000"))
        assert rollup_differences(db)
        with db.begin() as conn:
            counted = conn.execute(sa.text("SELECT bustrail_hourly_rebuild()")).scalar_one()
        assert counted == _count(
            db,
            "SELECT (SELECT count(*) FROM transactions) "
            "+ (SELECT count(*) FROM transactions_archive)",
        )
        assert_exact(db, "rebuild")
    finally:
        db.dispose()


# -- concurrent daemons -------------------------------------------------------------------------
def test_concurrent_writers_never_deadlock_and_stay_exact(pg_url: str) -> None:
    """Writers whose transactions touch the same hours' rollup rows in every order: audit
    batches over several tenants (each an upsert that inserts and updates), stored
    payloads archived, expiry and crash recovery across tenants, all at once."""
    db = Database(pg_url, pool_size=8)
    errors: list[BaseException] = []
    now = datetime.now(UTC)
    kept = PayloadStore(db, StoreConfig(chunk_bytes=4096, ttl_seconds=100 * 3600))
    expiring = PayloadStore(db, StoreConfig(chunk_bytes=4096, ttl_seconds=1))

    def row(rng: random.Random, status: Status, ago: float, **values: Any) -> dict[str, Any]:
        tx_id, created_at = new_transaction_id(now - timedelta(minutes=ago))
        record = Transaction(
            id=tx_id,
            created_at=created_at,
            tenant=rng.choice(TENANTS),
            tool=rng.choice(TOOLS),
            route=Route.INLINE,
            status=status,
            **values,
        )
        return transaction_to_row(record)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        started: list[dict[str, Any]] = []
        for _ in range(25):
            fresh = [
                row(rng, Status.PENDING, rng.uniform(0, 110)) for _ in range(rng.randint(1, 8))
            ]
            outcomes = [
                dict(r, status=rng.choice([Status.DELIVERED, Status.FAILED]), tool_ms=1.5)
                for r in started
            ]
            upsert_transactions(db, fresh + outcomes)
            started = fresh

    def payloads(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(15):
            record = kept.put(TransactionContext(tenant=rng.choice(TENANTS)), b"x" * 5000)
            if rng.random() < 0.5:
                kept.delete(record.tenant, record.id)

    def maintenance(seed: int) -> None:
        """Expiry and crash recovery, across tenants, of rows only they touch (rows two
        statements update at once may deadlock with or without a rollup)."""
        rng = random.Random(seed)
        for _ in range(15):
            expiring.put(TransactionContext(tenant=rng.choice(TENANTS)), b"y" * 3000)
            upsert_transactions(db, [row(rng, Status.PENDING, 150) for _ in range(3)])
            expiring.expire(now + timedelta(hours=1), batch=3)
            expiring.abandon_pending(2 * 3600)

    def guarded(target: Callable[[int], None], seed: int) -> None:
        try:
            target(seed)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    try:
        jobs = [writer] * 4 + [payloads] * 2 + [maintenance]
        threads = [
            threading.Thread(target=guarded, args=(job, seed)) for seed, job in enumerate(jobs)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        assert not [t for t in threads if t.is_alive()], "a writer hangs"
        assert not errors, [repr(e) for e in errors]
        assert_exact(db, "concurrent writers")
        assert _count(db, "SELECT count(*) FROM transactions_archive") > 0
    finally:
        db.dispose()


# -- a non-superuser daemon role -----------------------------------------------------------------
@pytest.fixture
def app_role(pg_url: str) -> Iterator[tuple[Database, Database]]:
    """(the owner, the same database as a role made with bustrail_grant_app_role)."""
    owner = Database(pg_url)
    try:
        with roles.app_role(pg_url) as url:
            app = Database(url)
            try:
                yield owner, app
            finally:
                app.dispose()
    finally:
        owner.dispose()


def test_a_daemon_role_writes_through_the_rollup_and_reads_only_its_tenant(
    app_role: tuple[Database, Database],
) -> None:
    owner, app = app_role
    work = Workload(app, 5)
    for step in (work.start_calls, work.finish_calls, work.put_payload, work.put_payload):
        step()
    work.fetch_payload()
    work.delete_payload()
    work.store.expire(work.now + timedelta(hours=2))
    assert_exact(owner, "the role's writes")

    with app.begin("acme") as conn:
        tenants = set(conn.execute(sa.text("SELECT tenant FROM transactions_hourly")).scalars())
        assert tenants <= {"acme"}
        for table in ("transactions_hourly_tools", "transactions_hourly_errors"):
            assert set(conn.execute(sa.text(f"SELECT tenant FROM {table}")).scalars()) <= {"acme"}
        mine = conn.execute(sa.text("SELECT sum(transactions) FROM transactions_hourly")).scalar()
    with owner.begin() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM transactions WHERE tenant = 'acme') "
                "+ (SELECT count(*) FROM transactions_archive WHERE tenant = 'acme')"
            )
        ).scalar_one()
    assert int(mine or 0) == rows

    for statement in (
        "INSERT INTO transactions_hourly VALUES (now(), 'acme', 'inline', 'delivered', "
        "1, 1, 0, 0, 0, 0, 0)",
        "UPDATE transactions_hourly SET transactions = 0",
        "SELECT * FROM transactions_hourly_pending",
        "SELECT bustrail_hourly_rebuild()",
    ):
        with pytest.raises(DBAPIError) as info, app.engine.begin() as conn:
            app.scope(conn, "acme")
            conn.execute(sa.text(statement))
        assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege), statement


# -- the backfill --------------------------------------------------------------------------------
def _daemon_id_column(db: Database, change: str) -> None:
    with db.begin() as conn:
        for table in ("transactions", "transactions_archive"):
            conn.execute(sa.text(f"ALTER TABLE {table} {change}"))


def test_db_upgrade_backfills_the_rollup_once(pg_server: Any, tmp_path: Path) -> None:
    name = pg_server.create_database()
    db = Database(pg_server.url_for(name))
    try:
        upgrade(db, target=1)  # a database from before the rollup, with rows in it
        assert current_version(db) == 1
        # Today's writers name every column of today's schema: while they write version 1's
        # rows, the column version 3 adds is there, and then goes again.
        _daemon_id_column(db, "ADD COLUMN daemon_id text")
        work = Workload(db, 3)
        for step in (work.start_calls, work.finish_calls, work.put_payload, work.put_payload):
            step()
        work.delete_payload()
        assert _count(db, "SELECT count(*) FROM transactions_archive") == 1
        _daemon_id_column(db, "DROP COLUMN daemon_id")

        first = bustrail_cli(["db", "upgrade"], db.url, tmp_path)
        assert first.returncode == 0, first.stderr
        assert "applied 0002" in first.stdout
        assert_exact(db, "the backfill")
        with db.begin() as conn:
            before = sorted(conn.execute(sa.text(EXPECTED["transactions_hourly"][0])))

        second = bustrail_cli(["db", "upgrade"], db.url, tmp_path)
        assert second.returncode == 0, second.stderr
        assert "nothing to do" in second.stdout
        with db.begin() as conn:
            assert sorted(conn.execute(sa.text(EXPECTED["transactions_hourly"][0]))) == before

        work.finish_calls()  # and from now on the triggers keep it
        assert_exact(db, "writes after the upgrade")
    finally:
        db.dispose()
        pg_server.drop_database(name)
