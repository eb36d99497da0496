"""`bustrail demo`: the whole product in one run, on the embedded database.

Real daemons on the SQLite file take a fault-injecting workload; the detectors then read
the audit trail and record what they find in the debt ledger; the summary says what
flowed, what broke, and which injected fault each finding caught. The database stays
for the dashboard; the same summary is written as an HTML report beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from analysis.detectors import DETECTORS, run_detectors
from analysis.findings import AnalysisResult
from analysis.ledger import LedgerChange, record
from analysis.report import KindCount, kind_counts, write_html_report
from analysis.workload import GroundTruth, WorkloadConfig, run_workload
from bus.db import Database, utcnow
from bus.schema import upgrade

__all__ = ["DemoOutcome", "print_summary", "run_demo"]


@dataclass
class DemoOutcome:
    truth: GroundTruth
    result: AnalysisResult
    change: LedgerChange
    traffic: dict[str, Any]
    report: Path
    missed: dict[str, int]  # kind -> injected transactions the detectors did not report


def _traffic(db: Database, since: datetime) -> dict[str, Any]:
    """Transactions by route and status, bytes inline vs stored, breaker trips."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT route, status, count(*) AS n, coalesce(sum(size), 0) AS bytes, "
                "coalesce(sum(stored_size), 0) AS stored FROM transactions "
                "WHERE created_at >= :since GROUP BY route, status ORDER BY route, status"
            ),
            {"since": since},
        ).all()
        trips = conn.execute(
            sa.text("SELECT count(*) FROM breaker_events WHERE to_state = 'open' AND at >= :since"),
            {"since": since},
        ).scalar_one()
    by_route_status = [(r.route, r.status, int(r.n)) for r in rows]
    inline = sum(int(r.bytes) for r in rows if r.route in ("inline", "fallback"))
    stored = sum(int(r.bytes) for r in rows if r.route == "store")
    at_rest = sum(int(r.stored) for r in rows if r.route == "store")
    return {
        "by_route_status": by_route_status,
        "transactions": sum(n for _, _, n in by_route_status),
        "bytes_inline": inline,
        "bytes_stored": stored,
        "bytes_at_rest": at_rest,
        "breaker_trips": int(trips),
    }


def run_demo(database_url: str, *, seed: int, calls: int, workdir: Path) -> DemoOutcome:
    db = Database(database_url)
    try:
        upgrade(db)
        truth = run_workload(
            WorkloadConfig(database_url=database_url, seed=seed, calls=calls, progress=True)
        )
        wait = (truth.ready_at - utcnow()).total_seconds()
        if wait > 0:
            time.sleep(wait)  # every grace the detectors use has passed
        result = run_detectors(db, truth.since, utcnow(), truth.detector_params())
        change = record(db, result)
        traffic = _traffic(db, truth.since)
        missed = {
            kind: len(set(ids) - result.transaction_ids(kind))
            for kind, ids in truth.truth.items()
            if set(ids) - result.transaction_ids(kind)
        }
        summary = {
            "workload": f"seed {seed}, {truth.transactions} calls, faults injected: "
            + ", ".join(f"{k}={v}" for k, v in truth.faults.items() if v),
            "transactions": traffic["transactions"],
            "bytes inline / stored": f"{traffic['bytes_inline']:,} / {traffic['bytes_stored']:,}",
            "breaker trips": traffic["breaker_trips"],
            "injected faults caught": "all" if not missed else f"missed {missed}",
            "open debt": change.open_count,
        }
        report = write_html_report(
            workdir / "report.html", result, summary, injected=truth.truth, faults=truth.faults
        )
        return DemoOutcome(truth, result, change, traffic, report, missed)
    finally:
        db.dispose()


def print_summary(console: Console, outcome: DemoOutcome) -> None:
    """The summary, readable at 80 columns: short cells in the tables, the kinds'
    explanations on lines of their own below."""
    traffic = outcome.traffic
    table = Table(title="Transactions by route and status", title_justify="left")
    for column in ("route", "status", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for route, status, n in traffic["by_route_status"]:
        table.add_row(str(route), str(status), f"{n:,}")
    console.print(table)
    ratio = traffic["bytes_stored"] / traffic["bytes_at_rest"] if traffic["bytes_at_rest"] else 0
    console.print(
        f"Bytes inline {traffic['bytes_inline']:,} · stored {traffic['bytes_stored']:,} "
        f"({traffic['bytes_at_rest']:,} at rest, {ratio:.1f}x smaller)"
    )
    console.print(f"Circuit breaker trips {traffic['breaker_trips']}")
    rows = _summary_rows(outcome)
    console.print(_findings_table(rows))
    legend = Table.grid(padding=(0, 2))
    legend.title = "What each kind means"
    legend.title_justify = "left"
    legend.add_column(no_wrap=True)
    legend.add_column(overflow="fold")
    for row in rows:
        legend.add_row(row.kind, DETECTORS[row.kind].title)
    console.print(legend)
    if outcome.missed:
        console.print(f"[red]Injected faults the detectors missed: {outcome.missed}[/red]")
    else:
        kinds = sum(1 for ids in outcome.truth.truth.values() if ids)
        console.print(f"Every injected fault was found ({kinds} kinds).")
    change = outcome.change
    console.print(
        f"Debt ledger: {len(change.new)} new, {len(change.resolved)} resolved, "
        f"{len(change.reopened)} reopened; {change.open_count} open."
    )


def _summary_rows(outcome: DemoOutcome) -> list[KindCount]:
    """The kinds found or injected, one row each, in the order of the findings (worst
    first); the ones injected and not found last."""
    counts = kind_counts(outcome.result, outcome.truth.truth, outcome.truth.faults)
    order = list(dict.fromkeys(f.kind for f in outcome.result.findings))
    shown = [c for c in counts if c.findings or c.injected]
    return sorted(shown, key=lambda c: order.index(c.kind) if c.kind in order else len(order))


def _findings_table(rows: list[KindCount]) -> Table:
    table = Table(
        title="Silent failures found",
        title_justify="left",
        caption=(
            "faults: times injected. found, injected: transactions (a duplicate_delivery "
            "fault is two answers; breaker_flapping's are the results that fell back)."
        ),
        caption_justify="left",
        show_edge=False,  # room for the tools at 80 columns
    )
    table.add_column("kind", no_wrap=True)  # scripts grep for the kinds
    for column in ("faults", "found", "injected"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("where", overflow="fold")
    for row in rows:
        table.add_row(row.kind, str(row.faults), str(row.found), str(row.injected), row.where)
    return table
