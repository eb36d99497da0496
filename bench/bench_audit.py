"""Audit records per second through the AuditWriter, against a raw COPY of the same rows.

100,000 realistic transaction rows (mostly delivered inline results, some stored,
fallback and failed ones; several tenants, trace ids, error text) are written twice
into the same ``transactions`` table of a fresh PostgreSQL database, emptied between
runs:

* the writer, end to end: ``AuditWriter.submit`` of every row from this thread, then
  ``flush()``, with the daemon's default batching (500 rows, 0.5 s; a writer that falls
  behind takes up to 8 batches per database transaction);
* the baseline: one psycopg ``COPY transactions FROM STDIN`` of the same rows, in one
  database transaction, by the same process.

Each is run five times, alternating which goes first; each round's pair gives the
ratio of the writer's rows per second to COPY's, and the median ratio is the result,
``audit_writer_vs_copy`` (target 0.5: the writer keeps at least half of COPY's speed
while adding batching, coalescing, upserts and row-level security scoping per tenant).

The database is created on the server of ``BUSTRAIL_TEST_DATABASE_URL`` (default
postgresql://127.0.0.1:5432/postgres), migrated, and dropped afterwards.

    .venv/bin/python -m bench bench_audit
"""

from __future__ import annotations

import hashlib
import random
import statistics
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import (
    BenchResult,
    fresh_database,
    postgres_missing,
    print_results,
    scaled,
    stopwatch,
)
from bus.audit import AuditWriter
from bus.db import Database, new_transaction_id, utcnow
from bus.models import Compression, Direction, Route, Status
from bus.records import TRANSACTION_COLUMNS

__all__ = ["realistic_rows", "run"]

ROWS = scaled(100_000, minimum=100)
ROUNDS = scaled(5, minimum=2)  # 2: both orders
TARGET = 0.5
_TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
_TOOLS = ("echo", "generate", "read_file", "search", "sql_query", "fetch_url")


def realistic_rows(count: int = ROWS, *, seed: int = 0) -> list[dict[str, Any]]:
    """Final transaction rows as the message bus submits them, over the last hour."""
    rng = random.Random(seed)
    now = utcnow()
    rows = []
    for i in range(count):
        tx_id, created_at = new_transaction_id(now - timedelta(seconds=3600 * (1 - i / count)))
        size = int(rng.lognormvariate(7, 2))
        checksum = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        row: dict[str, Any] = {name: None for name in TRANSACTION_COLUMNS}
        row.update(
            id=tx_id,
            created_at=created_at,
            tenant=rng.choice(_TENANTS),
            session_id=uuid.UUID(int=rng.getrandbits(128)).hex,
            request_id=str(rng.randint(1, 5000)),
            tool=rng.choice(_TOOLS),
            mime_type="text/plain",
            direction=Direction.RESULT,
            route=Route.INLINE,
            status=Status.DELIVERED,
            size=size,
            compression=Compression.NONE,
            checksum=checksum,
            chunk_count=0,
            fetch_count=0,
            tool_ms=rng.uniform(0.1, 500),
            trace_id=f"{rng.getrandbits(128):032x}",
            span_id=f"{rng.getrandbits(64):016x}",
            daemon_id="bench-host:4242",
            delivered_at=created_at + timedelta(milliseconds=rng.uniform(1, 900)),
        )
        kind = rng.random()
        if kind < 0.08:  # a claim check
            row.update(
                route=Route.STORE,
                status=Status.STORED,
                size=size + 1_048_576,
                stored_size=(size + 1_048_576) // 6,
                compression=Compression.ZSTD,
                chunk_count=1,
                stored_at=row["delivered_at"],
                expires_at=created_at + timedelta(hours=48),
                store_ms=rng.uniform(5, 200),
                delivered_at=None,
            )
        elif kind < 0.10:  # the store failed, the result went inline after all
            row.update(route=Route.FALLBACK)
        elif kind < 0.15:  # a tool error
            row.update(
                status=Status.FAILED,
                error_kind="tool_error",
                error=f"ToolError: upstream answered 503 for request {i}",
                delivered_at=None,
            )
        rows.append(row)
    return rows


def _empty(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(sa.text("TRUNCATE transactions"))
    with db.begin() as conn:  # fresh statistics for both, so neither plans on stale ones
        conn.execute(sa.text("ANALYZE transactions"))


def _count(db: Database) -> int:
    with db.begin() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM transactions")).scalar_one())


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Route | Status | Compression | Direction) else value


def time_copy(db: Database, rows: list[dict[str, Any]]) -> float:
    """The baseline: one raw psycopg COPY of the rows into ``transactions``."""
    columns = ", ".join(TRANSACTION_COLUMNS)
    with stopwatch() as elapsed, db.begin() as conn:
        raw: Any = conn.connection.dbapi_connection
        with raw.cursor() as cur, cur.copy(f"COPY transactions ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([_plain(row[c]) for c in TRANSACTION_COLUMNS])
    return elapsed[0]


def time_writer(db: Database, rows: list[dict[str, Any]], spool: Path) -> float:
    """The writer, end to end: every submit, then flush."""
    writer = AuditWriter(db, spool)
    writer.start()
    try:
        with stopwatch() as elapsed:
            for row in rows:
                writer.submit(row)
            if not writer.flush(timeout=600):
                raise RuntimeError("the audit writer did not flush within 10 minutes")
        stats = writer.stats()
        if stats.spooled or stats.write_failures_total:
            raise RuntimeError(f"the database refused audit batches during the benchmark: {stats}")
    finally:
        writer.close()
    return elapsed[0]


def run() -> list[BenchResult]:
    missing = postgres_missing()
    if missing:
        print(f"SKIPPING bench_audit: {missing}", file=sys.stderr)
        return []
    rows = realistic_rows()
    copy_times: list[float] = []
    writer_times: list[float] = []
    with fresh_database() as db, tempfile.TemporaryDirectory(prefix="bustrail-bench-") as tmp:
        for round_no in range(ROUNDS):
            # Alternate who goes first, so a slow moment of the machine hits both alike.
            order = ("copy", "writer") if round_no % 2 == 0 else ("writer", "copy")
            for who in order:
                _empty(db)
                if who == "copy":
                    copy_times.append(time_copy(db, rows))
                else:
                    writer_times.append(time_writer(db, rows, Path(tmp) / f"spool-{round_no}"))
                if _count(db) != len(rows):
                    raise RuntimeError(f"{who} did not write every row")
    # Each round's pair gives a ratio; the median of those is the result.
    ratio = statistics.median(c / w for c, w in zip(copy_times, writer_times, strict=True))
    copy_rate = len(rows) / statistics.median(copy_times)
    writer_rate = len(rows) / statistics.median(writer_times)
    print(
        f"{len(rows):,} rows, median of {ROUNDS} rounds: writer {writer_rate:,.0f} rows/s "
        f"(runs {', '.join(f'{t:.2f}s' for t in writer_times)}), raw COPY {copy_rate:,.0f} "
        f"rows/s (runs {', '.join(f'{t:.2f}s' for t in copy_times)})"
    )
    return [
        BenchResult(
            "audit_writer_vs_copy",
            ratio,
            target=TARGET,
            details={
                "writer_rows/s": f"{writer_rate:,.0f}",
                "copy_rows/s": f"{copy_rate:,.0f}",
                "rows": f"{len(rows):,}",
            },
        )
    ]


if __name__ == "__main__":
    print_results("bench_audit", run())
