"""The dashboard's pure parts: named SQL blocks, breaker timelines, lifecycles, and the
`bustrail dashboard` command's refusal of bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from dashboard import queries, timeline

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_dialect_variants_win_over_the_plain_block() -> None:
    assert "percentile_cont" in queries.query("overview_latency", "postgresql")
    assert "strftime" in queries.query("overview_volume", "sqlite")
    assert "date_bin" in queries.query("overview_volume", "postgresql")
    assert queries.query("overview_errors", "sqlite") == queries.query(
        "overview_errors", "postgresql"
    )
    with pytest.raises(KeyError, match="overview_latency"):
        queries.query("overview_latency", "sqlite")  # SQLite samples instead


def _events(*rows: tuple[int, str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"at": T0 + timedelta(seconds=s), "breaker": "store", "daemon_id": "d1",
             "from_state": a, "to_state": b}
            for s, a, b in rows
        ]
    )  # fmt: skip


def test_breaker_segments_cover_the_range_and_add_up() -> None:
    events = _events((10, "closed", "open"), (40, "open", "half_open"), (41, "half_open", "closed"))
    before = pd.DataFrame(columns=["breaker", "daemon_id", "to_state", "at"])
    segments = timeline.breaker_segments(events, before, T0, T0 + timedelta(seconds=100))
    assert list(segments["state"]) == ["closed", "open", "half_open", "closed"]
    assert list(segments["seconds"]) == [10, 30, 1, 59]
    assert timeline.time_in_state(segments) == {"closed": 69, "half_open": 1, "open": 30}


def test_a_breaker_open_before_the_range_starts_open() -> None:
    before = pd.DataFrame(
        [{"breaker": "store", "daemon_id": None, "to_state": "open", "at": T0 - timedelta(hours=1)}]
    )
    empty = _events().reindex(columns=["at", "breaker", "daemon_id", "from_state", "to_state"])
    segments = timeline.breaker_segments(empty, before, T0, T0 + timedelta(seconds=60))
    assert segments[["breaker", "state", "seconds"]].to_dict("records") == [
        {"breaker": "store", "state": "open", "seconds": 60.0}
    ]


def test_lifecycle_lists_the_steps_that_happened_in_order() -> None:
    row = {
        "created_at": T0,
        "stored_at": T0 + timedelta(milliseconds=250),
        "delivered_at": None,
        "first_fetched_at": T0 + timedelta(seconds=3),
        "expires_at": T0 + timedelta(hours=48),
        "archived_at": None,
    }
    steps = timeline.lifecycle(row)
    assert list(steps["step"]) == ["created", "stored", "first fetched", "expires"]
    assert list(steps["after_seconds"]) == [0, 0.25, 3, 48 * 3600]


def test_dashboard_command_refuses_bad_settings(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": "mysql://nope"}
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "dashboard", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "DATABASE_URL" in done.stderr
    assert "Traceback" not in done.stderr
