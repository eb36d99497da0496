"""A small, known audit trail for the dashboard's tests, and what the pages must show.

Everything is placed relative to ``now`` so the dashboard's "last 24 hours" holds all
of it but three old transactions (three days back, inside "last 7 days" only). The
expected figures are computed here from the rows themselves, with numpy, never by the
dashboard's own code.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from bus.db import Database, new_transaction_id, utcnow
from bus.models import AnalysisRun, Finding
from bus.records import TRANSACTION_COLUMNS, archive, insert_breaker_events, upsert_transactions

__all__ = ["Seed", "seed"]

MIB = 1024 * 1024
TEMPLATE = "http://jaeger.example:16686/trace/{trace_id}"


@dataclass
class Seed:
    now: datetime
    live: list[dict[str, Any]] = field(default_factory=list)
    archived: list[dict[str, Any]] = field(default_factory=list)
    ids: dict[str, list[str]] = field(default_factory=dict)  # role -> transaction ids
    breaker_events: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def in_range(self, hours: float = 24) -> list[dict[str, Any]]:
        since = self.now - timedelta(hours=hours)
        return [r for r in self.live + self.archived if r["created_at"] >= since]

    def percentiles(self, column: str, hours: float = 24) -> list[float]:
        values = [r[column] for r in self.in_range(hours) if r[column] is not None]
        return [float(np.percentile(values, q, method="linear")) for q in (50, 95, 99)]


def _row(
    age: timedelta,
    now: datetime,
    rng: random.Random,
    *,
    tenant: str,
    tool: str,
    route: str,
    status: str,
    size: int,
    **extra: Any,
) -> dict[str, Any]:
    tx_id, created_at = new_transaction_id(now - age)
    row: dict[str, Any] = dict.fromkeys(TRANSACTION_COLUMNS)
    row.update(
        id=tx_id,
        created_at=created_at,
        tenant=tenant,
        session_id=f"s-{rng.randrange(1000)}",
        request_id=str(rng.randrange(10_000)),
        tool=tool,
        mime_type="application/json",
        direction="result",
        route=route,
        status=status,
        size=size,
        compression="none",
        chunk_count=0,
        fetch_count=0,
        tool_ms=round(rng.uniform(0.5, 900.0), 3),
        checksum=f"{rng.getrandbits(256):064x}",
        trace_id=f"{rng.getrandbits(128):032x}",
        span_id=f"{rng.getrandbits(64):016x}",
        daemon_id="d1",  # the daemon of the seeded breaker events
    )
    if status in ("delivered",):
        row["delivered_at"] = created_at + timedelta(milliseconds=40)
    row.update(extra)
    return row


def _stored(row: dict[str, Any], rng: random.Random, *, fetched: bool) -> dict[str, Any]:
    created = row["created_at"]
    row.update(
        stored_size=row["size"] // 4,
        compression="zstd",
        chunk_count=1,
        store_ms=round(rng.uniform(5.0, 400.0), 3),
        stored_at=created + timedelta(milliseconds=300),
        expires_at=created + timedelta(hours=48),
    )
    if fetched:
        row.update(fetch_count=rng.randint(1, 3), first_fetched_at=created + timedelta(seconds=2))
    return row


def seed(db: Database, now: datetime | None = None) -> Seed:
    now = now or utcnow()
    rng = random.Random(7)
    s = Seed(now=now)
    minutes = iter(range(3, 24 * 60 - 10, 17))  # spread over the day, away from its ends

    def ago() -> timedelta:
        return timedelta(minutes=next(minutes), seconds=rng.randrange(50))

    def add(role: str, row: dict[str, Any], *, archived: bool = False) -> dict[str, Any]:
        (s.archived if archived else s.live).append(row)
        s.ids.setdefault(role, []).append(str(row["id"]))
        return row

    for i in range(12):
        tenant = "acme" if i < 8 else "globex"
        add(
            "inline",
            _row(
                ago(),
                now,
                rng,
                tenant=tenant,
                tool="echo",
                route="inline",
                status="delivered",
                size=1000 + 37 * i,
            ),
        )
    for i in range(5):
        row = _row(
            ago(),
            now,
            rng,
            tenant="acme",
            tool="generate",
            route="store",
            status="fetched",
            size=(3 + i) * MIB,
        )
        add("fetched", _stored(row, rng, fetched=True))
    for i in range(3):
        row = _row(
            ago(),
            now,
            rng,
            tenant="globex",
            tool="generate",
            route="store",
            status="stored",
            size=(2 + i) * MIB,
        )
        add("stored", _stored(row, rng, fetched=False))
    for i in range(2):
        add(
            "failed",
            _row(
                ago(),
                now,
                rng,
                tenant="acme",
                tool="fail",
                route="inline",
                status="failed",
                size=0,
                error_kind="tool_error",
                error=f"boom {i}",
            ),
        )
    add(
        "rejected",
        _row(
            ago(),
            now,
            rng,
            tenant="globex",
            tool="read_file",
            route="store",
            status="rejected",
            size=200 * MIB,
            tool_ms=12.5,
            checksum=None,
            error_kind="payload_too_large",
            error="209,715,200 bytes is over 100 MB",
        ),
    )
    row = _row(
        ago(),
        now,
        rng,
        tenant="acme",
        tool="generate",
        route="store",
        status="corrupted",
        size=4 * MIB,
    )
    add("corrupted", _stored(row, rng, fetched=True)).update(
        error_kind="checksum_mismatch", error="chunk 0 does not match its checksum"
    )
    add(
        "pending",
        _row(
            ago(),
            now,
            rng,
            tenant="acme",
            tool="sleep",
            route="inline",
            status="pending",
            size=0,
            tool_ms=None,
            checksum=None,
        ),
    )
    add(
        "looks_failed",
        _row(
            ago(),
            now,
            rng,
            tenant="globex",
            tool="echo",
            route="inline",
            status="delivered",
            size=120,
            error_kind="error_text",
            error="the result looks like a failure (error_text)",
        ),
    )
    # A fallback outside any outage: the store failed once, the breaker stayed closed.
    add(
        "fallback_alone",
        _row(
            timedelta(hours=5),
            now,
            rng,
            tenant="acme",
            tool="generate",
            route="fallback",
            status="delivered",
            size=2 * MIB,
        ),
    )

    # Two outages of breaker "store" on daemon d1; the first has two failed probes.
    t0, t1 = now - timedelta(hours=2), now - timedelta(minutes=40)
    transitions = [
        (t0, "closed", "open", "consecutive_failures"),
        (t0 + timedelta(seconds=30), "open", "half_open", "open_timeout"),
        (t0 + timedelta(seconds=31), "half_open", "open", "probe_failed"),
        (t0 + timedelta(seconds=61), "open", "half_open", "open_timeout"),
        (t0 + timedelta(seconds=62), "half_open", "closed", "probe_succeeded"),
        (t1, "closed", "open", "failure_rate"),
        (t1 + timedelta(seconds=45), "open", "half_open", "open_timeout"),
        (t1 + timedelta(seconds=46), "half_open", "closed", "probe_succeeded"),
    ]
    for at, before, after, reason in transitions:
        s.breaker_events.append(
            {
                "id": uuid.uuid4(),
                "at": at,
                "breaker": "store",
                "daemon_id": "d1",
                "from_state": before,
                "to_state": after,
                "reason": reason,
                "failure_rate": 0.6,
                "consecutive_failures": 5,
            }
        )
    for seconds in (5, 12, 40):
        add(
            "outage1_fallback",
            _row(
                now - (t0 + timedelta(seconds=seconds)),
                now,
                rng,
                tenant="acme",
                tool="generate",
                route="fallback",
                status="delivered",
                size=MIB // 2,
            ),
        )
    add(
        "outage1_oversize",
        _row(
            now - (t0 + timedelta(seconds=20)),
            now,
            rng,
            tenant="acme",
            tool="generate",
            route="fallback",
            status="failed",
            size=40 * MIB,
            error_kind="fallback_oversize",
            error="40 MB is over the client's 1 MB message cap",
        ),
    )
    add(
        "outage2_fallback",
        _row(
            now - (t1 + timedelta(seconds=10)),
            now,
            rng,
            tenant="globex",
            tool="generate",
            route="fallback",
            status="delivered",
            size=MIB // 3,
        ),
    )

    # Expired payloads: their rows live in the archive now.
    for i in range(2):
        row = _row(
            ago(),
            now,
            rng,
            tenant="globex",
            tool="generate",
            route="store",
            status="expired",
            size=(6 + i) * MIB,
        )
        _stored(row, rng, fetched=True)
        row["archived_at"] = now - timedelta(minutes=1)
        add("archived", row, archived=True)
    # Three days old: outside "last 24 hours", inside "last 7 days".
    for i in range(3):
        add(
            "old",
            _row(
                timedelta(days=3, minutes=i),
                now,
                rng,
                tenant="initech",
                tool="echo",
                route="inline",
                status="delivered",
                size=500 + i,
            ),
        )

    _findings(s, now)
    _write(db, s)
    return s


def _findings(s: Seed, now: datetime) -> None:
    day = timedelta(days=1)
    common = {
        "tool": "generate",
        "tenant": None,
        "resolved_at": None,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "last_run_id": 4,
    }
    s.findings = [
        {
            **common,
            "id": 1,
            "fingerprint": "unfetched:generate",
            "kind": "unfetched_claim_check",
            "severity": "error",
            "status": "open",
            "title": "Stored results nobody fetched",
            "explanation": "3 claim checks were stored and never fetched.",
            "remedy": "Make the client fetch resource links.",
            "first_seen_at": now - 3 * day,
            "last_seen_at": now - timedelta(hours=1),
            "occurrences": 3,
            "sample_transaction_ids": s.ids["stored"],
            "regression": False,
            "reopened_count": 0,
        },
        {
            **common,
            "id": 2,
            "fingerprint": "corruption:generate",
            "kind": "corruption",
            "severity": "critical",
            "status": "open",
            "title": "Stored payload corrupted",
            "explanation": "A fetch found bytes that do not match the checksum.",
            "remedy": "Check the disk and the database's storage.",
            "first_seen_at": now - 2 * day,
            "last_seen_at": now - timedelta(hours=2),
            "occurrences": 1,
            "sample_transaction_ids": s.ids["corrupted"],
            "regression": True,
            "reopened_count": 1,
        },
        {
            **common,
            "id": 3,
            "fingerprint": "slow_store:generate",
            "kind": "slow_store",
            "severity": "warning",
            "status": "open",
            "title": "Slow store writes",
            "explanation": "p99 store latency is over 300 ms.",
            "remedy": "Add IOPS.",
            "first_seen_at": now - day,
            "last_seen_at": now - timedelta(hours=3),
            "occurrences": 5,
            "sample_transaction_ids": s.ids["fetched"][:2],
            "regression": False,
            "reopened_count": 0,
        },
        {
            **common,
            "id": 4,
            "fingerprint": "oversize:generate",
            "kind": "fallback_oversize",
            "severity": "warning",
            "status": "acknowledged",
            "title": "Fallback too large",
            "explanation": "A result could be neither stored nor sent inline.",
            "remedy": "Raise the client's message cap.",
            "first_seen_at": now - day,
            "last_seen_at": now - timedelta(hours=2),
            "occurrences": 1,
            "sample_transaction_ids": s.ids["outage1_oversize"],
            "regression": False,
            "reopened_count": 0,
            "acknowledged_at": now - timedelta(hours=1),
            "acknowledged_by": "alice",
        },
        {
            **common,
            "id": 5,
            "fingerprint": "pending:sleep",
            "kind": "stuck_pending",
            "severity": "info",
            "status": "resolved",
            "title": "Transactions left pending",
            "explanation": "Calls that never finished.",
            "remedy": "Restart the daemon.",
            "first_seen_at": now - 3 * day,
            "last_seen_at": now - 2 * day,
            "resolved_at": now - day,
            "occurrences": 2,
            "sample_transaction_ids": [],
            "regression": False,
            "reopened_count": 0,
        },
    ]
    # open (acknowledged included, as the ledger counts), new, resolved, reopened
    counts = [(6, 6, 0, 0), (5, 0, 1, 0), (5, 1, 1, 1), (4, 0, 1, 0)]
    s.runs = [
        {
            "id": i + 1,
            "started_at": now - timedelta(hours=4 * (4 - i)),
            "finished_at": now - timedelta(hours=4 * (4 - i)) + timedelta(seconds=9),
            "window_start": now - timedelta(days=1, hours=4 * (4 - i)),
            "window_end": now - timedelta(hours=4 * (4 - i)),
            "transactions_scanned": 30 + i,
            "counts": {},
            "open_count": o,
            "new_count": n,
            "resolved_count": r,
            "reopened_count": ro,
        }
        for i, (o, n, r, ro) in enumerate(counts)
    ]


def _write(db: Database, s: Seed) -> None:
    upsert_transactions(db, s.live)
    insert_breaker_events(db, s.breaker_events)
    findings: sa.Table = Finding.__table__  # type: ignore[attr-defined]
    runs: sa.Table = AnalysisRun.__table__  # type: ignore[attr-defined]
    with db.begin() as conn:
        conn.execute(archive.insert(), s.archived)
        conn.execute(findings.insert(), s.findings)
        conn.execute(runs.insert(), s.runs)
