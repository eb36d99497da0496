"""What the detectors report: their parameters, findings and the result of one run.

Plain data, no I/O. A :class:`Finding` is one problem in one place: a detector's
``kind`` in one tool (one breaker, for ``breaker_flapping``), with every transaction
involved. Its fingerprint hashes (kind, tool) only, so the same problem in the same tool
is one debt item however many tenants or runs it spans (see :mod:`analysis.ledger`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from analysis.duration import DurationError, format_duration, parse_duration
from bus.errors import BustrailError
from bus.models import Severity

__all__ = [
    "AnalysisError",
    "AnalysisResult",
    "Finding",
    "Hit",
    "Params",
    "RunInfo",
    "Severity",
    "fingerprint",
]

SEVERITY_ORDER = {
    Severity.CRITICAL: 0,
    Severity.ERROR: 1,
    Severity.WARNING: 2,
    Severity.INFO: 3,
}


class AnalysisError(BustrailError):
    """The analysis cannot run as asked (bad window or parameters, a database that hides
    rows from it)."""


def fingerprint(kind: str, subject: str | None) -> str:
    """Stable id of one problem in one place: a hash of (kind, tool), or (kind, breaker)."""
    return hashlib.sha256(json.dumps([kind, subject]).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Params:
    """The detectors' tunables (each detector lists the ones it reads)."""

    orphan_grace: timedelta = timedelta(hours=1)
    stuck_after: timedelta = timedelta(minutes=10)
    lost_after: timedelta = timedelta(minutes=10)
    cleanup_grace: timedelta = timedelta(minutes=15)
    waste_ratio: float = 0.9
    flap_opens: int = 3
    flap_window: timedelta = timedelta(minutes=10)
    min_calls: int = 20
    # The regressions' baseline window; default: as long as the analysis window, just
    # before it.
    baseline_start: datetime | None = None
    baseline_end: datetime | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, timedelta) and value < timedelta(0):
                raise AnalysisError(f"parameter {f.name} must not be negative")
        if not self.waste_ratio > 0:
            raise AnalysisError("parameter waste_ratio must be greater than 0")
        if self.flap_opens < 2:
            raise AnalysisError("parameter flap_opens must be at least 2")
        if self.flap_window <= timedelta(0):
            raise AnalysisError("parameter flap_window must be greater than zero")
        if self.min_calls < 1:
            raise AnalysisError("parameter min_calls must be at least 1")
        if (self.baseline_start is None) != (self.baseline_end is None):
            raise AnalysisError("give both baseline_start and baseline_end, or neither")

    @classmethod
    def coerce(cls, value: Params | Mapping[str, Any] | None) -> Params:
        """Params from Params, a mapping (durations as timedelta, seconds or text like
        ``15m``) or None (the defaults). Unknown names are an error, not ignored."""
        if value is None:
            return cls()
        if isinstance(value, Params):
            return value
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise AnalysisError(
                f"unknown detector parameter(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        converted: dict[str, Any] = {}
        for name, given in value.items():
            default = getattr(cls, name)
            try:
                converted[name] = _convert(given, default)
            except (TypeError, ValueError) as exc:
                raise AnalysisError(f"parameter {name}: {exc}") from None
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, timedelta):
                out[f.name] = format_duration(value) if value else "0s"
            elif isinstance(value, datetime):
                out[f.name] = value.isoformat()
            else:
                out[f.name] = value
        return out


def _convert(given: Any, default: Any) -> Any:
    if isinstance(default, timedelta):
        if isinstance(given, timedelta):
            return given
        if isinstance(given, int | float) and not isinstance(given, bool):
            return timedelta(seconds=given)
        if isinstance(given, str):
            try:
                return parse_duration(given)
            except DurationError as exc:
                raise ValueError(str(exc)) from None
        raise TypeError(f"expected a duration, got {given!r}")
    if isinstance(default, bool) or given is None:
        return given
    if isinstance(default, int):
        if isinstance(given, bool) or not isinstance(given, int):
            raise TypeError(f"expected a whole number, got {given!r}")
        return given
    if isinstance(default, float):
        if isinstance(given, bool) or not isinstance(given, int | float):
            raise TypeError(f"expected a number, got {given!r}")
        return float(given)
    if isinstance(given, datetime):  # the baseline bounds (default None)
        return given
    raise TypeError(f"expected a timestamp, got {given!r}")


@dataclass
class Hit:
    """What a detector found in one place, before it becomes a Finding."""

    subject: str | None  # the tool; the breaker for breaker_flapping
    transaction_ids: list[str]
    tenants: list[str] = field(default_factory=list)
    count: int | None = None  # defaults to the number of transactions
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # facts for the explanation ("p95 900 ms vs 120 ms before")


@dataclass(frozen=True)
class Finding:
    """One problem in one tool (or breaker), with every transaction involved."""

    kind: str
    severity: Severity
    fingerprint: str
    tool: str | None
    count: int  # transactions involved; for breaker_flapping, the flapping opens
    transaction_ids: tuple[str, ...]
    title: str
    explanation: str
    remedy: str
    tenants: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tenant(self) -> str | None:
        """The tenant, when every transaction involved belongs to one."""
        return self.tenants[0] if len(self.tenants) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity.value,
            "fingerprint": self.fingerprint,
            "tool": self.tool,
            "count": self.count,
            "transaction_ids": list(self.transaction_ids),
            "title": self.title,
            "explanation": self.explanation,
            "remedy": self.remedy,
            "tenants": list(self.tenants),
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class RunInfo:
    """What one analysis looked at and how long it took."""

    started_at: datetime
    finished_at: datetime
    since: datetime
    now: datetime
    baseline_start: datetime
    baseline_end: datetime
    backend: str
    kinds: tuple[str, ...]  # the detectors that ran (the ledger resolves only these)
    transactions_scanned: int
    counts: Mapping[str, int]  # kind -> transactions (for breaker_flapping: opens) found
    params: Mapping[str, Any]
    seconds: Mapping[str, float]  # detector -> seconds it took

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "since": self.since.isoformat(),
            "now": self.now.isoformat(),
            "baseline_start": self.baseline_start.isoformat(),
            "baseline_end": self.baseline_end.isoformat(),
            "backend": self.backend,
            "kinds": list(self.kinds),
            "transactions_scanned": self.transactions_scanned,
            "counts": dict(self.counts),
            "params": dict(self.params),
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
        }


@dataclass(frozen=True)
class AnalysisResult:
    run: RunInfo
    findings: tuple[Finding, ...]

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def transaction_ids(self, kind: str) -> set[str]:
        """Every transaction id the findings of ``kind`` involve."""
        return {tx for f in self.of_kind(kind) for tx in f.transaction_ids}

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run.to_dict(), "findings": [f.to_dict() for f in self.findings]}
