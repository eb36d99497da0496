"""Recall of the detectors against the workload's ground truth, on real daemons.

Each test runs ``analysis.workload`` (real daemons in subprocesses, real outages,
crashes, damaged chunks and hang-ups), then ``run_detectors`` over the run's window with
the parameters the ground truth suggests, and checks:

* every injected fault is found: for each detector kind, every transaction id the
  workload injected is in a finding of that kind (recall 100%, per kind and per id);
* nothing innocent is reported: for each detector kind, every transaction id in its
  findings is one the workload injected for that kind (precision 100%, per kind and per
  id). A transaction legitimately shows as two kinds only where the ground truth records
  it under both: a result too large to fall back while the store is down is a
  fallback_oversize and one of the fallbacks of breaker_flapping;
* the ground truth holds what was asked (each fault injected exactly as many times);
* no finding is of a kind that was not injected;
* a clean run (``--faults none``) yields no finding at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.detectors import KINDS, run_detectors
from analysis.findings import AnalysisResult
from analysis.workload import FAULTS, GroundTruth, WorkloadConfig, parse_faults, run_workload
from bus.db import Database, utcnow

pytestmark = pytest.mark.slow


def _run(url: str, workdir: Path, *, seed: int, faults: str, calls: int) -> GroundTruth:
    config = WorkloadConfig(
        database_url=url, seed=seed, calls=calls, faults=parse_faults(faults), workdir=workdir
    )
    return run_workload(config)


def _analyse(url: str, truth: GroundTruth) -> AnalysisResult:
    assert utcnow() >= truth.ready_at
    db = Database(url)
    try:
        return run_detectors(db, truth.since, utcnow(), truth.detector_params())
    finally:
        db.dispose()


def _expected_transactions(kind: str, count: int) -> int | None:
    """How many transaction ids ``count`` injections of ``kind`` leave (None: varies)."""
    if kind == "duplicate_delivery":
        return 2 * count  # both answers to the one request id
    if kind == "breaker_flapping":
        return None  # the fallbacks while it flapped
    return count


def _assert_truth_is_what_was_asked(truth: GroundTruth, asked: dict[str, int]) -> None:
    assert set(truth.truth) == set(KINDS)
    for name, count in asked.items():
        kind = FAULTS[name]
        assert truth.faults[kind] == count
        expected = _expected_transactions(kind, count)
        if expected is not None:
            assert len(truth.truth[kind]) == expected, (kind, truth.truth[kind])
    ids = [tx for kind_ids in truth.truth.values() for tx in kind_ids]
    flapping = set(truth.truth["breaker_flapping"])
    others = [tx for tx in ids if tx not in flapping]
    # Apart from the fallbacks made while the breaker flapped (among them the oversize
    # ones), each injected transaction carries one fault.
    assert len(others) == len(set(others))


def _assert_recall_and_precision(truth: GroundTruth, result: AnalysisResult) -> None:
    missing = {}
    for kind, ids in truth.truth.items():
        if not ids:
            continue
        found = result.transaction_ids(kind)
        lost = sorted(set(ids) - found)
        if lost or not result.of_kind(kind):
            missing[kind] = lost or ["(no finding of this kind)"]
    assert not missing, f"injected faults the detectors missed: {missing}"
    innocent = {}
    for kind in KINDS:
        extra = sorted(result.transaction_ids(kind) - set(truth.truth[kind]))
        if extra:
            elsewhere = {tx: [k for k, ids in truth.truth.items() if tx in ids] for tx in extra}
            innocent[kind] = elsewhere
    assert not innocent, (
        "transactions reported but not injected for that kind "
        f"(id -> the kinds the truth does record it under): {innocent}"
    )
    unexpected = {f.kind for f in result.findings} - truth.expected_kinds()
    assert not unexpected, f"findings of kinds never injected: {sorted(unexpected)}"


def _assert_clean(result: AnalysisResult) -> None:
    assert result.run.transactions_scanned > 0
    described = [(f.kind, f.tool, f.count, f.explanation) for f in result.findings]
    assert not result.findings, f"a clean run has findings: {described}"


def test_every_injected_fault_is_found_seed_1_default_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'recall.db'}"
    truth = _run(url, tmp_path / "work", seed=1, faults="all", calls=150)
    _assert_truth_is_what_was_asked(truth, parse_faults("all"))
    assert truth.truth["breaker_flapping"]  # three outages: it flapped
    _assert_recall_and_precision(truth, _analyse(url, truth))


def test_every_injected_fault_is_found_seed_2_other_counts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'recall.db'}"
    spec = "all,orphan=5,corrupt=1,empty=6,duplicate=3,oversize=3,errors=1,slow=1,outage=4"
    truth = _run(url, tmp_path / "work", seed=2, faults=spec, calls=60)
    _assert_truth_is_what_was_asked(truth, parse_faults(spec))
    _assert_recall_and_precision(truth, _analyse(url, truth))


@pytest.mark.postgres
def test_every_injected_fault_is_found_seed_3_postgresql(pg_url: str, tmp_path: Path) -> None:
    truth = _run(pg_url, tmp_path / "work", seed=3, faults="all", calls=60)
    _assert_truth_is_what_was_asked(truth, parse_faults("all"))
    _assert_recall_and_precision(truth, _analyse(pg_url, truth))


def test_a_clean_workload_has_no_findings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'clean.db'}"
    truth = _run(url, tmp_path / "work", seed=4, faults="none", calls=150)
    assert not truth.expected_kinds() and truth.transactions >= 150
    _assert_clean(_analyse(url, truth))


@pytest.mark.postgres
def test_a_clean_workload_has_no_findings_postgresql(pg_url: str, tmp_path: Path) -> None:
    truth = _run(pg_url, tmp_path / "work", seed=5, faults="none", calls=60)
    assert not truth.expected_kinds()
    _assert_clean(_analyse(pg_url, truth))
