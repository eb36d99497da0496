"""How the Overview reads PostgreSQL exactly and fast: pure functions, no I/O.

A time range [start, end) splits into the whole hours inside it, which the hourly
rollup counts (``transactions_hourly`` and its ``_tools`` and ``_errors`` companions,
sql/migrations/0002), and the partial hours at its two edges, which are read from the
rows themselves: so every figure is exact for any range.

Percentiles are read by rank. With n values, ``percentile_cont(p)`` interpolates
between the values at the 0-based ranks floor(p*(n-1)) and ceil(p*(n-1)); each is
fetched by walking an index on the value from whichever end is nearer (``RankRead``),
and :meth:`RankRead.value` interpolates exactly as PostgreSQL does. Walking pays off when
the range holds a good share of the table; otherwise sorting the range's own rows is
cheaper (:func:`walking_is_cheaper`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

__all__ = [
    "DIRECT_COST",
    "HOUR",
    "ORIGIN",
    "RankRead",
    "hourly_buckets",
    "rebucket",
    "walking_is_cheaper",
    "whole_hours",
]

HOUR = timedelta(hours=1)
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # date_bin's origin, in the SQL as well
# Reading a row of the range and sorting it costs about this many steps of an index walk
# (measured on the 1M-row benchmark database: ~0.7 us a row against ~0.15 us a value
# walked; entries outside the range cost a walk less, so the choice errs to sorting).
DIRECT_COST = 5.0


def _floor_hour(value: datetime) -> datetime:
    return ORIGIN + HOUR * ((value - ORIGIN) // HOUR)


def whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole hours inside [start, end) as [first, last); (end, end) when none is.

    The rows of [start, first) and [last, end) are the partial hours at the edges.
    """
    first = _floor_hour(start)
    if first < start:
        first += HOUR
    last = _floor_hour(end)
    if first >= last:
        return end, end
    return first, last


def hourly_buckets(bucket_seconds: int) -> bool:
    """Whether buckets of this size are made of whole hours (then the rollup fills them)."""
    return bucket_seconds > 0 and bucket_seconds % 3600 == 0


def rebucket(hourly: pd.DataFrame, bucket_seconds: int) -> pd.DataFrame:
    """Per-hour volume rows (``hour`` as epoch seconds) summed into buckets of
    ``bucket_seconds`` on the same grid as ``date_bin(..., ORIGIN)``."""
    origin = int(ORIGIN.timestamp())
    frame = hourly.copy()
    frame["bucket"] = origin + (frame.pop("hour") - origin) // bucket_seconds * bucket_seconds
    sums = ["transactions", "bytes", "stored_bytes"]
    grouped = frame.groupby(["bucket", "route", "status"], as_index=False, sort=True)[sums].sum()
    return grouped[["bucket", "route", "status", *sums]]


@dataclass(frozen=True)
class RankRead:
    """Where ``percentile_cont(p)`` over ``n`` sorted values reads, and how to get there.

    ``low`` and ``high`` are the 0-based ranks interpolated between (equal when p*(n-1)
    is whole). The walk reads ``take`` values after skipping ``offset`` from the nearer
    end: ascending from the smallest, or ``descending`` from the largest.
    """

    p: float
    n: int

    def __post_init__(self) -> None:
        if self.n < 1 or not 0 <= self.p <= 1:
            raise ValueError(f"no percentile {self.p} of {self.n} values")

    @property
    def position(self) -> float:
        return self.p * (self.n - 1)  # as PostgreSQL computes it, in double precision

    @property
    def low(self) -> int:
        return math.floor(self.position)

    @property
    def high(self) -> int:
        return math.ceil(self.position)

    @property
    def take(self) -> int:
        return self.high - self.low + 1

    @property
    def descending(self) -> bool:
        return self.n - self.low < self.high + 1

    @property
    def offset(self) -> int:
        return self.n - 1 - self.high if self.descending else self.low

    @property
    def steps(self) -> int:
        """Values the walk passes over."""
        return self.offset + self.take

    def value(self, walked: Sequence[float]) -> float:
        """The percentile from the values the walk returned (in its own order)."""
        if len(walked) != self.take:
            raise ValueError(
                f"p{self.p}: expected {self.take} values at rank {self.low} of {self.n}, "
                f"got {len(walked)}: the rows changed under the read"
            )
        ordered = list(reversed(walked)) if self.descending else list(walked)
        low = float(ordered[0])
        if self.take == 1:
            return low
        high = float(ordered[1])
        # float8_lerp, as percentile_cont: lo + (hi - lo) * (position - first_row)
        return low + (high - low) * (self.position - self.low)


def walking_is_cheaper(reads: Sequence[RankRead], in_range: int, rows_total: float) -> bool:
    """Whether walking the value indexes beats sorting the range's rows.

    A walk passes over the index entries of the whole table in value order, of which
    only the range's share counts toward the ranks; sorting reads the range's rows once.
    ``rows_total`` is an estimate (the planner's statistics): it only picks the faster
    of two exact ways.
    """
    if in_range <= 0:
        return False
    share = in_range / max(rows_total, in_range)
    walked = sum(read.steps for read in reads) / share
    return walked < DIRECT_COST * in_range
