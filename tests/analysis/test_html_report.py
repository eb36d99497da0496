"""The HTML report `bustrail demo` writes: the findings, the counts, escaped."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from analysis.detectors import run_detectors
from analysis.ledger import record
from analysis.report import write_html_report
from bus.db import Database, utcnow
from tests.analysis.audit_seed import seed, tx


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
