"""The debt ledger: findings kept by fingerprint across analysis runs.

:func:`record` writes one ``analysis_runs`` row and brings ``findings`` up to date, in
one database transaction:

* a fingerprint seen for the first time opens a finding (``open``);
* one seen again stays as it is (``open``, or ``acknowledged``): ``last_seen_at``,
  ``occurrences`` (transactions involved in this run), the sample of transaction ids and
  ``last_run_id`` follow the latest run;
* an open or acknowledged finding of a kind that ran and was not found is ``resolved``;
* a resolved finding found again reopens as a regression (``open``, ``regression``
  true, ``reopened_count`` + 1).

The run row keeps the counts per kind and how many findings were new, resolved,
reopened and still open (acknowledged included) after it: the burn-down. Times written
(first/last seen, resolved) are the run's ``now``, the end of the window it analysed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from analysis.findings import AnalysisError, AnalysisResult, Finding
from bus.db import Database, as_utc, utcnow
from bus.findings import UNRESOLVED, open_findings_by_kind
from bus.models import AnalysisRun, FindingStatus
from bus.models import Finding as Entry

__all__ = [
    "SAMPLE_SIZE",
    "STATUSES",
    "Entry",
    "FindingNotFound",
    "LedgerChange",
    "acknowledge",
    "burn_down",
    "entry_to_dict",
    "list_findings",
    "open_findings_by_kind",
    "record",
    "show",
]

SAMPLE_SIZE = 20
STATUSES = ("open", "acknowledged", "resolved", "all")
findings: sa.Table = Entry.__table__  # type: ignore[attr-defined]
runs: sa.Table = AnalysisRun.__table__  # type: ignore[attr-defined]
_LOCK = 4242002  # one ledger writer at a time (PostgreSQL advisory lock)


class FindingNotFound(AnalysisError):
    def __init__(self, finding_id: int) -> None:
        self.finding_id = finding_id
        super().__init__(f"no finding with id {finding_id} (see `bustrail debt list --status all`)")


@dataclass
class LedgerChange:
    """What one :func:`record` did."""

    run_id: int
    new: list[Entry] = field(default_factory=list)
    seen: list[Entry] = field(default_factory=list)  # found again, still open/acknowledged
    resolved: list[Entry] = field(default_factory=list)
    reopened: list[Entry] = field(default_factory=list)
    open_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        def brief(entries: list[Entry]) -> list[dict[str, Any]]:
            return [
                {"id": e.id, "kind": e.kind, "tool": e.tool, "fingerprint": e.fingerprint}
                for e in entries
            ]

        return {
            "run_id": self.run_id,
            "new": brief(self.new),
            "seen": brief(self.seen),
            "resolved": brief(self.resolved),
            "reopened": brief(self.reopened),
            "open_count": self.open_count,
        }


def _sample(transaction_ids: Iterable[str]) -> list[str]:
    # UUIDv7 text sorts by time: the newest SAMPLE_SIZE.
    return sorted(transaction_ids, reverse=True)[:SAMPLE_SIZE]


def _values(finding: Finding, at: datetime, run_id: int) -> dict[str, Any]:
    """The columns a run refreshes on every finding it sees."""
    return {
        "kind": finding.kind,
        "severity": finding.severity.value,
        "title": finding.title,
        "explanation": finding.explanation,
        "remedy": finding.remedy,
        "tool": finding.tool,
        "tenant": finding.tenant,
        "last_seen_at": at,
        "occurrences": finding.count,
        "sample_transaction_ids": _sample(finding.transaction_ids),
        "last_run_id": run_id,
    }


def record(db: Database, result: AnalysisResult) -> LedgerChange:
    """Write the run and update the findings (see the module docstring)."""
    run = result.run
    at = run.now
    with db.begin() as conn:
        if db.is_postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        run_id = int(
            conn.execute(
                runs.insert()
                .values(
                    started_at=run.started_at,
                    finished_at=run.finished_at,
                    window_start=run.since,
                    window_end=run.now,
                    transactions_scanned=run.transactions_scanned,
                    counts=dict(run.counts),
                )
                .returning(runs.c.id)
            ).scalar_one()
        )
        change = LedgerChange(run_id=run_id)
        found = {f.fingerprint: f for f in result.findings}
        known = _known(conn, set(found), run.kinds)
        for fp, finding in found.items():
            entry = known.get(fp)
            values = _values(finding, at, run_id)
            if entry is None:
                new_id = conn.execute(
                    findings.insert()
                    .values(
                        fingerprint=fp,
                        status=FindingStatus.OPEN.value,
                        first_seen_at=at,
                        regression=False,
                        reopened_count=0,
                        **values,
                    )
                    .returning(findings.c.id)
                ).scalar_one()
                change.new.append(_get(conn, int(new_id)))
            elif entry.status == FindingStatus.RESOLVED:
                values.update(
                    status=FindingStatus.OPEN.value,
                    regression=True,
                    reopened_count=entry.reopened_count + 1,
                    resolved_at=None,
                    acknowledged_at=None,
                    acknowledged_by=None,
                )
                change.reopened.append(_update(conn, entry, values))
            else:
                change.seen.append(_update(conn, entry, values))
        for fp, entry in known.items():
            if fp not in found and entry.status != FindingStatus.RESOLVED:
                change.resolved.append(
                    _update(
                        conn, entry, {"status": FindingStatus.RESOLVED.value, "resolved_at": at}
                    )
                )
        change.open_count = int(
            conn.execute(
                sa.select(sa.func.count()).where(findings.c.status.in_(UNRESOLVED))
            ).scalar_one()
        )
        conn.execute(
            runs.update()
            .where(runs.c.id == run_id)
            .values(
                new_count=len(change.new),
                resolved_count=len(change.resolved),
                reopened_count=len(change.reopened),
                open_count=change.open_count,
            )
        )
    return change


def _known(conn: Connection, fingerprints: set[str], kinds: Iterable[str]) -> dict[str, Entry]:
    """The findings this run may touch: those it found, and the unresolved ones of the
    kinds it ran (which it resolves if it did not find them)."""
    query = sa.select(findings).where(
        sa.or_(
            findings.c.fingerprint.in_(sorted(fingerprints)),
            sa.and_(findings.c.status.in_(UNRESOLVED), findings.c.kind.in_(list(kinds))),
        )
    )
    return {e.fingerprint: e for e in map(_entry, conn.execute(query).mappings())}


def _entry(row: Any) -> Entry:
    values = dict(row)
    for name in ("first_seen_at", "last_seen_at", "resolved_at", "acknowledged_at"):
        values[name] = as_utc(values[name])
    values["status"] = FindingStatus(values["status"])
    return Entry(**values)


def _get(conn: Connection, finding_id: int) -> Entry:
    row = conn.execute(sa.select(findings).where(findings.c.id == finding_id)).mappings().first()
    if row is None:
        raise FindingNotFound(finding_id)
    return _entry(row)


def _update(conn: Connection, entry: Entry, values: dict[str, Any]) -> Entry:
    assert entry.id is not None
    conn.execute(findings.update().where(findings.c.id == entry.id).values(**values))
    return _get(conn, entry.id)


# -- reading and acknowledging -----------------------------------------------------------
def list_findings(db: Database, status: str = "open") -> list[Entry]:
    """Findings with ``status`` (open, acknowledged, resolved, or all), worst first."""
    if status not in STATUSES:
        raise AnalysisError(f"unknown status {status!r}: expected one of {', '.join(STATUSES)}")
    query = sa.select(findings)
    if status != "all":
        query = query.where(findings.c.status == status)
    with db.connect() as conn:
        entries = [_entry(row) for row in conn.execute(query).mappings()]
    severity = {"critical": 0, "error": 1, "warning": 2, "info": 3}
    entries.sort(
        key=lambda e: (
            severity.get(str(getattr(e.severity, "value", e.severity)), 9),
            -(e.last_seen_at.timestamp() if e.last_seen_at else 0),
            e.id or 0,
        )
    )
    return entries


def show(db: Database, finding_id: int) -> Entry:
    with db.connect() as conn:
        return _get(conn, finding_id)


def acknowledge(db: Database, finding_id: int, by: str, *, at: datetime | None = None) -> Entry:
    """Mark an open finding acknowledged (someone owns it). Acknowledging one already
    acknowledged changes nothing; a resolved finding cannot be acknowledged."""
    if not by.strip():
        raise AnalysisError("say who acknowledges the finding (--by NAME)")
    with db.begin() as conn:
        entry = _get(conn, finding_id)
        if entry.status == FindingStatus.RESOLVED:
            raise AnalysisError(
                f"finding {finding_id} is resolved: there is nothing to acknowledge"
            )
        if entry.status == FindingStatus.ACKNOWLEDGED:
            return entry
        return _update(
            conn,
            entry,
            {
                "status": FindingStatus.ACKNOWLEDGED.value,
                "acknowledged_at": at or utcnow(),
                "acknowledged_by": by.strip(),
            },
        )


def burn_down(db: Database) -> pd.DataFrame:
    """One row per analysis run, oldest first: new, resolved, reopened and open counts."""
    query = sa.select(
        runs.c.id,
        runs.c.started_at,
        runs.c.window_start,
        runs.c.window_end,
        runs.c.transactions_scanned,
        runs.c.new_count,
        runs.c.resolved_count,
        runs.c.reopened_count,
        runs.c.open_count,
    ).order_by(runs.c.id)
    with db.connect() as conn:
        result = conn.execute(query)
        frame = pd.DataFrame.from_records(result.fetchall(), columns=list(result.keys()))
    for name in ("started_at", "window_start", "window_end"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


def entry_to_dict(entry: Entry) -> dict[str, Any]:
    """A finding as JSON-ready values."""
    out: dict[str, Any] = {}
    for name in (column.name for column in findings.columns):
        value = getattr(entry, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif hasattr(value, "value"):
            value = value.value
        out[name] = value
    return out
