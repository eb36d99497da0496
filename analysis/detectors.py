"""The silent-failure detectors: a registry of named checks over the audit trail.

Each detector has a stable ``kind``, a severity, a plain-language explanation, a remedy,
the parameters it reads, and a function that asks the database (``analysis/sql``) for
the rows showing its problem and turns them into :class:`~analysis.findings.Hit` s, one
per tool. :func:`run_detectors` runs them over one window in one database snapshot and
returns an :class:`~analysis.findings.AnalysisResult`.

The window selects transactions by ``created_at`` (the time inside their id): from
``since`` to ``now``, both included. The regressions compare it with a baseline window,
by default the one of the same length just before ``since``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from analysis import trends
from analysis.findings import (
    SEVERITY_ORDER,
    AnalysisError,
    AnalysisResult,
    Finding,
    Hit,
    Params,
    RunInfo,
    Severity,
    fingerprint,
)
from analysis.queries import read_frame
from analysis.scan import Scan, hits_by_tool
from bus.db import Database, as_utc, utcnow

__all__ = ["DETECTORS", "KINDS", "Detector", "run_detectors"]

Find = Callable[[Scan], list[Hit]]


@dataclass(frozen=True)
class Detector:
    kind: str
    severity: Severity
    title: str
    explanation: str
    remedy: str
    params: tuple[str, ...]
    find: Find
    subject: str = "tool"  # what a finding is per: "tool", or "breaker"

    def finding(self, hit: Hit) -> Finding:
        where = hit.subject if hit.subject is not None else f"no {self.subject}"
        explanation = f"{self.explanation} {hit.note}".strip()
        return Finding(
            kind=self.kind,
            severity=self.severity,
            fingerprint=fingerprint(self.kind, hit.subject),
            tool=hit.subject if self.subject == "tool" else None,
            count=len(hit.transaction_ids) if hit.count is None else hit.count,
            transaction_ids=tuple(hit.transaction_ids),
            title=f"{self.title} ({self.subject} {where})",
            explanation=explanation,
            remedy=self.remedy,
            tenants=tuple(hit.tenants),
            details=dict(hit.details),
        )


def _rows(name: str) -> Find:
    """A detector whose named query returns (id, tenant, tool) of every match."""

    def find(scan: Scan) -> list[Hit]:
        return hits_by_tool(scan.frame(name))

    find.__name__ = name
    return find


_DETECTORS = (
    Detector(
        kind="orphaned_claim_check",
        severity=Severity.WARNING,
        title="Stored results nobody fetched",
        explanation=(
            "Results were stored as claim checks and never fetched: still unread past "
            "their expiry or long after they were stored, or expired unread. The caller "
            "got a transaction id and never came back for the payload, so it most likely "
            "carried on without the result."
        ),
        remedy=(
            "Make sure the client follows resource_link results (resources/read, or GET "
            "/v1/transactions/ID); if nobody needs such large results, have the tool "
            "return less."
        ),
        params=("orphan_grace",),
        find=_rows("orphaned_claim_check"),
    ),
    Detector(
        kind="checksum_mismatch",
        severity=Severity.CRITICAL,
        title="Stored payloads that no longer match their checksum",
        explanation=(
            "Stored bytes did not match their SHA-256 checksum when read: the payload was "
            "damaged at rest or by something writing to the store. The reader got an "
            "error instead of the result, and the result is lost."
        ),
        remedy=(
            "Check the database's storage and anything else that writes to the chunks "
            "table; re-run the affected calls; restore from a backup if the data matters."
        ),
        params=(),
        find=_rows("checksum_mismatch"),
    ),
    Detector(
        kind="stuck_pending",
        severity=Severity.ERROR,
        title="Stores that never completed",
        explanation=(
            "A result began to be stored and never finished: it is still pending, or "
            "crash recovery failed it as abandoned. The daemon stopped or hung mid-store "
            "and the caller never got its claim check."
        ),
        remedy=(
            "Look for daemon crashes and restarts, database lock waits and slow stores "
            "(store_ms) around these times; stop daemons gracefully (SIGTERM) so calls in "
            "flight can finish."
        ),
        params=("stuck_after",),
        find=_rows("stuck_pending"),
    ),
    Detector(
        kind="lost_response",
        severity=Severity.ERROR,
        title="Calls whose answer never reached the caller",
        explanation=(
            "The tool ran but its answer was never delivered: the connection closed "
            "before the result was sent, or the daemon died while the call was pending."
        ),
        remedy=(
            "Check client timeouts and disconnects, proxy idle timeouts and daemon "
            "restarts; a client should treat a dropped connection as an unknown outcome "
            "and retry idempotently."
        ),
        params=("lost_after",),
        find=_rows("lost_response"),
    ),
    Detector(
        kind="fallback_oversize",
        severity=Severity.ERROR,
        title="Results lost: store down and too big to send inline",
        explanation=(
            "The store failed and the result was too large to fall back to the "
            "WebSocket: the caller got an error and the result is gone."
        ),
        remedy=(
            "Fix the store's availability (see breaker_events); let clients declare a "
            "larger maxMessageBytes if they can take it; or have the tool return less."
        ),
        params=(),
        find=_rows("fallback_oversize"),
    ),
    Detector(
        kind="empty_success",
        severity=Severity.WARNING,
        title="Successes that are really failures",
        explanation=(
            "The tool reported success but its result was empty or read as an error "
            "message (an 'Error: ...' text, a traceback, a JSON {\"error\": ...}): the "
            "caller took a failure for a result."
        ),
        remedy=(
            "Make the tool raise an error instead of returning error text or nothing; "
            "check what it depends on (credentials, rate limits, inputs)."
        ),
        params=(),
        find=_rows("empty_success"),
    ),
    Detector(
        kind="cleanup_lag",
        severity=Severity.WARNING,
        title="Expired payloads still stored",
        explanation=(
            "Stored payloads are past their expiry and still kept: cleanup is not running "
            "or not keeping up, so the store keeps growing and expired results stay "
            "readable."
        ),
        remedy=(
            "Run `bustrail cleanup` on a schedule (cron, a Kubernetes CronJob) and check "
            "that it succeeds; with a large backlog raise its --batch."
        ),
        params=("cleanup_grace",),
        find=_rows("cleanup_lag"),
    ),
    Detector(
        kind="compression_waste",
        severity=Severity.INFO,
        title="Compression that does not compress",
        explanation=(
            "Stored payloads were compressed but barely shrank (stored size at least "
            "waste_ratio of the original): the time spent compressing buys nothing, the "
            "data is most likely compressed already (images, archives) or random."
        ),
        remedy=(
            "Store such results uncompressed (MESSAGE_BUS_COMPRESSION=none for that "
            "daemon) and keep compression for text and JSON."
        ),
        params=("waste_ratio",),
        find=_rows("compression_waste"),
    ),
    Detector(
        kind="breaker_flapping",
        severity=Severity.WARNING,
        title="Circuit breaker flapping",
        explanation=(
            "The store's circuit breaker kept opening, flap_opens times or more within "
            "flap_window: the store fails intermittently, and each time results fall back "
            "to the WebSocket or fail."
        ),
        remedy=(
            "Find the store's intermittent failures (connection limits, network, disk, "
            "lock waits); if they are brief and harmless, tune CIRCUIT_BREAKER_THRESHOLD."
        ),
        params=("flap_opens", "flap_window"),
        find=trends.breaker_flapping,
        subject="breaker",
    ),
    Detector(
        kind="missing_trace",
        severity=Severity.INFO,
        title="Audit records without a trace",
        explanation=(
            "Audit records carry no trace id, so they cannot be tied to their request's "
            "trace: the code path that wrote them ran outside a span, or tracing is off."
        ),
        remedy=(
            "Keep BUSTRAIL_TRACE_EXPORTER at none, console or otlp (off records no ids); "
            "find the code path that audits outside the request's span."
        ),
        params=(),
        find=_rows("missing_trace"),
    ),
    Detector(
        kind="duplicate_delivery",
        severity=Severity.WARNING,
        title="Requests answered more than once",
        explanation=(
            "The same request (tenant, session, JSON-RPC id, tool) was answered more than "
            "once: the tool ran twice, usually because a client retried a call it thought "
            "had failed. Side effects may have happened twice."
        ),
        remedy=(
            "Make client retries idempotent (do not resend a request id that may have "
            "run), give clients timeouts longer than the tool takes, and make tools with "
            "side effects idempotent."
        ),
        params=(),
        find=_rows("duplicate_delivery"),
    ),
    Detector(
        kind="error_rate_regression",
        severity=Severity.ERROR,
        title="Error rate regression",
        explanation=(
            "The tool fails (tool_error, timeout) markedly more often than in the baseline window."
        ),
        remedy=(
            "Compare what changed between the windows: the tool's code, the services it "
            "calls, its inputs, BUSTRAIL_TOOL_TIMEOUT_SECONDS. The failed calls' errors "
            "are in their audit rows."
        ),
        params=("min_calls", "baseline_start", "baseline_end"),
        find=trends.error_rate_regressions,
    ),
    Detector(
        kind="latency_regression",
        severity=Severity.WARNING,
        title="Latency regression",
        explanation="The tool got markedly slower than in the baseline window.",
        remedy=(
            "Follow the slow calls' trace ids to see where the time goes; check the "
            "services the tool calls and the daemon's load."
        ),
        params=("min_calls", "baseline_start", "baseline_end"),
        find=trends.latency_regressions,
    ),
)

DETECTORS: dict[str, Detector] = {d.kind: d for d in _DETECTORS}
KINDS: tuple[str, ...] = tuple(DETECTORS)


def _window(
    since: datetime | timedelta, now: datetime | None, params: Params
) -> tuple[datetime, datetime, datetime, datetime]:
    end = as_utc(now) or utcnow()
    start = end - since if isinstance(since, timedelta) else as_utc(since)
    assert start is not None
    if start >= end:
        raise AnalysisError(
            f"the window is empty: since ({start.isoformat()}) is not before now "
            f"({end.isoformat()})"
        )
    if params.baseline_start is not None and params.baseline_end is not None:
        base_start, base_end = as_utc(params.baseline_start), as_utc(params.baseline_end)
        assert base_start is not None and base_end is not None
        if not base_start < base_end <= start:
            raise AnalysisError("the baseline window must be non-empty and end no later than since")
    else:
        base_start, base_end = start - (end - start), start
    return start, end, base_start, base_end


def _prepare(scan: Scan) -> None:
    """PostgreSQL: room to aggregate, and a refusal to run where row-level security
    would hide other tenants' rows."""
    if scan.dialect != "postgresql":
        return
    conn = scan.conn
    hidden = conn.execute(sa.text("SELECT row_security_active('transactions')")).scalar()
    if hidden:
        user = conn.execute(sa.text("SELECT current_user")).scalar()
        raise AnalysisError(
            f"database role {user!r} is subject to row-level security on transactions, so "
            "the analysis would see only part of the audit trail (or nothing): run it as "
            "the role that owns the schema (the one that runs `bustrail db upgrade`)"
        )
    conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))


def run_detectors(
    db: Database,
    since: datetime | timedelta,
    now: datetime | None = None,
    params: Params | Mapping[str, Any] | None = None,
    *,
    kinds: Iterable[str] | None = None,
) -> AnalysisResult:
    """Run the detectors (all, or ``kinds``) over the window ``since`` .. ``now``.

    ``since`` is a time or a duration before ``now`` (default: the current time);
    ``params`` a :class:`Params` or a mapping of its fields. Raises AnalysisError for a
    bad window, unknown kinds or parameters, and StoreError for database trouble.
    """
    chosen = _chosen(kinds)
    settings = Params.coerce(params)
    start, end, base_start, base_end = _window(since, now, settings)
    started = utcnow()
    findings: list[Finding] = []
    seconds: dict[str, float] = {}
    with db.connect() as conn:
        if db.is_postgres:
            # One snapshot for every query: the counts and findings of a run agree.
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            scan = Scan(conn, db.dialect_name, start, end, base_start, base_end, settings)
            _prepare(scan)
            t0 = time.perf_counter()
            scanned = read_frame(conn, "window_size", db.dialect_name, scan.bindings())
            seconds["window_size"] = time.perf_counter() - t0
            for detector in chosen:
                t0 = time.perf_counter()
                findings.extend(detector.finding(hit) for hit in detector.find(scan))
                seconds[detector.kind] = time.perf_counter() - t0
    counts = {d.kind: 0 for d in chosen}
    for finding in findings:
        counts[finding.kind] += finding.count
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.kind, -f.count, f.tool or ""))
    run = RunInfo(
        started_at=started,
        finished_at=utcnow(),
        since=start,
        now=end,
        baseline_start=base_start,
        baseline_end=base_end,
        backend=db.dialect_name,
        kinds=tuple(d.kind for d in chosen),
        transactions_scanned=int(scanned["scanned"].iloc[0] or 0),
        counts=counts,
        params=settings.to_dict(),
        seconds=seconds,
    )
    return AnalysisResult(run=run, findings=tuple(findings))


def _chosen(kinds: Iterable[str] | None) -> list[Detector]:
    if kinds is None:
        return list(_DETECTORS)
    wanted = list(dict.fromkeys(kinds))
    unknown = [k for k in wanted if k not in DETECTORS]
    if unknown:
        raise AnalysisError(
            f"unknown detector kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}"
        )
    if not wanted:
        raise AnalysisError("no detector chosen")
    return [DETECTORS[k] for k in wanted]
