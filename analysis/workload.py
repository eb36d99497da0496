"""The fault-injecting workload behind ``bustrail load``: real traffic, real faults, and
the ground truth of what was injected.

It starts real daemons (``bustrail serve --tools analysis.workload_tools`` in
subprocesses) against DATABASE_URL and drives them with concurrent clients of several
tenants: many tools, results from a few bytes to tens of MB, every stored result fetched
and verified. Faults are injected a known number of times each, by real means:

=============  =========================  ==============================================
fault          detector kind              how
=============  =========================  ==============================================
orphan         orphaned_claim_check       a client never fetches its stored result
corrupt        checksum_mismatch          one byte of a stored chunk flipped in the
                                          database, then the result fetched
crash          stuck_pending              the daemon SIGKILLed while it stores a large
                                          result; restarted with a short
                                          BUSTRAIL_ABANDON_PENDING_SECONDS
disconnect     lost_response              the client hangs up before its result is sent
oversize       fallback_oversize          a result over the client's cap while the store
                                          is down
empty          empty_success              tools "succeeding" with "" or "Error: ..."
expiry         cleanup_lag                a 1-second TTL and no cleanup run
waste          compression_waste          a bundle whose head compresses (the 4 MiB
                                          probe) and whose tail does not
outage         breaker_flapping           store outages (SQLite's write lock held by
                                          another connection; a cut TCP proxy in front of
                                          PostgreSQL), each opening the breaker once
untraced       missing_trace              a daemon with BUSTRAIL_TRACE_EXPORTER=off
duplicate      duplicate_delivery         a request id sent again on its connection
errors         error_rate_regression      a tool failing after a healthy baseline
slow           latency_regression         a tool slowing down after a healthy baseline
=============  =========================  ==============================================

``errors`` and ``slow`` are measured against a baseline of the same two tools (an account
lookup, an order search) made before ``since``. The outcome, :class:`GroundTruth`, gives
the window (``since``), detector parameters suited to a run this short, and per detector
kind the ids of the transactions injected. The parts: :mod:`analysis.workload_mix` (the
calls), :mod:`analysis.workload_faults` (the machinery), :mod:`analysis.workload_run`
(the phases), :mod:`analysis.workload_tools` (the daemon's tools).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from analysis.workload_faults import WorkloadError
from analysis.workload_mix import DEFAULT_FAULTS, FAULTS, parse_faults
from analysis.workload_run import GRACE_SECONDS, Runner
from bus.db import mask_url

__all__ = [
    "DEFAULT_FAULTS",
    "FAULTS",
    "GroundTruth",
    "WorkloadConfig",
    "WorkloadError",
    "parse_faults",
    "run_workload",
]


@dataclass(frozen=True)
class WorkloadConfig:
    database_url: str
    seed: int = 1
    calls: int = 150  # traffic calls; injected faults and probes come on top
    faults: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_FAULTS))
    clients: int = 6
    probe_calls: int = 12  # calls of each probed tool per window (baseline, current)
    min_calls: int = 5  # the regression detectors' min_calls suggested in the truth
    flap_opens: int = 3  # the breaker_flapping detector's flap_opens
    workdir: Path | None = None  # daemon logs and spool; default: a temporary folder
    progress: bool = False  # a progress bar on stderr

    def count(self, fault: str) -> int:
        return int(self.faults.get(fault, 0))


# -- what was injected ------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """What a run injected: per detector kind, the ids of the transactions involved."""

    seed: int
    calls: int
    faults: dict[str, int]  # detector kind -> times injected
    database: str
    started_at: datetime
    since: datetime
    finished_at: datetime
    ready_at: datetime  # analyse no earlier: every grace has passed
    params: dict[str, Any]  # detector parameters for this run (Params.coerce accepts them)
    truth: dict[str, list[str]]  # detector kind -> transaction ids
    phases: list[dict[str, Any]] = field(default_factory=list)
    transactions: int = 0  # tool calls made
    notes: list[str] = field(default_factory=list)

    def detector_params(self) -> dict[str, Any]:
        """:attr:`params` as ``run_detectors`` takes them (the baseline bounds as times)."""
        params = dict(self.params)
        for name in ("baseline_start", "baseline_end"):
            if isinstance(params.get(name), str):
                params[name] = datetime.fromisoformat(params[name])
        return params

    def expected_kinds(self) -> set[str]:
        return {kind for kind, ids in self.truth.items() if ids}

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "calls": self.calls,
            "faults": self.faults,
            "database": self.database,
            "started_at": self.started_at.isoformat(),
            "since": self.since.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "ready_at": self.ready_at.isoformat(),
            "params": self.params,
            "truth": self.truth,
            "phases": self.phases,
            "transactions": self.transactions,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> GroundTruth:
        return cls(
            seed=int(doc["seed"]),
            calls=int(doc["calls"]),
            faults={str(k): int(v) for k, v in doc["faults"].items()},
            database=str(doc["database"]),
            started_at=datetime.fromisoformat(doc["started_at"]),
            since=datetime.fromisoformat(doc["since"]),
            finished_at=datetime.fromisoformat(doc["finished_at"]),
            ready_at=datetime.fromisoformat(doc["ready_at"]),
            params=dict(doc["params"]),
            truth={str(k): [str(i) for i in v] for k, v in doc["truth"].items()},
            phases=list(doc.get("phases", [])),
            transactions=int(doc.get("transactions", 0)),
            notes=list(doc.get("notes", [])),
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> GroundTruth:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


# -- the run ------------------------------------------------------------------------------------
def run_workload(config: WorkloadConfig) -> GroundTruth:
    """Run the whole workload (blocking); return what was injected."""
    _check(config)
    owned = config.workdir is None
    if config.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="bustrail-load-"))
    else:
        workdir = Path(config.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        record = asyncio.run(Runner(config, workdir).run())
    except WorkloadError as exc:
        if owned:  # the daemons' logs explain it: keep them
            raise WorkloadError(f"{exc}\n(the daemons' logs are kept in {workdir})") from exc
        raise
    except BaseException:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    if owned:
        shutil.rmtree(workdir, ignore_errors=True)
    return GroundTruth(
        seed=config.seed,
        calls=config.calls,
        faults={kind: config.count(fault) for fault, kind in FAULTS.items()},
        database=mask_url(record.database_url),
        started_at=record.started_at,
        since=record.since,
        finished_at=record.finished_at,
        ready_at=record.ready_at,
        params={
            "orphan_grace": f"{GRACE_SECONDS:g}s",
            "stuck_after": f"{GRACE_SECONDS:g}s",
            "lost_after": f"{GRACE_SECONDS:g}s",
            "cleanup_grace": f"{GRACE_SECONDS:g}s",
            "flap_opens": config.flap_opens,
            "flap_window": "10m",
            "min_calls": config.min_calls,
            # The regressions compare with the baseline made before `since`, whatever
            # else the database holds from earlier runs.
            "baseline_start": record.started_at.isoformat(),
            "baseline_end": record.since.isoformat(),
        },
        truth=record.truth,
        phases=record.phases,
        transactions=record.calls,
        notes=record.notes,
    )


def _check(config: WorkloadConfig) -> None:
    problems = []
    unknown = sorted(set(config.faults) - set(FAULTS))
    if unknown:
        problems.append(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    problems += [f"fault {k!r}: count {v} is negative" for k, v in config.faults.items() if v < 0]
    if config.calls < 0:
        problems.append(f"calls must be >= 0, got {config.calls}")
    if config.clients < 1:
        problems.append(f"clients must be >= 1, got {config.clients}")
    if not 1 <= config.min_calls <= config.probe_calls:
        problems.append(
            f"min_calls ({config.min_calls}) must be 1 to probe_calls ({config.probe_calls})"
        )
    if config.flap_opens < 2:
        problems.append(f"flap_opens must be >= 2, got {config.flap_opens}")
    if problems:
        raise WorkloadError("; ".join(problems))
