"""The Overview page over a million audit rows, against a plain count of the same rows.

A fresh database on the server of BUSTRAIL_TEST_DATABASE_URL (default: the local one)
gets 1,000,000 transactions spread over the last 7 days, loaded with COPY: mostly
inline results, some stored (those past their 48 h TTL archived, as cleanup leaves
them), a few fallbacks, failures and rejections, over a dozen tools and twenty tenants.
After VACUUM ANALYZE, the Overview's queries for "last 7 days" (every row) are timed
next to ``SELECT count(*)`` over the same rows, each as the median of several runs.
ratio = overview / count, lower is better; the target is 5.

    python -m bench.bench_dashboard
"""

from __future__ import annotations

import io
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

import numpy as np
import pandas as pd
import sqlalchemy as sa

from bench.common import BenchResult, fresh_database, postgres_missing, print_results, scaled
from bus.db import Database, utcnow
from bus.records import TRANSACTION_COLUMNS
from dashboard import queries

__all__ = ["run"]

ROWS = scaled(1_000_000, minimum=1_000)
DAYS = 7
TTL = timedelta(hours=48)
REPEAT = scaled(5, minimum=1)

TOOLS = ["echo", "generate", "read_file", "search", "fetch_url", "sql_query", "list_dir",
         "grep", "summarize", "render_pdf", "screenshot", "fail"]  # fmt: skip
ERRORS = {
    "inline": ["tool_error", "timeout", "cancelled", "send_failed"],
    "store": ["store_unavailable", "checksum_mismatch"],
    "fallback": ["fallback_oversize", "send_failed"],
}


def _mix(rng: np.random.Generator, n: int, end_ms: int) -> pd.DataFrame:
    """``n`` transaction rows with realistic proportions, created over the last DAYS."""
    created_ms = np.sort(rng.integers(end_ms - DAYS * 86_400_000, end_ms, n))
    route = rng.choice(["inline", "store", "fallback"], n, p=[0.85, 0.12, 0.03])
    zipf = rng.zipf(1.6, n) - 1
    tool = np.array(TOOLS)[np.minimum(zipf, len(TOOLS) - 1)]
    tenant = np.char.add("tenant-", (rng.zipf(1.4, n) % 20).astype(str))
    inline_size = np.exp(rng.normal(8.5, 1.6, n)).astype(np.int64).clip(2, 1 << 20)
    store_size = np.exp(rng.normal(15.5, 1.0, n)).astype(np.int64).clip(1 << 20, 100 << 20)
    size = np.where(route == "store", store_size, inline_size)
    status = np.where(
        route == "store",
        rng.choice(["fetched", "stored", "corrupted", "rejected"], n, p=[0.7, 0.28, 0.001, 0.019]),
        rng.choice(["delivered", "failed", "pending"], n, p=[0.955, 0.044, 0.001]),
    )
    failed = np.isin(status, ["failed", "corrupted", "rejected"])
    error_kind = np.full(n, None, dtype=object)
    for r, kinds in ERRORS.items():
        mask = failed & (route == r)
        error_kind[mask] = rng.choice(kinds, int(mask.sum()))
    error_kind[status == "rejected"] = "payload_too_large"
    stored = np.isin(status, ["fetched", "stored", "corrupted"]) & (route == "store")
    created = pd.to_datetime(created_ms, unit="ms", utc=True)
    frame = pd.DataFrame(
        {
            "id": [_uuid7(int(ms), rng) for ms in created_ms],
            "created_at": created,
            "tenant": tenant,
            "session_id": np.char.add("s-", rng.integers(0, 5000, n).astype(str)),
            "request_id": rng.integers(0, 1 << 31, n).astype(str),
            "tool": tool,
            "mime_type": "application/json",
            "direction": np.where(rng.random(n) < 0.02, "upload", "result"),
            "route": route,
            "status": status,
            "size": size,
            "stored_size": np.where(stored, size // rng.uniform(2.0, 6.0, n), np.nan),
            "compression": np.where(stored, "zstd", "none"),
            "checksum": [f"{v:016x}" * 4 for v in rng.integers(0, 1 << 62, n)],
            "chunk_count": np.where(stored, 1 + size // (8 << 20), 0),
            "stored_at": created.where(stored) + pd.Timedelta(milliseconds=120),
            "delivered_at": created.where(status == "delivered") + pd.Timedelta(milliseconds=15),
            "first_fetched_at": created.where(status == "fetched") + pd.Timedelta(seconds=2),
            "expires_at": created.where(stored) + pd.Timedelta(TTL),
            "fetch_count": np.where(status == "fetched", rng.integers(1, 4, n), 0),
            "tool_ms": np.exp(rng.normal(3.5, 1.3, n)).round(3),
            "store_ms": np.where(stored, np.exp(rng.normal(4.0, 0.8, n)).round(3), np.nan),
            "trace_id": [f"{v:016x}" * 2 for v in rng.integers(0, 1 << 62, n)],
            "span_id": [f"{v:016x}" for v in rng.integers(0, 1 << 62, n)],
            "error_kind": error_kind,
            "error": np.where(failed, "something went wrong", None),
            "daemon_id": np.where(np.arange(n) % 2 == 0, "host-a:101", "host-b:202"),
        }
    )
    frame["stored_size"] = frame["stored_size"].astype("Int64")
    frame.loc[frame["status"] == "pending", "tool_ms"] = np.nan
    return frame


def _uuid7(ms: int, rng: np.random.Generator) -> str:
    rand = int(rng.integers(0, 1 << 62)) | (int(rng.integers(0, 1 << 12)) << 64)
    value = (ms << 80) | (0x7 << 76) | (((rand >> 64) & 0xFFF) << 64) | (0x2 << 62)
    return str(uuid.UUID(int=value | (rand & ((1 << 62) - 1))))


def _copy(db: Database, table: str, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(
        buffer,
        sep="\t",
        header=False,
        index=False,
        na_rep="\\N",
        date_format="%Y-%m-%d %H:%M:%S.%f+00",
    )
    buffer.seek(0)
    with db.engine.begin() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN") as copy,
        ):
            while chunk := buffer.read(1 << 20):
                copy.write(chunk)


def _load(db: Database, now_ms: int) -> tuple[int, int]:
    rng = np.random.default_rng(20_240_601)
    frame = _mix(rng, ROWS, now_ms)
    frame = frame[list(TRANSACTION_COLUMNS)]
    expired = (frame["route"] == "store") & frame["status"].isin(["fetched", "stored"])
    expired &= frame["expires_at"] < pd.Timestamp(now_ms, unit="ms", tz="UTC")
    archived = frame[expired].assign(status="expired", archived_at=frame["expires_at"])
    _copy(db, "transactions", frame[~expired])
    _copy(db, "transactions_archive", archived)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE transactions"))
        conn.execute(sa.text("VACUUM ANALYZE transactions_archive"))
    return int((~expired).sum()), int(expired.sum())


def _median(fn: Callable[[], object]) -> float:
    fn()  # warm: plans, caches, pools
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


COUNT = """
SELECT (SELECT count(*) FROM transactions WHERE created_at >= :start AND created_at < :end)
     + (SELECT count(*) FROM transactions_archive WHERE created_at >= :start AND created_at < :end)
"""


def _count(db: Database, params: dict[str, datetime]) -> int:
    with db.connect() as conn:
        return int(conn.execute(queries.bind(COUNT, params), params).scalar_one())


def run() -> list[BenchResult]:
    missing = postgres_missing()
    if missing:
        print(f"SKIPPING bench_dashboard (needs PostgreSQL): {missing}", file=sys.stderr)
        return []
    with fresh_database("bustrail_bench_dash") as db:
        now = utcnow()
        t0 = time.perf_counter()
        live, archived = _load(db, int(now.timestamp() * 1000))
        load_s = time.perf_counter() - t0
        results = []
        for label, span, bucket in (
            ("7d", timedelta(days=DAYS), 3600),
            ("24h", timedelta(hours=24), 900),
        ):
            start, end = now - span, now + timedelta(seconds=10)
            params = {"start": start, "end": end}
            overview = queries.overview(db, start, end, bucket)
            counted = _count(db, params)
            assert overview.totals["transactions"] == counted, (overview.totals, counted)

            page_s = _median(partial(queries.overview, db, start, end, bucket))
            count_s = _median(partial(_count, db, params))
            results.append(
                BenchResult(
                    f"dashboard_overview_{label}_vs_count",
                    page_s / count_s,
                    target=5 if label == "7d" else None,
                    lower_is_better=True,
                    details={
                        "rows": f"{counted:,}",
                        "overview_ms": f"{page_s * 1000:.0f}",
                        "count_ms": f"{count_s * 1000:.0f}",
                        "live/archived": f"{live:,}/{archived:,}",
                        "load_s": f"{load_s:.0f}",
                    },
                )
            )
        return results


if __name__ == "__main__":
    print_results("bench_dashboard", run())
