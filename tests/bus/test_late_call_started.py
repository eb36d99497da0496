"""A late "call started" audit record must not undo the route of a store in progress.

The daemon audits a call's start (pending, route inline) through the audit writer, which
writes in batches, while the store writes its own pending row (route store) at once. When
the batch lands second, the row must stay a store in progress: a crash then leaves a
``store`` row for crash recovery to fail as abandoned (``stuck_pending``), not an inline
call (``lost_response``).
"""

from __future__ import annotations

from bus.db import Database, new_transaction_id
from bus.models import Route, Status, Transaction
from bus.records import get_transaction, transaction_to_row, upsert_transactions


def _row(route: Route, status: Status = Status.PENDING, **values: object) -> Transaction:
    return Transaction(tenant="acme", tool="snapshot", route=route, status=status, **values)


def _write(db: Database, tx: Transaction, route: Route, status: Status = Status.PENDING) -> None:
    row = transaction_to_row(tx)
    row.update(route=route, status=status)
    upsert_transactions(db, [row])


def test_call_started_after_the_store_began_keeps_the_store_route(db: Database) -> None:
    tx_id, created_at = new_transaction_id()
    tx = _row(Route.STORE, id=tx_id, created_at=created_at)
    _write(db, tx, Route.STORE)  # the store's own pending row, written at once
    _write(db, tx, Route.INLINE)  # the audit writer's "call started", a batch later
    record = get_transaction(db, "acme", tx_id)
    assert record is not None
    assert (record.route, record.status) == (Route.STORE, Status.PENDING)


def test_the_store_row_still_replaces_an_earlier_call_started(db: Database) -> None:
    tx_id, created_at = new_transaction_id()
    tx = _row(Route.INLINE, id=tx_id, created_at=created_at)
    _write(db, tx, Route.INLINE)
    _write(db, tx, Route.STORE)
    record = get_transaction(db, "acme", tx_id)
    assert record is not None and record.route is Route.STORE


def test_an_outcome_still_replaces_pending_and_pending_never_replaces_an_outcome(
    db: Database,
) -> None:
    tx_id, created_at = new_transaction_id()
    tx = _row(Route.INLINE, id=tx_id, created_at=created_at)
    _write(db, tx, Route.INLINE)
    _write(db, tx, Route.FALLBACK, Status.DELIVERED)
    _write(db, tx, Route.INLINE)  # a spooled "call started" replayed late
    record = get_transaction(db, "acme", tx_id)
    assert record is not None
    assert (record.route, record.status) == (Route.FALLBACK, Status.DELIVERED)
