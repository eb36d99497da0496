"""The summary `bustrail demo` prints: one row per kind, numbers that compare, and
readable at 80 columns. Real detectors on a real database; the workload's ground truth
is the one its rows were made to show."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from analysis.demo import DemoOutcome, print_summary
from analysis.detectors import DETECTORS, KINDS, run_detectors
from analysis.ledger import record
from analysis.workload import GroundTruth
from bus.db import Database, utcnow
from tests.analysis.audit_seed import injected_sample, seed


def _summary(db: Database, tmp_path: Path, width: int) -> str:
    now = utcnow()
    sample = injected_sample(now)
    seed(db, sample.rows, events=sample.events)
    since = now - timedelta(hours=4)
    result = run_detectors(db, since, now)
    truth = GroundTruth(
        seed=1,
        calls=len(sample.rows),
        faults=sample.faults,
        database="test",
        started_at=since,
        since=since,
        finished_at=now,
        ready_at=now,
        params={},
        truth=sample.truth,
    )
    missed = {
        kind: len(set(ids) - result.transaction_ids(kind))
        for kind, ids in truth.truth.items()
        if set(ids) - result.transaction_ids(kind)
    }
    traffic = {
        "by_route_status": [("fallback", "delivered", 2), ("inline", "delivered", 4)],
        "transactions": 6,
        "bytes_inline": 720,
        "bytes_stored": 0,
        "bytes_at_rest": 0,
        "breaker_trips": 3,
    }
    outcome = DemoOutcome(truth, result, record(db, result), traffic, tmp_path / "r.html", missed)
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    print_summary(console, outcome)
    return console.export_text()


def _rows(text: str) -> dict[str, list[list[str]]]:
    """The findings table's rows by kind: [faults, found, injected, where]."""
    rows: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 5 and cells[0] in KINDS:
            rows.setdefault(cells[0], []).append(cells[1:])
    return rows


def test_one_row_per_kind_with_comparable_numbers(db: Database, tmp_path: Path) -> None:
    text = _summary(db, tmp_path, width=80)

    # faults injected, transactions found, transactions injected, where
    assert _rows(text) == {
        "breaker_flapping": [["3", "2", "2", "breaker store, 3 opens"]],
        "duplicate_delivery": [["1", "2", "2", "fetch_page"]],
        "empty_success": [["2", "2", "2", "fetch_page 1, run_query 1"]],
    }
    assert "Every injected fault was found (3 kinds)." in text
    assert "breaker trips 3" in text


def test_the_summary_reads_at_80_columns(db: Database, tmp_path: Path) -> None:
    text = _summary(db, tmp_path, width=80)

    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    for kind in ("breaker_flapping", "duplicate_delivery", "empty_success"):
        # What each kind means, whole, on a line of its own after the table.
        (meaning,) = [line for line in lines if line.startswith(kind) and "│" not in line]
        assert meaning.split(maxsplit=1)[1].rstrip() == DETECTORS[kind].title
