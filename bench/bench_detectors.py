"""The silent-failure detectors on 1,000,000 audit rows in PostgreSQL.

A fresh database on the server of ``BUSTRAIL_TEST_DATABASE_URL`` is migrated and filled
with COPY: a realistic mix of 7 days of traffic (inline results, stored ones, uploads,
tool errors, timeouts, fallbacks, breaker events; stored results older than their 48 h
TTL already moved to the archive, as cleanup leaves them), with a small share of rows
showing each problem the detectors look for. Then ``VACUUM ANALYZE``.

The baseline, timed in the same run on the same database: merely loading the audit
trail, ``SELECT * FROM transactions`` into pandas through the same path the detectors
read with (:func:`analysis.queries.read_sql_frame`). Results (seconds of all detectors
over seconds of the load; lower is better, target 3):

* ``detectors_vs_load``: the analysis window is the newest half (3.5 days), so the
  regressions compare it with the older half as their baseline; every detector has
  rows to find.
* ``detectors_full_window_vs_load``: the window is all 7 days (every row in range; the
  regressions' baseline window before it is empty).

A first detector run over all 7 days warms the cache for both sides, then each is timed
once. The database is dropped afterwards.

    .venv/bin/python -m bench bench_detectors
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from analysis.detectors import KINDS, run_detectors
from analysis.findings import AnalysisResult
from analysis.queries import read_sql_frame
from bench.common import (
    BenchResult,
    fresh_database,
    postgres_missing,
    print_results,
    scaled,
    stopwatch,
)
from bus.db import Database, normalize_url, utcnow
from bus.records import TRANSACTION_COLUMNS

__all__ = ["generate", "run"]

ROWS = scaled(1_000_000, minimum=1_000)
DAYS = 7
TTL = timedelta(hours=48)
TARGET = 3.0
_MS_PER_DAY = 86_400_000

_TOOLS = np.array(
    [
        "echo",
        "generate",
        "read_file",
        "search",
        "fetch_url",
        "summarize",
        "sql_query",
        "render_chart",
        "embed",
        "translate",
    ]
)
_TOOL_WEIGHTS = np.array([30, 14, 12, 10, 8, 8, 7, 5, 4, 2], dtype=float)
_TOOL_MEDIAN_MS = np.array([2, 40, 8, 120, 250, 900, 60, 300, 80, 400], dtype=float)
REGRESSING_ERRORS = "fetch_url"  # error rate 2% before, ~20% in the newest half
REGRESSING_LATENCY = "summarize"  # three times slower in the newest half


@dataclass
class Audit:
    transactions: pd.DataFrame
    archive: pd.DataFrame
    breaker_events: pd.DataFrame


def _uuid7(created_ms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """UUIDv7 text for each creation time (milliseconds), as bus.db.new_transaction_id."""
    raw = rng.integers(0, 256, size=(len(created_ms), 16), dtype=np.uint8)
    ms = created_ms.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 2:]
    raw[:, 0:6] = ms
    raw[:, 6] = 0x70 | (raw[:, 6] & 0x0F)
    raw[:, 8] = 0x80 | (raw[:, 8] & 0x3F)
    text = raw.tobytes().hex()
    return np.array(
        [
            f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
            for h in (text[i : i + 32] for i in range(0, len(text), 32))
        ],
        dtype=object,
    )


def _hex(rng: np.random.Generator, n: int, digits: int) -> np.ndarray:
    raw = rng.integers(0, 256, size=(n, digits // 2), dtype=np.uint8).tobytes().hex()
    return np.array([raw[i : i + digits] for i in range(0, len(raw), digits)], dtype=object)


def generate(now: datetime, rows: int = ROWS, *, seed: int = 7) -> Audit:
    """``rows`` audit rows over ``DAYS`` days before ``now`` (live table and archive)."""
    rng = np.random.default_rng(seed)
    now_ms = int(now.timestamp() * 1000)
    half_ms = now_ms - DAYS * _MS_PER_DAY // 2
    age = rng.integers(5_000, DAYS * _MS_PER_DAY, rows)
    created_ms = np.sort(now_ms - age)
    age = now_ms - created_ms
    current = created_ms >= half_ms

    tool_i = rng.choice(len(_TOOLS), size=rows, p=_TOOL_WEIGHTS / _TOOL_WEIGHTS.sum())
    tool = _TOOLS[tool_i].astype(object)
    tool_ms = rng.lognormal(np.log(_TOOL_MEDIAN_MS[tool_i]), 0.5)
    slow = current & (tool == REGRESSING_LATENCY)
    tool_ms[slow] *= 3

    d = pd.DataFrame(
        {
            "id": _uuid7(created_ms, rng),
            "created_at": pd.to_datetime(created_ms, unit="ms"),
            "tenant": np.array([f"tenant-{i:02d}" for i in range(20)], dtype=object)[
                rng.integers(0, 20, rows)
            ],
            "session_id": np.char.add("s-", (np.arange(rows) // 40).astype(str)).astype(object),
            "request_id": (np.arange(rows) % 40 + 1).astype(str).astype(object),
            "tool": tool,
            "mime_type": "application/json",
            "direction": "result",
            "route": "inline",
            "status": "delivered",
            "size": rng.integers(50, 900_000, rows),
            "stored_size": pd.array([pd.NA] * rows, dtype="Int64"),
            "compression": "none",
            "checksum": _hex(rng, rows, 64),
            "chunk_count": 0,
            "stored_at": pd.NaT,
            "delivered_at": pd.to_datetime(created_ms + tool_ms.astype(np.int64) + 2, unit="ms"),
            "first_fetched_at": pd.NaT,
            "expires_at": pd.NaT,
            "fetch_count": 0,
            "tool_ms": tool_ms,
            "store_ms": np.nan,
            "trace_id": _hex(rng, rows, 32),
            "span_id": _hex(rng, rows, 16),
            "error_kind": None,
            "error": None,
            "daemon_id": "d1",
        }
    )
    d["session_id"] = d["session_id"].astype(object)
    d["error_kind"] = d["error_kind"].astype(object)
    d["error"] = d["error"].astype(object)
    roll = rng.random(rows)

    def fail(mask: np.ndarray, kind: str, message: str) -> None:
        d.loc[mask, ["status", "error_kind", "error"]] = ["failed", kind, message]
        d.loc[mask, "delivered_at"] = pd.NaT

    # Ordinary failures, and one tool whose error rate regresses in the newest half.
    fail(roll < 0.02, "tool_error", "ValueError: bad input")
    fail((roll >= 0.02) & (roll < 0.023), "timeout", "tool timed out after 300s")
    fail((roll >= 0.023) & (roll < 0.025), "cancelled", "cancelled by the client")
    regress = current & (tool == REGRESSING_ERRORS) & (roll >= 0.025) & (roll < 0.2)
    fail(regress, "tool_error", "HTTPError: 503 from upstream")
    rejected = (roll >= 0.9995) & (roll < 0.99955)
    d.loc[rejected, ["status", "error_kind", "delivered_at"]] = [
        "rejected",
        "payload_too_large",
        pd.NaT,
    ]

    # Large results: stored (compressed, checksummed, fetched); expired ones archived.
    store = (roll >= 0.90) & (roll < 0.99)
    n_store = int(store.sum())
    d.loc[store, "route"] = "store"
    d.loc[store, "size"] = rng.integers(1_048_576, 50_000_000, n_store)
    d.loc[store, "stored_size"] = (d.loc[store, "size"] * rng.uniform(0.1, 0.4, n_store)).astype(
        "int64"
    )
    d.loc[store, "compression"] = "zstd"
    d.loc[store, "chunk_count"] = 1 + d.loc[store, "size"] // 8_388_608
    stored_at = d.loc[store, "created_at"] + pd.to_timedelta(
        d.loc[store, "tool_ms"] + 50, unit="ms"
    )
    d.loc[store, "stored_at"] = stored_at
    d.loc[store, "expires_at"] = stored_at + TTL
    d.loc[store, "store_ms"] = rng.uniform(20, 400, n_store)
    d.loc[store, "delivered_at"] = pd.NaT
    d.loc[store, ["status", "fetch_count"]] = ["fetched", 1]
    d.loc[store, "first_fetched_at"] = stored_at + pd.Timedelta(seconds=2)
    fresh = store & (age < 3_600_000) & (rng.random(rows) < 0.5)
    d.loc[fresh, ["status", "fetch_count", "first_fetched_at"]] = ["stored", 0, pd.NaT]
    uploads = store & (rng.random(rows) < 0.15)  # large inputs sent ahead of a call
    d.loc[uploads, ["direction", "tool", "session_id", "request_id", "mime_type"]] = [
        "upload",
        None,
        None,
        None,
        "application/octet-stream",
    ]
    d.loc[uploads, "tool_ms"] = np.nan
    fallbacks = (roll >= 0.995) & (roll < 0.998)
    d.loc[fallbacks, "route"] = "fallback"
    in_flight = age < 30_000
    d.loc[in_flight, ["status", "delivered_at", "error_kind"]] = ["pending", pd.NaT, None]
    d.loc[in_flight, "tool_ms"] = np.nan

    _inject(d, rng, store, age)
    events, flapping_fallbacks = _breaker_events(rng, now)
    d.loc[flapping_fallbacks(d), ["route", "daemon_id"]] = ["fallback", "d2"]  # d2 flaps

    expired = d["route"].eq("store") & (d["expires_at"] <= pd.Timestamp(now).tz_localize(None))
    expired &= ~d["error_kind"].eq("lag")  # the injected cleanup lag stays live
    d["error_kind"] = d["error_kind"].where(~d["error_kind"].eq("lag"), None)
    archive = d[expired].copy()
    archive.loc[archive["status"] != "corrupted", "status"] = "expired"
    archive["archived_at"] = archive["expires_at"] + pd.Timedelta(minutes=5)
    return Audit(transactions=d[~expired], archive=archive, breaker_events=events)


def _pick(rng: np.random.Generator, mask: np.ndarray | pd.Series, n: int) -> np.ndarray:
    where = np.flatnonzero(np.asarray(mask))
    return rng.choice(where, size=min(n, len(where)), replace=False)


def _inject(d: pd.DataFrame, rng: np.random.Generator, store: np.ndarray, age: np.ndarray) -> None:
    """A small share of rows showing each problem (a few hundred of each)."""
    delivered = (d["status"] == "delivered").to_numpy() & (d["route"] == "inline").to_numpy()
    live_store = store & (age < 40 * 3_600_000) & (age > 3 * 3_600_000)
    old_store = store & (age > 50 * 3_600_000)

    i = _pick(rng, live_store, 400)  # orphaned: stored hours ago, never fetched
    d.loc[d.index[i], ["status", "fetch_count", "first_fetched_at"]] = ["stored", 0, pd.NaT]
    i = _pick(rng, old_store, 300)  # orphaned: expired (archived) without a fetch
    d.loc[d.index[i], ["fetch_count", "first_fetched_at"]] = [0, pd.NaT]
    i = _pick(rng, live_store, 40)  # checksum mismatch
    d.loc[d.index[i], ["status", "error_kind", "error"]] = [
        "corrupted",
        "checksum_mismatch",
        "chunk 0 does not match its checksum",
    ]
    i = _pick(rng, live_store, 60)  # stuck: a store left pending, or abandoned
    d.loc[d.index[i[:30]], ["status", "stored_at", "expires_at"]] = ["pending", pd.NaT, pd.NaT]
    d.loc[d.index[i[30:]], ["status", "error_kind", "stored_at", "expires_at"]] = [
        "failed",
        "abandoned",
        pd.NaT,
        pd.NaT,
    ]
    i = _pick(rng, delivered & (age > 3_600_000), 250)  # lost responses
    d.loc[d.index[i[:200]], ["status", "error_kind", "error", "delivered_at"]] = [
        "failed",
        "send_failed",
        "send failed: connection closed",
        pd.NaT,
    ]
    d.loc[d.index[i[200:]], ["status", "delivered_at"]] = ["pending", pd.NaT]
    i = _pick(rng, delivered, 100)  # fallback oversize
    d.loc[d.index[i], ["route", "status", "error_kind", "delivered_at"]] = [
        "fallback",
        "failed",
        "fallback_oversize",
        pd.NaT,
    ]
    i = _pick(rng, delivered, 500)  # empty successes
    d.loc[d.index[i], "error_kind"] = np.where(
        rng.random(len(i)) < 0.5, "empty_result", "error_text"
    )
    i = _pick(rng, old_store, 200)  # cleanup lag: expired long ago, still stored
    d.loc[d.index[i], "error_kind"] = "lag"
    i = _pick(rng, live_store, 300)  # compression that does not compress
    d.loc[d.index[i], "stored_size"] = (d.loc[d.index[i], "size"] * 0.97).astype("int64")
    i = _pick(rng, delivered, 300)  # missing traces
    d.loc[d.index[i], ["trace_id", "span_id"]] = [None, None]
    i = _pick(rng, delivered, 100)  # duplicate deliveries: a retry ran the tool again
    twins = _pick(rng, delivered, 100)
    for column in ("tenant", "session_id", "request_id", "tool"):
        d.loc[d.index[twins], column] = d.loc[d.index[i], column].to_numpy()


def _breaker_events(
    rng: np.random.Generator, now: datetime
) -> tuple[pd.DataFrame, Callable[[pd.DataFrame], pd.Series]]:
    """A few ordinary trips a day, and one flapping episode a day ago (5 opens in 8 min)."""
    rows = []

    def trip(at: datetime, daemon: str) -> None:
        for offset, (src, dst) in enumerate(
            (("closed", "open"), ("open", "half_open"), ("half_open", "closed"))
        ):
            rows.append(
                {
                    "id": str(uuid.uuid4()),
                    "at": at + timedelta(seconds=30 * offset),
                    "breaker": "store",
                    "daemon_id": daemon,
                    "from_state": src,
                    "to_state": dst,
                    "reason": "consecutive_failures",
                    "failure_rate": 1.0,
                    "consecutive_failures": 5,
                }
            )

    for day in range(DAYS):
        for k in range(3):
            trip(now - timedelta(days=day, hours=3 + 7 * k, minutes=int(rng.integers(0, 60))), "d1")
    start = now - timedelta(days=1)
    for k in range(5):
        trip(start + timedelta(minutes=2 * k), "d2")
    naive_start = pd.Timestamp(start).tz_localize(None)
    naive_end = naive_start + pd.Timedelta(minutes=9)

    def fallbacks(d: pd.DataFrame) -> pd.Series:
        return (
            d["created_at"].between(naive_start, naive_end)
            & d["status"].eq("delivered")
            & d["route"].eq("inline")
        )

    return pd.DataFrame(rows), fallbacks


# -- loading ------------------------------------------------------------------------------------
_NULL = "\\N"


def _text_column(column: pd.Series) -> list[str]:
    """One column in COPY's text format (NULL as \\N); vectorized, no per-value Python."""
    missing = column.isna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(column):
        values = column.dt.tz_localize(None) if column.dt.tz is not None else column
        text = np.datetime_as_string(values.to_numpy(dtype="datetime64[us]"), unit="us")
    elif pd.api.types.is_float_dtype(column):
        text = column.to_numpy(dtype=float, na_value=np.nan).astype(str)
    else:
        text = column.astype(object).to_numpy().astype(str)
    return np.where(missing, _NULL, text).tolist()  # type: ignore[no-any-return]


def _copy(raw: Any, table: str, frame: pd.DataFrame, columns: list[str]) -> None:
    """COPY ``frame`` into ``table`` (timestamps naive UTC: the session runs in UTC)."""
    texts = [_text_column(frame[c]) for c in columns]
    data = "".join("\t".join(row) + "\n" for row in zip(*texts, strict=True))
    with raw.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            copy.write(data)


def load(db: Database, audit: Audit) -> None:
    columns = list(TRANSACTION_COLUMNS)
    with db.begin() as conn:
        raw = conn.connection.dbapi_connection
        _copy(raw, "transactions", audit.transactions, columns)
        _copy(raw, "transactions_archive", audit.archive, [*columns, "archived_at"])
        events = audit.breaker_events
        _copy(raw, "breaker_events", events, list(events.columns))
    engine = sa.create_engine(normalize_url(db.url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    finally:
        engine.dispose()


# -- measuring ----------------------------------------------------------------------------------
def _load_all(db: Database) -> tuple[float, int]:
    with stopwatch() as t, db.connect() as conn:
        frame = read_sql_frame(conn, "SELECT * FROM transactions")
    return t[0], len(frame)


def _detect(db: Database, since: timedelta, now: datetime) -> tuple[float, AnalysisResult]:
    with stopwatch() as t:
        result = run_detectors(db, since, now)
    return t[0], result


def run() -> list[BenchResult]:
    missing = postgres_missing()
    if missing:
        print(f"SKIPPING bench_detectors (needs PostgreSQL): {missing}", file=sys.stderr)
        return []
    with fresh_database() as db:
        now = utcnow()
        with stopwatch() as t_gen:
            audit = generate(now)
        with stopwatch() as t_copy:
            load(db, audit)
        print(
            f"generated {len(audit.transactions):,} live + {len(audit.archive):,} archived "
            f"audit rows and {len(audit.breaker_events)} breaker events in {t_gen[0]:.1f}s; "
            f"COPY + VACUUM ANALYZE {t_copy[0]:.1f}s"
        )
        return _measure(db, now)


def _measure(db: Database, now: datetime) -> list[BenchResult]:
    _detect(db, timedelta(days=DAYS), now)  # warms the cache for both sides alike
    load_s, loaded = _load_all(db)
    half_s, half_result = _detect(db, timedelta(days=DAYS / 2), now)
    full_s, full_result = _detect(db, timedelta(days=DAYS), now)
    print(f"load: SELECT * FROM transactions into pandas, {loaded:,} rows: {load_s:.2f}s")
    for label, seconds, result in (
        ("detectors, newest 3.5 days", half_s, half_result),
        ("detectors, all 7 days", full_s, full_result),
    ):
        found = {k: v for k, v in result.run.counts.items() if v}
        print(
            f"{label}: {seconds:.2f}s over {result.run.transactions_scanned:,} audit rows; "
            f"found {found}"
        )
        slowest = sorted(result.run.seconds.items(), key=lambda kv: -kv[1])[:4]
        print("  slowest: " + ", ".join(f"{k} {v:.2f}s" for k, v in slowest))
    silent = [k for k in KINDS if not half_result.run.counts.get(k)]
    if silent:
        print(f"WARNING: no rows found for {', '.join(silent)}", file=sys.stderr)
    return [
        BenchResult(
            "detectors_vs_load",
            half_s / load_s,
            target=TARGET,
            lower_is_better=True,
            details={"detectors_s": f"{half_s:.2f}", "load_s": f"{load_s:.2f}"},
        ),
        BenchResult(
            "detectors_full_window_vs_load",
            full_s / load_s,
            target=TARGET,
            lower_is_better=True,
            details={"detectors_s": f"{full_s:.2f}", "load_s": f"{load_s:.2f}"},
        ),
    ]


if __name__ == "__main__":
    print_results("bench_detectors", run())
