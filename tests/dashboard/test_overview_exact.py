"""The Overview on PostgreSQL reads the hourly rollup and walks indexes for percentiles:
for any time range (partial hours at both edges, none whole, aligned on hours) and any
bucket, every figure equals the same question asked of the rows directly, with
PostgreSQL's own percentile_cont as the oracle for the latency percentiles (to the bit,
whichever way they are read). A role under row-level security sees its tenant's figures.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from bus.db import Database, new_transaction_id
from bus.models import Route, Status, Transaction
from bus.records import archive, transaction_to_row, upsert_transactions
from dashboard import queries, rollup
from tests.helpers import roles

pytestmark = pytest.mark.postgres

TENANTS = ("acme", "globex", "initech", "umbrella")
TOOLS = ("echo", "generate", "search", "render", "grep", "sql", None)
HOUR = timedelta(hours=1)
TOP = 4  # fewer than the tools and tenants: the ranking and its cut are checked too


def _rows(
    base: datetime, seed: int = 1, count: int = 3000
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Live and archived rows over the 30 hours before ``base``."""
    rng = random.Random(seed)
    live: list[dict[str, Any]] = []
    archived: list[dict[str, Any]] = []
    for _ in range(count):
        tx_id, created_at = new_transaction_id(base - timedelta(seconds=rng.uniform(0, 30 * 3600)))
        route = rng.choices([Route.INLINE, Route.STORE, Route.FALLBACK], [8, 3, 1])[0]
        stored = route is Route.STORE
        status = rng.choice(
            [Status.STORED, Status.FETCHED, Status.REJECTED, Status.CORRUPTED]
            if stored
            else [Status.DELIVERED, Status.DELIVERED, Status.FAILED, Status.PENDING]
        )
        row = transaction_to_row(
            Transaction(
                id=tx_id,
                created_at=created_at,
                tenant=rng.choices(TENANTS, [6, 3, 2, 1])[0],
                tool=rng.choice(TOOLS),
                route=route,
                status=status,
                size=rng.randint(1, 5_000_000),
                stored_size=rng.randint(1, 1_000_000) if stored else None,
                tool_ms=None if status is Status.PENDING else round(rng.lognormvariate(3, 1.2), 3),
                store_ms=round(rng.uniform(1, 300), 2) if stored and rng.random() < 0.9 else None,
                error_kind=rng.choice(["timeout", "boom", "oversize"])
                if status in (Status.FAILED, Status.REJECTED) or rng.random() < 0.03
                else None,
            )
        )
        if stored and status in (Status.STORED, Status.FETCHED) and rng.random() < 0.4:
            archived.append(dict(row, status=Status.EXPIRED, archived_at=base))
        else:
            live.append(row)
    return live, archived


@pytest.fixture
def seeded(pg_url: str) -> Iterator[tuple[Database, datetime]]:
    db = Database(pg_url)
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    live, archived = _rows(base)
    upsert_transactions(db, live)
    with db.begin() as conn:
        conn.execute(archive.insert(), archived)
    try:
        yield db, base
    finally:
        db.dispose()


# start and end in minutes from the seed's last whole hour, and the bucket in seconds.
RANGES = {
    "partial hours at both edges": (-26 * 60 - 17.05, -72, 3600),
    "the same, quarter-hour buckets": (-26 * 60 - 17.05, -72, 900),
    "four-hour buckets": (-27 * 60 + 13, -3 * 60 + 13, 14400),
    "no whole hour inside": (-5 * 60 - 50, -5 * 60 - 20, 60),
    "across an hour, none whole": (-4 * 60 - 10, -3 * 60 - 55, 300),
    "whole hours only": (-10 * 60, -2 * 60, 3600),
    "everything": (-40 * 60, 60, 3600),
    "nothing": (-60 * 60, -50 * 60, 3600),
}


def _window(base: datetime, spec: tuple[float, float, int]) -> tuple[datetime, datetime, int]:
    start, end, bucket = spec
    return base + timedelta(minutes=start), base + timedelta(minutes=end), bucket


AUDIT = """
    WITH audit AS (
        SELECT * FROM (
            SELECT created_at, tenant, tool, route::text AS route, status::text AS status,
                   error_kind, size, stored_size, tool_ms, store_ms FROM transactions
            UNION ALL
            SELECT created_at, tenant, tool, route::text, status::text, error_kind, size,
                   stored_size, tool_ms, store_ms FROM transactions_archive
        ) rows
        WHERE created_at >= :start AND created_at < :end
    )
"""
FAILED = "status IN ('failed', 'rejected', 'corrupted')"
ORACLE = {
    "volume": AUDIT
    + """SELECT extract(epoch FROM date_bin(make_interval(secs => :bucket), created_at,
                                         timestamptz '2000-01-01 00:00:00+00'))::bigint,
                route, status, count(*), sum(size), coalesce(sum(stored_size), 0)
         FROM audit GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
    "totals": AUDIT
    + f"""SELECT count(*), count(*) FILTER (WHERE {FAILED}),
                 count(*) FILTER (WHERE status = 'pending'),
                 coalesce(sum(size) FILTER (WHERE route IN ('inline', 'fallback')
                                              AND status = 'delivered'), 0),
                 coalesce(sum(size) FILTER (WHERE route = 'store' AND status IN
                                              ('stored', 'fetched', 'expired', 'corrupted')), 0),
                 coalesce(sum(stored_size) FILTER (WHERE route = 'store' AND status IN
                                              ('stored', 'fetched', 'expired', 'corrupted')), 0)
          FROM audit""",
    "tools": AUDIT
    + f"""SELECT coalesce(tool, '(none)') AS tool, count(*) AS n,
                 count(*) FILTER (WHERE {FAILED}), sum(size), avg(tool_ms)
          FROM audit GROUP BY 1 ORDER BY n DESC, tool LIMIT :top""",
    "tenants": AUDIT
    + f"""SELECT tenant, count(*) AS n, count(*) FILTER (WHERE {FAILED}), sum(size)
          FROM audit GROUP BY 1 ORDER BY n DESC, tenant LIMIT :top""",
    "errors": AUDIT
    + f"""SELECT error_kind, count(*) AS n, count(*) FILTER (WHERE {FAILED})
          FROM audit WHERE error_kind IS NOT NULL GROUP BY 1 ORDER BY n DESC, error_kind
          LIMIT :top""",
    "latency": AUDIT
    + """SELECT count(tool_ms), percentile_cont(ARRAY[0.5, 0.95, 0.99])
                                  WITHIN GROUP (ORDER BY tool_ms),
                count(store_ms), percentile_cont(ARRAY[0.5, 0.95, 0.99])
                                  WITHIN GROUP (ORDER BY store_ms)
         FROM audit""",
}


def _value(value: Any) -> Any:
    """Plain Python numbers: numeric sums are Decimals, DataFrame cells numpy scalars."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value.item() if isinstance(value, np.generic) else value


def _oracle(db: Database, name: str, **params: Any) -> list[tuple[Any, ...]]:
    with db.begin() as conn:
        sql = queries.bind(ORACLE[name], params)
        return [tuple(map(_value, row)) for row in conn.execute(sql, params)]


def _plain(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    return [tuple(map(_value, row)) for row in frame.itertuples(index=False)]


def assert_matches_the_rows(
    got: queries.Overview, db: Database, start: datetime, end: datetime, bucket: int
) -> None:
    window = {"start": start, "end": end}
    volume = got.volume.assign(bucket=got.volume["bucket"].map(lambda t: int(t.timestamp())))
    assert _plain(volume) == _oracle(db, "volume", bucket=bucket, **window)
    (totals,) = _oracle(db, "totals", **window)
    assert (
        got.totals["transactions"],
        got.totals["failed"],
        got.totals["pending"],
        got.totals["inline_bytes"],
        got.totals["stored_bytes"],
        got.totals["stored_at_rest_bytes"],
    ) == totals

    tools = _oracle(db, "tools", top=TOP, **window)
    assert _plain(got.tools.drop(columns="mean_tool_ms")) == [row[:4] for row in tools]
    means = [None if row[4] is None else float(row[4]) for row in tools]
    assert [None if m != m else m for m in got.tools["mean_tool_ms"]] == pytest.approx(
        means, rel=1e-12
    )
    assert _plain(got.tenants) == _oracle(db, "tenants", top=TOP, **window)
    assert _plain(got.errors) == _oracle(db, "errors", top=TOP, **window)

    ((tool_n, tool_p, store_n, store_p),) = _oracle(db, "latency", **window)
    for column, n, percentiles in (("tool_ms", tool_n, tool_p), ("store_ms", store_n, store_p)):
        row = got.latency.loc[column]
        assert row["n"] == n
        shown = [None if v != v else v for v in row[["p50", "p95", "p99"]]]
        assert shown == (percentiles or [None, None, None]), column  # exactly, to the bit


@pytest.mark.parametrize("walk", [True, False], ids=["rank walks", "sorting the range"])
@pytest.mark.parametrize("label", list(RANGES))
def test_overview_equals_the_rows(
    seeded: tuple[Database, datetime], label: str, walk: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, base = seeded
    # Force the way percentiles are read: either must give percentile_cont's values.
    monkeypatch.setattr(rollup, "DIRECT_COST", 1e12 if walk else 0.0)
    start, end, bucket = _window(base, RANGES[label])
    got = queries.overview(db, start, end, bucket, top=TOP)
    assert_matches_the_rows(got, db, start, end, bucket)
    if label != "nothing":
        assert got.totals["transactions"] > 0


def test_the_rollup_is_what_answers(seeded: tuple[Database, datetime]) -> None:
    """Proof the whole hours come from the rollup: change a rollup row behind the
    triggers' back and the page (only the page) shows it."""
    db, base = seeded
    start, end, bucket = _window(base, RANGES["partial hours at both edges"])
    before = queries.overview(db, start, end, bucket, top=TOP).totals["transactions"]
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE transactions_hourly SET transactions = transactions + 1000 "
                "WHERE ctid = (SELECT ctid FROM transactions_hourly WHERE hour = :h LIMIT 1)"
            ),
            {"h": base - 10 * HOUR},
        )
    assert queries.overview(db, start, end, bucket, top=TOP).totals["transactions"] == before + 1000


def test_a_tenants_role_sees_its_own_figures(
    seeded: tuple[Database, datetime], pg_url: str
) -> None:
    db, base = seeded
    with roles.app_role(pg_url, "bustrail_dash", tenant="globex") as url:
        app = Database(url)
        try:
            start, end, bucket = _window(base, RANGES["partial hours at both edges"])
            got = queries.overview(app, start, end, bucket, top=TOP)
            assert set(got.tenants["tenant"]) == {"globex"}
            assert_matches_the_rows(got, app, start, end, bucket)  # the oracle under RLS too
            everyone = queries.overview(db, start, end, bucket, top=TOP)
            assert 0 < got.totals["transactions"] < everyone.totals["transactions"]
        finally:
            app.dispose()
