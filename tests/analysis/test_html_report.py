"""The HTML report `bustrail demo` writes: the findings, the counts, escaped."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from analysis.detectors import run_detectors
from analysis.ledger import record
from analysis.report import write_html_report
from bus.db import Database, utcnow
from tests.analysis.audit_seed import injected_sample, seed, tx


def test_the_report_shows_findings_and_counts(db: Database, tmp_path: Path) -> None:
    now = utcnow()
    rows = [tx(now, timedelta(hours=1), tool="<script>x</script>", trace_id=None) for _ in range(7)]
    seed(db, rows)
    result = run_detectors(db, timedelta(days=1), now)
    change = record(db, result)

    path = write_html_report(tmp_path / "out" / "report.html", result, change)

    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert "missing_trace" in page and "open debt" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    assert "and 2 more" in page  # 7 transactions, 5 shown
    assert result.findings[0].fingerprint in page


def test_a_clean_report_says_so(db: Database, tmp_path: Path) -> None:
    result = run_detectors(db, timedelta(days=1))
    page = write_html_report(tmp_path / "r.html", result, {"calls": 150}).read_text()
    assert "No silent failures found." in page
    assert "<th>calls</th><td>150</td>" in page


def test_the_counts_compare_with_the_ground_truth_in_transactions(
    db: Database, tmp_path: Path
) -> None:
    now = utcnow()
    sample = injected_sample(now)
    seed(db, sample.rows, events=sample.events)
    result = run_detectors(db, timedelta(hours=4), now)

    page = write_html_report(
        tmp_path / "r.html", result, injected=sample.truth, faults=sample.faults
    ).read_text()

    def row(kind: str, *cells: object, where: str) -> str:
        numbers = "".join(f"<td class='n'>{c}</td>" for c in cells)
        return f"<tr><td>{kind}</td>{numbers}<td>{where}</td></tr>"

    head = "<th>findings</th><th>faults injected</th><th>transactions found</th>"
    assert head + "<th>transactions injected</th>" in page
    # findings, faults injected, transactions found, transactions injected: the breaker's
    # three opens are its faults, the two results that fell back its transactions.
    assert row("breaker_flapping", 1, 3, 2, 2, where="breaker store, 3 opens") in page
    assert row("duplicate_delivery", 1, 1, 2, 2, where="fetch_page") in page
    assert row("empty_success", 2, 2, 2, 2, where="fetch_page 1, run_query 1") in page
    assert row("checksum_mismatch", 0, 0, 0, 0, where="") in page
