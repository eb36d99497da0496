"""Audit rows for the detector and ledger tests: a clean workload, and rows made to order.

Rows are written the way the daemon writes them (``bus.records.upsert_transactions``,
``insert_breaker_events``; the archive as cleanup fills it), with ids made for a time in
the past (``new_transaction_id(now - age)``), so a test controls every row's age.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from analysis.detectors import KINDS
from analysis.queries import canonical_id
from bus.db import Database, new_transaction_id
from bus.models import Compression, Direction, Route, Status, Transaction
from bus.records import archive, insert_breaker_events, transaction_to_row, upsert_transactions

__all__ = [
    "TTL",
    "Injected",
    "archived",
    "breaker_event",
    "clean_workload",
    "injected_sample",
    "seed",
    "tx",
]

TTL = timedelta(hours=48)
_requests = itertools.count(1)


def tx(now: datetime, age: timedelta, **values: Any) -> dict[str, Any]:
    """A transaction created ``age`` before ``now``: by default an inline result,
    delivered, traced, with a request id of its own. ``values`` override any column."""
    tx_id, created_at = new_transaction_id(now - age)
    record = Transaction(
        id=tx_id,
        created_at=created_at,
        tenant="acme",
        session_id="session-1",
        request_id=str(next(_requests)),
        tool="echo",
        mime_type="text/plain",
        direction=Direction.RESULT,
        route=Route.INLINE,
        status=Status.DELIVERED,
        size=120,
        compression=Compression.NONE,
        checksum="ab" * 32,
        chunk_count=0,
        delivered_at=created_at + timedelta(milliseconds=8),
        fetch_count=0,
        tool_ms=5.0,
        trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16],
    )
    for name, value in values.items():
        setattr(record, name, value)
    return transaction_to_row(record)


def stored(now: datetime, age: timedelta, *, fetches: int = 1, **values: Any) -> dict[str, Any]:
    """A result stored as a claim check ``age`` ago (fetched ``fetches`` times)."""
    created = now - age
    stored_at = created + timedelta(milliseconds=40)
    base: dict[str, Any] = {
        "route": Route.STORE,
        "status": Status.FETCHED if fetches else Status.STORED,
        "size": 3_000_000,
        "stored_size": 600_000,
        "compression": Compression.ZSTD,
        "chunk_count": 1,
        "stored_at": stored_at,
        "delivered_at": None,
        "expires_at": stored_at + TTL,
        "fetch_count": fetches,
        "first_fetched_at": stored_at + timedelta(seconds=1) if fetches else None,
        "store_ms": 30.0,
    }
    base.update(values)
    return tx(now, age, **base)


def archived(row: Mapping[str, Any], at: datetime, **values: Any) -> dict[str, Any]:
    """``row`` as cleanup archives it at ``at`` (status expired, unless corrupted)."""
    out = dict(row)
    if out["status"] != Status.CORRUPTED:
        out["status"] = Status.EXPIRED
    out["archived_at"] = at
    out.update(values)
    return out


def breaker_event(
    at: datetime, to_state: str, *, breaker: str = "store", daemon: str | None = "d1"
) -> dict[str, Any]:
    before = {"open": "closed", "half_open": "open", "closed": "half_open"}[to_state]
    return {
        "id": uuid.uuid4(),
        "at": at,
        "breaker": breaker,
        "daemon_id": daemon,
        "from_state": before,
        "to_state": to_state,
        "reason": "consecutive_failures" if to_state == "open" else "probe",
        "failure_rate": 1.0,
        "consecutive_failures": 5,
    }


@dataclass(frozen=True)
class Injected:
    """Rows showing a few faults, and the ground truth of them (as ``bustrail load``
    writes it: per kind, the times injected and the transactions involved)."""

    rows: list[dict[str, Any]]
    events: list[dict[str, Any]]
    faults: dict[str, int]
    truth: dict[str, list[str]]


def injected_sample(now: datetime) -> Injected:
    """Within the last 4 hours: a breaker that opens three times (two results fall back
    meanwhile), one request answered twice, an empty success in each of two tools."""
    t0, minute = now - timedelta(hours=3), timedelta(minutes=1)
    events = []
    for k in range(3):
        events += [
            breaker_event(t0 + 2 * k * minute, "open"),
            breaker_event(t0 + (2 * k + 1) * minute, "half_open"),
        ]
    events.append(breaker_event(t0 + 6 * minute + timedelta(seconds=30), "closed"))
    fallbacks = [
        tx(now, timedelta(hours=3) - age, route=Route.FALLBACK)
        for age in (timedelta(seconds=30), timedelta(minutes=4, seconds=30))
    ]
    key = {"session_id": "s-1", "request_id": "dup-1", "tool": "fetch_page"}
    answers = [
        tx(now, timedelta(hours=2), **key),
        tx(now, timedelta(hours=2) - timedelta(seconds=1), **key),
    ]
    empty = [
        tx(now, timedelta(hours=1), tool="fetch_page", error_kind="error_text"),
        tx(now, timedelta(hours=1), tool="run_query", error_kind="empty_result"),
    ]
    faults = dict.fromkeys(KINDS, 0)
    faults.update(breaker_flapping=3, duplicate_delivery=1, empty_success=2)
    truth: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for kind, rows in (
        ("breaker_flapping", fallbacks),
        ("duplicate_delivery", answers),
        ("empty_success", empty),
    ):
        truth[kind] = sorted(canonical_id(r["id"]) for r in rows)
    return Injected([*fallbacks, *answers, *empty], events, faults, truth)


def clean_workload(now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A healthy day, every route and outcome the lifecycle allows and none of them a
    silent failure: (live rows, archived rows)."""
    rows: list[dict[str, Any]] = []
    for i in range(60):
        rows.append(tx(now, timedelta(minutes=20 + 15 * i), tool=("echo", "search")[i % 2]))
    for i in range(6):  # tool errors the caller was told about, a timeout, a cancel
        rows.append(
            tx(
                now,
                timedelta(hours=1 + i),
                status=Status.FAILED,
                error_kind="tool_error",
                error="ValueError: bad input",
                delivered_at=None,
            )
        )
    rows.append(
        tx(now, timedelta(hours=9), status=Status.FAILED, error_kind="timeout", delivered_at=None)
    )
    rows.append(
        tx(
            now,
            timedelta(hours=10),
            status=Status.FAILED,
            error_kind="cancelled",
            delivered_at=None,
        )
    )
    for i in range(8):  # stored and fetched
        rows.append(stored(now, timedelta(hours=2 + 2 * i), tool="generate"))
    # Stored minutes ago and not fetched yet: within orphan_grace.
    rows.append(stored(now, timedelta(minutes=20), fetches=0, tool="generate"))
    # An upload: stored, then read as a tool's argument.
    rows.append(
        stored(
            now,
            timedelta(hours=3),
            direction=Direction.UPLOAD,
            tool=None,
            session_id=None,
            request_id=None,
            mime_type="application/octet-stream",
        )
    )
    # A fallback delivered while the store was away, then a rejected oversize payload
    # (no trace: refused before any work, which the detectors allow).
    rows.append(tx(now, timedelta(hours=5), route=Route.FALLBACK, size=2_000_000))
    rows.append(
        tx(
            now,
            timedelta(hours=6),
            status=Status.REJECTED,
            error_kind="payload_too_large",
            delivered_at=None,
            trace_id=None,
            span_id=None,
        )
    )
    rows.append(tx(now, timedelta(minutes=2), status=Status.PENDING, delivered_at=None))
    rows.append(
        tx(
            now,
            timedelta(minutes=3),
            route=Route.STORE,
            status=Status.PENDING,
            delivered_at=None,
        )
    )
    # Uncompressed on purpose (already-compressed data): no waste.
    rows.append(
        stored(
            now,
            timedelta(hours=7),
            compression=Compression.NONE,
            stored_size=3_000_000,
            tool="render_chart",
        )
    )
    # Expired and archived by cleanup, fetched before it went.
    old = stored(now, timedelta(hours=60), tool="generate")
    gone = [archived(old, now - timedelta(hours=11))]
    return rows, gone


def seed(
    db: Database,
    rows: Iterable[Mapping[str, Any]] = (),
    *,
    archive_rows: Iterable[Mapping[str, Any]] = (),
    events: Iterable[Mapping[str, Any]] = (),
) -> None:
    live = list(rows)
    if live:
        upsert_transactions(db, live)
    gone = [dict(r) for r in archive_rows]
    if gone:
        with db.begin() as conn:
            conn.execute(archive.insert(), gone)
    happened = list(events)
    if happened:
        insert_breaker_events(db, happened)
