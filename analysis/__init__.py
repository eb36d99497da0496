"""Silent failures in the audit trail: detectors, the debt ledger, reports.

::

    result = run_detectors(db, timedelta(days=1))   # what is wrong, per kind and tool
    change = record(db, result)                     # new / resolved / reopened debt
    write_html_report("report.html", result, change)

The detectors' queries are in ``analysis/sql``; ``analysis.workload`` drives real daemons
with injected faults to check them against.
"""

from analysis.detectors import DETECTORS, KINDS, Detector, run_detectors
from analysis.duration import DurationError, format_duration, parse_duration
from analysis.findings import AnalysisError, AnalysisResult, Finding, Params, RunInfo
from analysis.ledger import (
    FindingNotFound,
    LedgerChange,
    acknowledge,
    burn_down,
    list_findings,
    open_findings_by_kind,
    record,
    show,
)
from analysis.report import write_html_report

__all__ = [
    "DETECTORS",
    "KINDS",
    "AnalysisError",
    "AnalysisResult",
    "Detector",
    "DurationError",
    "Finding",
    "FindingNotFound",
    "LedgerChange",
    "Params",
    "RunInfo",
    "acknowledge",
    "burn_down",
    "format_duration",
    "list_findings",
    "open_findings_by_kind",
    "parse_duration",
    "record",
    "run_detectors",
    "show",
    "write_html_report",
]
