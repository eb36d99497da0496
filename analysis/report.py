"""Showing findings: rich tables for the command line, one HTML page for reports.

:func:`write_html_report` writes a self-contained page (no scripts, no external assets):
the summary given, counts per kind, and the findings table with each finding's
explanation, remedy and sample transaction ids. ``bustrail demo`` uses it, with the
workload's ground truth beside the counts; :func:`kind_counts` computes the per-kind
figures both that page and the demo's summary show.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from analysis.findings import SEVERITY_ORDER, AnalysisResult, Finding
from analysis.ledger import Entry, LedgerChange

__all__ = [
    "KindCount",
    "kind_counts",
    "print_entries",
    "print_entry",
    "print_findings",
    "print_ledger_change",
    "write_html_report",
]

_STYLE = {"critical": "bold red", "error": "red", "warning": "yellow", "info": "cyan"}
_SAMPLE = 5  # transaction ids shown per finding in the HTML report


def _severity(value: Any) -> str:
    return str(getattr(value, "value", value))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


# -- per kind ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class KindCount:
    """One detector kind in one result: its findings and the transactions they involve,
    and, given a ground truth, the faults and transactions injected."""

    kind: str
    findings: int
    found: int  # distinct transactions in the findings
    where: str  # per tool (or breaker): "fetch_page 2, run_query 2", "breaker store, 3 opens"
    faults: int | None = None  # times the fault was injected
    injected: int | None = None  # transactions the ground truth names


def kind_counts(
    result: AnalysisResult,
    injected: Mapping[str, Sequence[str]] | None = None,
    faults: Mapping[str, int] | None = None,
) -> list[KindCount]:
    """Per kind that ran, in the detectors' order. ``found`` and ``injected`` count the
    same thing, transactions, so they compare; a finding's own ``count`` does not always
    (breaker_flapping's counts the breaker's opens)."""
    counts = []
    for kind in result.run.kinds:
        findings = result.of_kind(kind)
        counts.append(
            KindCount(
                kind=kind,
                findings=len(findings),
                found=len(result.transaction_ids(kind)),
                where=", ".join(_where(f, several=len(findings) > 1) for f in findings),
                faults=None if faults is None else int(faults.get(kind, 0)),
                injected=None if injected is None else len(set(injected.get(kind, ()))),
            )
        )
    return counts


def _where(f: Finding, *, several: bool) -> str:
    if f.tool is None:
        opens = f.details.get("opens")
        return f"{_subject(f)}, {opens} opens" if opens is not None else _subject(f)
    return f"{f.tool} {len(f.transaction_ids)}" if several else f.tool


# -- the command line ------------------------------------------------------------------------
def print_findings(console: Console, result: AnalysisResult) -> None:
    run = result.run
    window = f"{_when(run.since)} .. {_when(run.now)}"
    if not result.findings:
        console.print(
            f"No silent failures in {run.transactions_scanned:,} audit records ({window})."
        )
        return
    table = Table(title=f"Silent failures, {window}", title_justify="left", expand=False)
    table.add_column("kind", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("tool", no_wrap=True)
    table.add_column("explanation")
    for f in result.findings:
        where = f.tool if f.tool is not None else _subject(f)
        table.add_row(
            escape(f.kind),
            f"[{_STYLE[_severity(f.severity)]}]{_severity(f.severity)}[/]",
            str(f.count),
            escape(where),
            escape(f.explanation),
        )
    console.print(table)
    per_severity = _per_severity(result.findings)
    console.print(
        f"{len(result.findings)} finding(s) ({per_severity}) in "
        f"{run.transactions_scanned:,} audit records."
    )


def _subject(finding: Finding) -> str:
    breaker = finding.details.get("breaker")
    return f"breaker {breaker}" if breaker else "-"


def _per_severity(findings: tuple[Finding, ...]) -> str:
    counts: dict[str, int] = {}
    for f in sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity]):
        counts[_severity(f.severity)] = counts.get(_severity(f.severity), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def print_ledger_change(console: Console, change: LedgerChange) -> None:
    console.print(
        f"Recorded run {change.run_id}: {len(change.new)} new, {len(change.resolved)} "
        f"resolved, {len(change.reopened)} reopened; {change.open_count} open "
        "(acknowledged included)."
    )
    for label, entries in (
        ("new", change.new),
        ("reopened", change.reopened),
        ("resolved", change.resolved),
    ):
        for e in entries:
            console.print(escape(f"  {label:<9} #{e.id} {e.kind} ({e.tool or 'no tool'})"))


def print_entries(console: Console, entries: list[Entry], status: str) -> None:
    if not entries:
        console.print(f"No {'' if status == 'all' else status + ' '}findings.")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    table.add_column("id", justify="right", no_wrap=True, min_width=2)
    table.add_column("status", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("tool", no_wrap=True)
    table.add_column("seen", justify="right", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    for e in entries:
        status_text = _severity(e.status)
        if e.regression:
            status_text += f" (regression x{e.reopened_count})"
        table.add_row(
            str(e.id),
            escape(status_text),
            f"[{_STYLE.get(_severity(e.severity), '')}]{_severity(e.severity)}[/]",
            escape(e.kind),
            escape(e.tool or "-"),
            str(e.occurrences),
            e.last_seen_at.strftime("%m-%d %H:%M") if e.last_seen_at else "-",
        )
    console.print(table)
    console.print("seen: transactions in the latest run that saw it; `bustrail debt show ID`.")


def print_entry(console: Console, e: Entry) -> None:
    lines = [
        ("finding", f"#{e.id} {e.title}"),
        ("kind", e.kind),
        ("severity", _severity(e.severity)),
        ("status", _severity(e.status)),
        ("tool", e.tool or "-"),
        ("tenant", e.tenant or "(several, or none)"),
        ("fingerprint", e.fingerprint),
        ("first seen", _when(e.first_seen_at)),
        ("last seen", _when(e.last_seen_at)),
        ("occurrences", f"{e.occurrences} (in the latest run that saw it, run {e.last_run_id})"),
    ]
    if e.resolved_at:
        lines.append(("resolved", _when(e.resolved_at)))
    if e.acknowledged_at:
        lines.append(("acknowledged", f"{_when(e.acknowledged_at)} by {e.acknowledged_by}"))
    if e.regression:
        lines.append(("regression", f"yes: reopened {e.reopened_count} time(s)"))
    lines += [("explanation", e.explanation), ("remedy", e.remedy)]
    for label, value in lines:
        console.print(f"[bold]{label:>12}[/]  {escape(value)}")
    samples = list(e.sample_transaction_ids or [])
    console.print(f"[bold]{'samples':>12}[/]  {len(samples)} transaction id(s), newest first:")
    for tx in samples:
        console.print(f"              {tx}")


# -- HTML ------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}
.meta{color:#666;margin-top:0}
table{border-collapse:collapse;width:100%;margin:1em 0}
th,td{border-bottom:1px solid #ddd;padding:.4em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.sev{font-weight:600;border-radius:3px;padding:.05em .4em;color:#fff}
.critical{background:#8b0000}.error{background:#c0392b}.warning{background:#b7791f}
.info{background:#2b6cb0}
code{font-size:.85em;color:#555}
.none{color:#2f855a;font-weight:600}
"""


def _summary_items(summary: Mapping[str, Any] | LedgerChange | None) -> list[tuple[str, str]]:
    if summary is None:
        return []
    if isinstance(summary, LedgerChange):
        return [
            ("ledger run", str(summary.run_id)),
            ("new findings", str(len(summary.new))),
            ("resolved", str(len(summary.resolved))),
            ("reopened (regressions)", str(len(summary.reopened))),
            ("open debt", str(summary.open_count)),
        ]
    return [(str(k), str(v)) for k, v in summary.items()]


def write_html_report(
    path: str | Path,
    result: AnalysisResult,
    summary: Mapping[str, Any] | LedgerChange | None = None,
    *,
    injected: Mapping[str, Sequence[str]] | None = None,
    faults: Mapping[str, int] | None = None,
) -> Path:
    """Write the report of ``result`` to ``path`` (HTML); return the path.

    ``summary``: label -> value pairs shown first (say, the workload that ran), or the
    :class:`LedgerChange` of recording this result. ``injected`` (kind -> transaction
    ids) and ``faults`` (kind -> times injected): a ground truth to show beside the
    counts."""
    e = html.escape
    run = result.run
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>bustrail: silent failures</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Silent failures in the audit trail</h1>",
        f"<p class='meta'>Window {e(_when(run.since))} .. {e(_when(run.now))} · "
        f"{run.transactions_scanned:,} audit records · {e(run.backend)} · "
        f"analysed {e(_when(run.finished_at))}</p>",
    ]
    items = _summary_items(summary)
    if items:
        parts.append("<h2>Summary</h2><table>")
        parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in items]
        parts.append("</table>")
    parts += _html_counts(kind_counts(result, injected, faults))
    parts.append("<h2>Findings</h2>")
    if not result.findings:
        parts.append("<p class='none'>No silent failures found.</p>")
    else:
        parts.append(
            "<table><tr><th>severity</th><th>kind</th><th>tool</th><th>count</th>"
            "<th>explanation</th><th>remedy</th><th>transactions</th></tr>"
        )
        for f in result.findings:
            parts.append(_html_row(f))
        parts.append("</table>")
    parts.append("</body></html>\n")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(parts), encoding="utf-8")
    return target


def _html_counts(counts: list[KindCount]) -> list[str]:
    e = html.escape
    truth = any(c.injected is not None for c in counts)
    head = ["kind", "findings", "faults injected", "transactions found", "transactions injected"]
    if not truth:
        head = ["kind", "findings", "transactions found"]
    parts = ["<h2>Counts by kind</h2><table><tr>"]
    parts += [f"<th>{h}</th>" for h in [*head, "where"]]
    parts.append("</tr>")
    for c in counts:
        numbers = [c.findings, c.faults, c.found, c.injected] if truth else [c.findings, c.found]
        parts.append(f"<tr><td>{e(c.kind)}</td>")
        parts += [f"<td class='n'>{'-' if n is None else n}</td>" for n in numbers]
        parts.append(f"<td>{e(c.where)}</td></tr>")
    parts.append("</table>")
    if truth:
        parts.append(
            "<p class='meta'>Transactions found and injected count the same thing. A "
            "duplicate_delivery fault leaves two transactions (both answers to the one "
            "request); breaker_flapping's are the results that fell back while it "
            "flapped.</p>"
        )
    return parts


def _html_row(f: Finding) -> str:
    e = html.escape
    severity = _severity(f.severity)
    shown = list(f.transaction_ids[:_SAMPLE])
    more = len(f.transaction_ids) - len(shown)
    ids = "<br>".join(f"<code>{e(tx)}</code>" for tx in shown)
    if more > 0:
        ids += f"<br>… and {more} more"
    where = e(f.tool) if f.tool is not None else e(_subject(f))
    return (
        f"<tr><td><span class='sev {e(severity)}'>{e(severity)}</span></td>"
        f"<td>{e(f.kind)}<br><code>{e(f.fingerprint)}</code></td><td>{where}</td>"
        f"<td class='n'>{f.count}</td><td>{e(f.explanation)}</td><td>{e(f.remedy)}</td>"
        f"<td>{ids}</td></tr>"
    )
