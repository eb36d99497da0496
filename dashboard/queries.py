"""What the dashboard asks the database, one function per question, as DataFrames.

No Streamlit here: the pages cache and draw what these return, and the benchmark times
them bare. Aggregation happens in SQL (the named blocks of ``dashboard/sql``); the
only rows that leave the database are aggregates and bounded lists (every list has a
LIMIT). Searches with optional filters are built with SQLAlchemy Core instead, which
also types the id column alike on both backends.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa

from bus.db import Database, created_at_of, normalize_url, translate_errors
from bus.namedsql import NamedSQL
from bus.records import TRANSACTION_COLUMNS, archive, transactions
from dashboard import rollup

__all__ = [
    "LATENCY_SAMPLE_CAP",
    "PERCENTILES",
    "BreakerData",
    "DatabaseState",
    "Debt",
    "Overview",
    "TransactionFilter",
    "acknowledge",
    "bind",
    "breaker",
    "database_state",
    "debt",
    "filter_choices",
    "find_transaction",
    "overview",
    "parse_transaction_id",
    "reading",
    "run",
    "search_transactions",
    "transactions_by_ids",
]

PERCENTILES = (0.5, 0.95, 0.99)
LATENCY_SAMPLE_CAP = 200_000  # SQLite only: the newest latencies percentiles are taken over
FAILED_STATUSES = ("failed", "rejected", "corrupted")
DatabaseState = Literal["ok", "missing", "no_schema", "empty"]
SQL = NamedSQL(Path(__file__).resolve().parent / "sql")  # the page's queries, by name
query = SQL.query


# -- running named queries ----------------------------------------------------------------
def bind(sql: str, params: Mapping[str, Any]) -> sa.TextClause:
    """A text clause whose timestamp and UUID parameters bind alike on both backends."""
    binds = []
    for name, value in params.items():
        if isinstance(value, datetime):
            binds.append(sa.bindparam(name, type_=sa.DateTime(timezone=True)))
        elif isinstance(value, uuid.UUID):
            binds.append(sa.bindparam(name, type_=sa.Uuid()))
    statement = sa.text(sql)
    return statement.bindparams(*binds) if binds else statement


def run(db: Database, name: str, **params: Any) -> pd.DataFrame:
    """Run the named query for this database's dialect; its rows as a DataFrame."""
    with db.begin() as conn:
        if db.is_postgres:
            _tune(conn)
        return _frame(conn, db.dialect_name, name, params)


def _tune(conn: sa.Connection) -> None:
    # Aggregates over a few hundred thousand rows: compiling them (JIT) costs more than
    # it saves, and sorts should stay in memory. Plans are made for the parameters at
    # hand (a rank walk's LIMIT decides its plan), never generic ones.
    conn.execute(sa.text("SET LOCAL jit = off"))
    conn.execute(sa.text("SET LOCAL work_mem = '32MB'"))
    conn.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))


def _frame(conn: sa.Connection, dialect: str, name: str, params: Mapping[str, Any]) -> pd.DataFrame:
    result = conn.execute(bind(query(name, dialect), params), params)
    return pd.DataFrame(result.all(), columns=list(result.keys()))


@contextlib.contextmanager
def reading(db: Database) -> Iterator[sa.Connection]:
    """One read-only database transaction in which every query sees the same snapshot
    (REPEATABLE READ on PostgreSQL), so that the figures of a page agree with each other:
    a percentile's rank is counted by one query and read by another."""
    with translate_errors(), db.engine.connect() as conn, conn.begin():
        if db.is_postgres:
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
            _tune(conn)
        yield conn


def _timestamps(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """SQLite answers text, PostgreSQL aware datetimes: make both UTC timestamps."""
    for column in columns:
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return frame


def _integers(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """PostgreSQL sums of bigints come back as numeric (Decimal)."""
    for column in columns:
        if column in frame:
            frame[column] = frame[column].fillna(0).astype("int64")
    return frame


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- is there anything to show? --------------------------------------------------------------
def database_state(url: str) -> DatabaseState:
    """``missing`` (no SQLite file), ``no_schema``, ``empty`` (no transaction yet) or ``ok``.

    A missing SQLite file is reported, not created: looking must not leave files behind.
    """
    sa_url = sa.engine.make_url(normalize_url(url))
    if sa_url.get_backend_name() == "sqlite":
        path = sa_url.database
        if path and path != ":memory:" and not Path(path).expanduser().exists():
            return "missing"
    db = Database(url, pool_size=1)
    try:
        with db.connect() as conn:
            if not sa.inspect(conn).has_table("transactions"):
                return "no_schema"
            first = conn.execute(sa.select(transactions.c.id).limit(1)).first()
            if first is None:
                first = conn.execute(sa.select(archive.c.id).limit(1)).first()
        return "ok" if first is not None else "empty"
    finally:
        db.dispose()


# -- Overview ---------------------------------------------------------------------------------
@dataclass
class Overview:
    """The Overview page's numbers for one time range."""

    start: datetime
    end: datetime
    bucket_seconds: int
    volume: pd.DataFrame  # bucket (timestamp), route, status, transactions, bytes, stored_bytes
    totals: dict[str, int]
    latency: pd.DataFrame  # index: tool_ms, store_ms; columns: n, p50, p95, p99
    latency_capped: bool  # SQLite: percentiles over the newest LATENCY_SAMPLE_CAP only
    errors: pd.DataFrame  # error_kind, transactions, failed
    tools: pd.DataFrame  # tool, transactions, failed, bytes, mean_tool_ms
    tenants: pd.DataFrame  # tenant, transactions, failed, bytes

    @property
    def compression_ratio(self) -> float | None:
        """Original bytes over bytes at rest for stored payloads (higher: better)."""
        at_rest = self.totals["stored_at_rest_bytes"]
        return self.totals["stored_bytes"] / at_rest if at_rest else None


def overview(
    db: Database, start: datetime, end: datetime, bucket_seconds: int, *, top: int = 15
) -> Overview:
    """The Overview's exact figures for [start, end): on PostgreSQL from the hourly
    rollup and the edges' rows, percentiles read by rank (see ``dashboard.rollup``); on
    SQLite from the rows."""
    window = {"start": _utc(start), "end": _utc(end)}
    with reading(db) as conn:
        if db.is_postgres:
            volume, errors, tools, tenants, latency = _postgres_overview(
                conn, window, bucket_seconds, top
            )
            capped = False
        else:
            volume = _frame(conn, "sqlite", "overview_volume", {"bucket": bucket_seconds, **window})
            ranked = {"limit": top, **window}
            errors = _frame(conn, "sqlite", "overview_errors", ranked)
            tools = _frame(conn, "sqlite", "overview_tools", ranked)
            tenants = _frame(conn, "sqlite", "overview_tenants", ranked)
            latency, capped = _sqlite_latency(conn, window)
    volume["bucket"] = pd.to_datetime(volume["bucket"].astype("int64"), unit="s", utc=True)
    volume = _integers(volume, "transactions", "bytes", "stored_bytes")
    tools["mean_tool_ms"] = tools["mean_tool_ms"].astype("float64")
    return Overview(
        start=window["start"],
        end=window["end"],
        bucket_seconds=bucket_seconds,
        volume=volume.reset_index(drop=True),
        totals=_totals(volume),
        latency=latency,
        latency_capped=capped,
        errors=_integers(errors, "transactions", "failed").reset_index(drop=True),
        tools=_integers(tools, "transactions", "failed", "bytes").reset_index(drop=True),
        tenants=_integers(tenants, "transactions", "failed", "bytes").reset_index(drop=True),
    )


def _postgres_overview(
    conn: sa.Connection, window: dict[str, datetime], bucket_seconds: int, top: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    first, last = rollup.whole_hours(window["start"], window["end"])
    summary = _integers(
        _frame(
            conn,
            "postgresql",
            "overview_summary",
            {"hours_start": first, "hours_end": last, "limit": top, **window},
        ),
        *("hour", "transactions", "failed", "bytes", "stored_bytes", "tool_n", "store_n"),
    )

    def part(name: str, *columns: str) -> pd.DataFrame:
        rows = summary.loc[summary["part"] == name]
        return rows.rename(columns={"label": name})[list(columns)].reset_index(drop=True)

    if rollup.hourly_buckets(bucket_seconds):
        hourly = part("volume", "hour", "route", "status", "transactions", "bytes", "stored_bytes")
        volume = rollup.rebucket(hourly, bucket_seconds)
    else:  # buckets inside an hour: the rows themselves
        volume = _frame(conn, "postgresql", "overview_volume", {"bucket": bucket_seconds, **window})
    errors = part("error_kind", "error_kind", "transactions", "failed")
    tools = part("tool", "tool", "transactions", "failed", "bytes", "tool_ms_sum", "tool_n")
    sums = tools.pop("tool_ms_sum").astype("float64")
    counts = tools.pop("tool_n").astype("float64")
    tools["mean_tool_ms"] = (sums / counts).where(counts > 0)
    tenants = part("tenant", "tenant", "transactions", "failed", "bytes")

    total = summary.loc[summary["part"] == "total"].iloc[0]
    counts_by = {column: int(total[f"{column.split('_')[0]}_n"]) for column in LATENCIES}
    latency = _postgres_latency(conn, window, counts_by, int(total["transactions"]))
    return volume, errors, tools, tenants, latency


LATENCIES = ("tool_ms", "store_ms")


def _latency_frame(values: dict[str, list[float | None]], counts: dict[str, int]) -> pd.DataFrame:
    labels = [f"p{round(p * 100)}" for p in PERCENTILES]
    frame = pd.DataFrame.from_dict(values, orient="index", columns=labels)
    frame.insert(0, "n", pd.Series(counts))
    frame.index.name = "latency"
    return frame


def _postgres_latency(
    conn: sa.Connection, window: dict[str, datetime], counts: dict[str, int], in_range: int
) -> pd.DataFrame:
    """Exact percentile_cont values: by rank through the value indexes, or by sorting
    the range's rows when the range is too narrow a share of the table for walks to pay."""
    reads = {
        column: [rollup.RankRead(p, n) for p in PERCENTILES] if n else []
        for column, n in counts.items()
    }
    values: dict[str, list[float | None]] = {column: [None] * len(PERCENTILES) for column in counts}
    every = [read for column_reads in reads.values() for read in column_reads]
    if not every:
        return _latency_frame(values, counts)
    estimate = conn.execute(sa.text(query("overview_rows_estimate", "postgresql"))).scalar_one()
    if rollup.walking_is_cheaper(every, in_range, float(estimate)):
        walk = query("overview_rank_walk", "postgresql")  # {column} and {order} to fill in
        for column, column_reads in reads.items():
            for i, read in enumerate(column_reads):
                order = "DESC" if read.descending else "ASC"
                sql = walk.format(column=column, order=order)  # column: one of LATENCIES
                params = {"offset": read.offset, "take": read.take, **window}
                walked = conn.execute(bind(sql, params), params).scalars()
                values[column][i] = read.value([float(v) for v in walked])
        return _latency_frame(values, counts)
    row = _frame(conn, "postgresql", "overview_latency", window).iloc[0]
    for column in counts:
        found = row[column]
        if found is not None:
            values[column] = [float(v) for v in found]
    return _latency_frame(values, counts)


INLINE_ROUTES = ("inline", "fallback")
STORED_STATUSES = ("stored", "fetched", "expired", "corrupted")


def _totals(volume: pd.DataFrame) -> dict[str, int]:
    """How many, how many failed or pending, and the bytes that went each way. Bytes
    moved inline are those of results delivered over the WebSocket (inline or
    fallback); bytes stored are those of claim checks written (original and at rest)."""
    inline = volume["route"].isin(INLINE_ROUTES) & (volume["status"] == "delivered")
    stored = (volume["route"] == "store") & volume["status"].isin(STORED_STATUSES)
    return {
        "transactions": int(volume["transactions"].sum()),
        "failed": int(volume.loc[volume["status"].isin(FAILED_STATUSES), "transactions"].sum()),
        "pending": int(volume.loc[volume["status"] == "pending", "transactions"].sum()),
        "inline_bytes": int(volume.loc[inline, "bytes"].sum()),
        "stored_bytes": int(volume.loc[stored, "bytes"].sum()),
        "stored_at_rest_bytes": int(volume.loc[stored, "stored_bytes"].sum()),
    }


def _sqlite_latency(conn: sa.Connection, window: dict[str, datetime]) -> tuple[pd.DataFrame, bool]:
    """SQLite has no percentile aggregate: pandas interpolates over the newest latencies."""
    sample = _frame(
        conn, "sqlite", "overview_latency_sample", {"cap": LATENCY_SAMPLE_CAP, **window}
    )
    values: dict[str, list[float | None]] = {}
    counts: dict[str, int] = {}
    for column in LATENCIES:
        found = pd.to_numeric(sample[column], errors="coerce").dropna()
        counts[column] = len(found)
        # Linear interpolation between closest ranks: what percentile_cont computes.
        values[column] = (
            [float(found.quantile(p, interpolation="linear")) for p in PERCENTILES]
            if len(found)
            else [None] * len(PERCENTILES)
        )
    return _latency_frame(values, counts), len(sample) >= LATENCY_SAMPLE_CAP


# -- Transactions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TransactionFilter:
    """A search. An id or a trace id finds its transactions whatever the time range."""

    start: datetime
    end: datetime
    transaction_id: uuid.UUID | None = None
    trace_id: str | None = None
    tools: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()


LIST_COLUMNS = (
    "id",
    "created_at",
    "tenant",
    "tool",
    "route",
    "status",
    "size",
    "stored_size",
    "fetch_count",
    "tool_ms",
    "error_kind",
    "trace_id",
)


def parse_transaction_id(text: str) -> uuid.UUID | None:
    """A transaction id typed or pasted (with or without dashes, or as a bustrail:// URI)."""
    text = text.strip().removeprefix("bustrail://transactions/")
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    return value if value.version == 7 else None


def _conditions(table: sa.Table, search: TransactionFilter) -> list[Any]:
    c = table.c
    if search.transaction_id is not None:
        # created_at is inside the id: it names the partition on PostgreSQL.
        return [
            c.id == search.transaction_id,
            c.created_at == created_at_of(search.transaction_id),
        ]
    where: list[Any] = []
    if search.trace_id:
        where.append(c.trace_id == search.trace_id.strip().lower())
    else:
        where += [c.created_at >= _utc(search.start), c.created_at < _utc(search.end)]
    for column, values in (
        (c.tool, search.tools),
        (c.tenant, search.tenants),
        (c.status, search.statuses),
        (c.route, search.routes),
    ):
        if values:
            where.append(column.in_(values))
    return where


def _both_tables(
    columns: Sequence[str], conditions: Any, *, order: bool = True, limit: int | None = None
) -> sa.CompoundSelect:
    """The same select over the live table and the archive."""
    parts = []
    for table, archived in ((transactions, False), (archive, True)):
        parts.append(
            sa.select(
                *(table.c[name] for name in columns),
                sa.literal(archived).label("archived"),
            ).where(*conditions(table))
        )
    union = sa.union_all(*parts)
    if order:
        union = union.order_by(sa.desc("created_at"))
    if limit is not None:
        union = union.limit(limit)
    return union


def search_transactions(db: Database, search: TransactionFilter, limit: int = 200) -> pd.DataFrame:
    """The newest transactions matching ``search``, at most ``limit`` of them."""
    return _listed(db, _both_tables(LIST_COLUMNS, lambda t: _conditions(t, search), limit=limit))


def _listed(db: Database, statement: sa.CompoundSelect) -> pd.DataFrame:
    """The rows of a transaction list (``_both_tables``) as the pages show them."""
    with db.connect() as conn:
        result = conn.execute(statement)
        frame = pd.DataFrame(result.all(), columns=list(result.keys()))
    frame["id"] = frame["id"].astype(str)
    frame["archived"] = frame["archived"].astype(bool)
    return _timestamps(frame, "created_at")


def find_transaction(db: Database, transaction_id: uuid.UUID) -> dict[str, Any] | None:
    """Every column of one transaction (live or archived), or None."""
    created_at = created_at_of(transaction_id)
    with db.connect() as conn:
        for table in (transactions, archive):
            columns = [table.c[name] for name in TRANSACTION_COLUMNS]
            if table is archive:
                columns.append(table.c.archived_at)
            row = (
                conn.execute(
                    sa.select(*columns).where(
                        table.c.id == transaction_id, table.c.created_at == created_at
                    )
                )
                .mappings()
                .first()
            )
            if row is not None:
                found = dict(row)
                found.setdefault("archived_at", None)
                for key, value in found.items():
                    if isinstance(value, datetime):
                        found[key] = _utc(value)
                return found
    return None


def transactions_by_ids(db: Database, ids: Iterable[str], limit: int = 100) -> pd.DataFrame:
    """The transactions named by ``ids`` (a finding's samples); unknown ids are skipped."""
    wanted = [tid for tid in (parse_transaction_id(str(i)) for i in ids) if tid is not None]
    wanted = wanted[:limit]
    if not wanted:
        return pd.DataFrame(columns=[*LIST_COLUMNS, "archived"])
    return _listed(db, _both_tables(LIST_COLUMNS, lambda t: [t.c.id.in_(wanted)], limit=limit))


def filter_choices(
    db: Database, start: datetime, end: datetime, limit: int = 200
) -> dict[str, list[str]]:
    """The tools and tenants seen in the range, for the search's pick lists."""
    choices: dict[str, list[str]] = {}
    with db.connect() as conn:
        for column in ("tool", "tenant"):
            statement = _both_tables(
                [column],
                lambda t: [
                    t.c.created_at >= _utc(start),
                    t.c.created_at < _utc(end),
                    t.c[column].is_not(None),  # noqa: B023 - used at once, in this loop
                ],
                order=False,
            ).subquery()
            values = conn.execute(
                sa.select(statement.c[column]).distinct().order_by(statement.c[column]).limit(limit)
            ).scalars()
            choices[column] = [str(v) for v in values]
    return choices


# -- Circuit breaker --------------------------------------------------------------------------
@dataclass
class BreakerData:
    events: pd.DataFrame  # the transitions in the range, oldest first
    state_before: pd.DataFrame  # breaker, daemon_id, to_state, at: the state at `start`
    outages: pd.DataFrame  # one row per outage, newest first, with its fallbacks
    start: datetime
    end: datetime


def breaker(db: Database, start: datetime, end: datetime, limit: int = 5000) -> BreakerData:
    window = {"start": _utc(start), "end": _utc(end)}
    events = _timestamps(run(db, "breaker_events", limit=limit, **window), "at")
    before = _timestamps(run(db, "breaker_state_before", start=window["start"]), "at")
    outages = run(db, "breaker_outages", limit=200, **window)
    outages = _timestamps(outages, "started_at", "ended_at")
    outages = _integers(outages, "opened", "fallbacks", "fallback_delivered", "fallback_oversize")
    return BreakerData(events, before, outages, window["start"], window["end"])


# -- Silent failures / debt ------------------------------------------------------------------
@dataclass
class Debt:
    by_kind: pd.DataFrame  # kind, severity, status, findings, occurrences, regressions
    findings: pd.DataFrame  # newest LIMIT findings, open ones first
    runs: pd.DataFrame  # analysis runs, oldest first
    totals: dict[str, int] = field(default_factory=dict)


def _id_list(value: Any) -> list[str]:
    """sample_transaction_ids: a list on PostgreSQL (jsonb), JSON text on SQLite."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return [str(v) for v in value] if isinstance(value, list) else []


def debt(db: Database, limit: int = 500) -> Debt:
    by_kind = _integers(run(db, "debt_open_by_kind"), "findings", "occurrences", "regressions")
    findings = run(db, "debt_findings", limit=limit)
    findings = _timestamps(
        findings, "first_seen_at", "last_seen_at", "resolved_at", "acknowledged_at"
    )
    findings = _integers(findings, "occurrences", "reopened_count")
    findings["sample_transaction_ids"] = findings["sample_transaction_ids"].map(_id_list)
    findings["regression"] = findings["regression"].astype(bool)
    runs = run(db, "debt_runs", limit=limit).iloc[::-1].reset_index(drop=True)
    runs = _timestamps(runs, "started_at", "finished_at", "window_start", "window_end")
    runs = _integers(
        runs, "transactions_scanned", "new_count", "resolved_count", "reopened_count", "open_count"
    )
    status = by_kind.groupby("status")["findings"].sum() if len(by_kind) else pd.Series()
    totals = {
        "open": int(status.get("open", 0)),
        "acknowledged": int(status.get("acknowledged", 0)),
        "regressions": int(by_kind.loc[by_kind["status"] == "open", "regressions"].sum())
        if len(by_kind)
        else 0,
    }
    return Debt(by_kind, findings, runs, totals)


def acknowledge(db: Database, finding_id: int, by: str) -> str:
    """Acknowledge a finding through the debt ledger; its status afterwards."""
    from analysis import ledger

    entry = ledger.acknowledge(db, finding_id, by)
    return str(getattr(entry.status, "value", entry.status))
