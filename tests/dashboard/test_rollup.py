"""dashboard.rollup, the pure part of reading PostgreSQL's rollup: how a range splits into
whole hours and edges, how hourly volume fills larger buckets, and where a percentile's
values are read from (against a reference percentile_cont and numpy)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard.rollup import RankRead, hourly_buckets, rebucket, walking_is_cheaper, whole_hours

T = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (T - 2 * H - 5 * M, T + 7 * M, (T - 2 * H, T)),  # partial hours at both edges
        (T - 2 * H, T, (T - 2 * H, T)),  # aligned: no edges
        (T - 2 * H, T + 59 * M, (T - 2 * H, T)),
        (T + 1 * M, T + 50 * M, (T + 50 * M, T + 50 * M)),  # inside one hour: none whole
        (T - 10 * M, T + 10 * M, (T + 10 * M, T + 10 * M)),  # across an hour: none whole
        (T - 1 * H, T, (T - 1 * H, T)),
        (T, T, (T, T)),
    ],
)
def test_whole_hours(start: datetime, end: datetime, expected: tuple[datetime, datetime]) -> None:
    assert whole_hours(start, end) == expected


@given(
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40)),
)
def test_whole_hours_tile_the_range(naive: datetime, span: timedelta) -> None:
    start = naive.replace(tzinfo=UTC)
    end = start + span
    first, last = whole_hours(start, end)
    assert start <= first <= last <= end
    if first < last:  # whole hours, on the UTC hour grid; the edges less than an hour
        assert first.minute == first.second == first.microsecond == 0
        assert last.minute == last.second == last.microsecond == 0
        assert first - start < H and end - last < H
    else:
        assert first == last == end
        # No whole hour fits: the range is short, or it crosses no full hour.
        assert end - start < 2 * H


def test_hourly_buckets_are_whole_hours() -> None:
    assert [hourly_buckets(s) for s in (60, 900, 1800, 3600, 7200, 14400, 5400)] == [
        False, False, False, True, True, True, False,
    ]  # fmt: skip


def test_rebucket_sums_hours_into_buckets_on_the_date_bin_grid() -> None:
    hour = int(T.timestamp())
    hourly = pd.DataFrame(
        [
            (hour, "inline", "delivered", 3, 30, 0),
            (hour + 3600, "inline", "delivered", 2, 20, 0),
            (hour + 3600, "store", "stored", 1, 100, 25),
            (hour + 4 * 3600, "inline", "delivered", 5, 50, 0),
        ],
        columns=["hour", "route", "status", "transactions", "bytes", "stored_bytes"],
    )
    four = rebucket(hourly, 4 * 3600)
    # 2026-03-01 08:00 UTC starts a 4-hour bucket counted from 2000-01-01 00:00 UTC.
    start = int(datetime(2026, 3, 1, 8, tzinfo=UTC).timestamp())
    assert [tuple(r) for r in four.itertuples(index=False)] == [
        (start, "inline", "delivered", 5, 50, 0),
        (start, "store", "stored", 1, 100, 25),
        (start + 4 * 3600, "inline", "delivered", 5, 50, 0),
    ]
    assert rebucket(hourly, 3600)["transactions"].sum() == 11


def _percentile_cont(values: list[float], p: float) -> float:
    """PostgreSQL's percentile_cont, step by step (orderedsetaggs.c, float8_lerp)."""
    ordered = sorted(values)
    position = p * (len(values) - 1)
    first, second = math.floor(position), math.ceil(position)
    low, high = ordered[first], ordered[second]
    return low if second == first else low + (high - low) * (position - first)


def _walk(values: list[float], read: RankRead) -> list[float]:
    """What the overview_rank_walk query returns: OFFSET then LIMIT, in its order."""
    ordered = sorted(values, reverse=read.descending)
    return ordered[read.offset : read.offset + read.take]


@given(
    st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        min_size=1,
        max_size=300,
    ),
    st.sampled_from([0.0, 0.01, 0.5, 0.95, 0.99, 1.0, 1 / 3]),
)
def test_a_rank_read_gives_percentile_cont(values: list[float], p: float) -> None:
    read = RankRead(p, len(values))
    assert read.value(_walk(values, read)) == _percentile_cont(values, p)  # to the bit
    assert read.value(_walk(values, read)) == pytest.approx(
        float(np.percentile(values, p * 100, method="linear")), rel=1e-9, abs=1e-9
    )
    # From the nearer end: never more than half the values (and the pair) passed over.
    assert read.steps <= len(values) // 2 + 2
    assert read.low <= read.high <= read.low + 1


def test_high_percentiles_are_read_from_the_top() -> None:
    p50, p95, p99 = (RankRead(p, 1_000_000) for p in (0.5, 0.95, 0.99))
    assert not p50.descending and p50.offset == 499_999
    assert p95.descending and p95.steps <= 50_002
    assert p99.descending and p99.steps <= 10_002
    single = RankRead(0.99, 1)
    assert (single.offset, single.take) == (0, 1)


def test_a_read_that_finds_the_rows_changed_says_so() -> None:
    read = RankRead(0.5, 10)
    with pytest.raises(ValueError, match="the rows changed under the read"):
        read.value([1.0])
    with pytest.raises(ValueError):
        RankRead(0.5, 0)


def test_walks_pay_for_wide_ranges_only() -> None:
    reads = [RankRead(p, 900_000) for p in (0.5, 0.95, 0.99)]
    assert walking_is_cheaper(reads, 1_000_000, 1_000_000)  # a week of a week
    assert not walking_is_cheaper(reads, 1_000_000, 100_000_000)  # a week of two years
    assert not walking_is_cheaper([], 0, 1_000_000)
