"""Pure functions from a few already-fetched rows to what the pages draw: breaker state
segments and the time spent in each state, and a transaction's lifecycle steps."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd

__all__ = ["LIFECYCLE", "STATES", "breaker_segments", "label", "lifecycle", "time_in_state"]

STATES = ("closed", "half_open", "open")  # bottom to top on the timeline
LIFECYCLE = (
    ("created", "created_at"),
    ("stored", "stored_at"),
    ("delivered", "delivered_at"),
    ("first fetched", "first_fetched_at"),
    ("expires", "expires_at"),
    ("archived", "archived_at"),
)


def breaker_segments(
    events: pd.DataFrame, state_before: pd.DataFrame, start: datetime, end: datetime
) -> pd.DataFrame:
    """One row per stretch of time a breaker spent in one state inside [start, end).

    Columns: breaker (``name`` or ``name @ daemon``), state, start, end, seconds. A
    breaker with no event before ``start`` is taken to start the range closed when its
    first event leaves ``closed``, else in that event's ``from_state``.
    """
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    rows: list[dict[str, Any]] = []
    initial = {
        label(r["breaker"], r["daemon_id"]): str(r["to_state"])
        for r in state_before.to_dict("records")
    }
    labels = [label(b, d) for b, d in zip(events["breaker"], events["daemon_id"], strict=True)]
    by_breaker: dict[str, list[dict[str, Any]]] = {}
    for name, event in zip(labels, events.to_dict("records"), strict=True):
        by_breaker.setdefault(name, []).append(event)
    for name in sorted(set(initial) | set(by_breaker)):
        mine = by_breaker.get(name, [])
        state = initial.get(name) or (str(mine[0]["from_state"]) if mine else "closed")
        since = start_ts
        for event in mine:
            at = pd.Timestamp(event["at"])
            rows.append(_segment(name, state, since, at))
            state, since = str(event["to_state"]), at
        rows.append(_segment(name, state, since, end_ts))
    frame = pd.DataFrame(rows, columns=["breaker", "state", "start", "end", "seconds"])
    return frame[frame["seconds"] > 0].reset_index(drop=True)


def label(breaker: Any, daemon_id: Any) -> str:
    """How a breaker is named on the page: ``name @ daemon`` (each daemon has its own)."""
    return f"{breaker} @ {daemon_id}" if daemon_id and not pd.isna(daemon_id) else str(breaker)


def _segment(label: str, state: str, since: pd.Timestamp, until: pd.Timestamp) -> dict[str, Any]:
    return {
        "breaker": label,
        "state": state,
        "start": since,
        "end": until,
        "seconds": max((until - since).total_seconds(), 0.0),
    }


def time_in_state(segments: pd.DataFrame) -> dict[str, float]:
    """Seconds spent in each state, all breakers added up."""
    totals = segments.groupby("state")["seconds"].sum() if len(segments) else pd.Series()
    return {state: float(totals.get(state, 0.0)) for state in STATES}


def lifecycle(row: Mapping[str, Any]) -> pd.DataFrame:
    """The steps a transaction went through, in order of time: step, at, after (seconds
    since created)."""
    created = row.get("created_at")
    steps = []
    for step, column in LIFECYCLE:
        at = row.get(column)
        if at is None or pd.isna(at):
            continue
        after = (pd.Timestamp(at) - pd.Timestamp(created)).total_seconds() if created else None
        steps.append({"step": step, "at": pd.Timestamp(at), "after_seconds": after})
    frame = pd.DataFrame(steps, columns=["step", "at", "after_seconds"])
    return frame.sort_values("at", kind="stable").reset_index(drop=True)
