"""`bustrail load`: its fault spec, its command line, the ground truth it writes.

The command runs as a real subprocess, which starts real daemons of its own; the ground
truth it writes is checked against the audit rows in the database it used.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from analysis.workload import (
    DEFAULT_FAULTS,
    FAULTS,
    GroundTruth,
    WorkloadConfig,
    WorkloadError,
    parse_faults,
    run_workload,
)
from bus.db import Database, utcnow
from bus.records import transactions

ROOT = Path(__file__).resolve().parents[2]


def _env(database_url: str) -> dict[str, str]:
    own = ("BUSTRAIL_", "MESSAGE_BUS_", "CIRCUIT_BREAKER_", "DATABASE_", "FALLBACK_TO_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    env["DATABASE_URL"] = database_url
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _bustrail(*args: str, cwd: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=cwd,
        env=_env(database_url),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )


# -- the fault spec ----------------------------------------------------------------------------
def test_all_is_every_default_and_none_is_nothing() -> None:
    assert parse_faults("all") == DEFAULT_FAULTS
    assert set(DEFAULT_FAULTS) == set(FAULTS)
    assert all(count > 0 for count in DEFAULT_FAULTS.values())
    assert parse_faults("none") == dict.fromkeys(FAULTS, 0)


def test_a_list_names_the_only_faults_and_all_first_changes_defaults() -> None:
    only = parse_faults("orphan=3, corrupt=2,outage=1")
    assert {k: v for k, v in only.items() if v} == {"orphan": 3, "corrupt": 2, "outage": 1}
    changed = parse_faults("all,orphan=5,slow=0")
    assert changed == {**DEFAULT_FAULTS, "orphan": 5, "slow": 0}


def test_detector_kinds_are_accepted_as_fault_names() -> None:
    counts = parse_faults("orphaned_claim_check=2,latency_regression=1")
    assert counts["orphan"] == 2 and counts["slow"] == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no faults given"),
        ("bogus=1", "unknown fault 'bogus'"),
        ("orphan", "expected orphan=COUNT"),
        ("orphan=-1", "expected orphan=COUNT"),
        ("orphan=two", "expected orphan=COUNT"),
        ("orphan=1,all", "'all' must come first"),
    ],
)
def test_a_bad_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_faults(spec)


def test_a_bad_config_is_refused_before_anything_starts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(WorkloadError, match="unknown fault"):
        run_workload(WorkloadConfig(database_url=url, faults={"meteor": 1}))
    with pytest.raises(WorkloadError, match="min_calls"):
        run_workload(WorkloadConfig(database_url=url, min_calls=50, probe_calls=12))
    assert not (tmp_path / "never.db").exists()


# -- the command line --------------------------------------------------------------------------
def test_load_runs_a_workload_shows_progress_and_writes_the_ground_truth(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'load.db'}"
    truth_file = tmp_path / "truth.json"
    proc = _bustrail(
        "load",
        "--seed",
        "1",
        "--calls",
        "25",
        "--faults",
        "orphan=2,empty=2,duplicate=1,untraced=1",
        "--truth",
        str(truth_file),
        cwd=tmp_path,
        database_url=url,
    )
    assert proc.returncode == 0, proc.stderr
    # Progress: the phases as they start, and the bar (its last state when not a tty).
    assert "load baseline:" in proc.stderr
    assert "load traffic:" in proc.stderr
    assert "load untraced:" in proc.stderr
    assert re.search(r"(\d+)/\1 calls", proc.stderr), proc.stderr
    # Once the phases are over the bar says so, not the last phase's name.
    assert re.search(r"^done +\S+ +(\d+)/\1 calls", proc.stderr, re.M), proc.stderr
    assert "orphaned_claim_check" in proc.stdout and f"written to {truth_file}" in proc.stdout

    doc = json.loads(truth_file.read_text())
    truth = GroundTruth.from_dict(doc)
    assert truth.seed == 1 and truth.calls == 25
    injected = {kind: len(ids) for kind, ids in truth.truth.items() if ids}
    assert injected == {
        "orphaned_claim_check": 2,
        "empty_success": 2,
        "duplicate_delivery": 2,  # one request id answered twice
        "missing_trace": 1,
    }
    assert truth.faults["orphaned_claim_check"] == 2 and truth.faults["stuck_pending"] == 0
    assert truth.started_at < truth.since < truth.finished_at <= truth.ready_at
    assert [p["name"] for p in truth.phases] == ["baseline", "traffic", "probes", "untraced"]
    assert "wl-" not in proc.stdout + proc.stderr  # tokens are never printed

    # Every id is a real audit row of that database, in the state the fault leaves.
    db = Database(url)
    try:
        with db.connect() as conn:
            found = conn.execute(sa.select(transactions)).mappings().all()
        rows = {str(uuid.UUID(str(r["id"]))): r for r in found}
    finally:
        db.dispose()
    assert len(rows) >= truth.transactions
    for tx_id in truth.truth["orphaned_claim_check"]:
        assert rows[tx_id]["route"] == "store" and rows[tx_id]["fetch_count"] == 0
    for tx_id in truth.truth["empty_success"]:
        assert rows[tx_id]["error_kind"] in ("empty_result", "error_text")
    first, second = (rows[i] for i in truth.truth["duplicate_delivery"])
    assert (first["session_id"], first["request_id"]) == (
        second["session_id"],
        second["request_id"],
    )
    (untraced,) = truth.truth["missing_trace"]
    assert rows[untraced]["trace_id"] is None
    stored = [r for r in rows.values() if r["route"] == "store" and r["direction"] == "result"]
    assert {r["status"] for r in stored} == {"stored", "fetched"}
    assert sum(r["fetch_count"] == 0 for r in stored) == 2  # the orphans, and only them

    # `bustrail analyze --truth` scores the detectors against it: every fault found.
    wait = (truth.ready_at - utcnow()).total_seconds()
    if wait > 0:
        early = _bustrail("analyze", "--truth", str(truth_file), cwd=tmp_path, database_url=url)
        assert early.returncode == 1 and "graces end at" in early.stderr, early.stderr
        time.sleep(wait)
    scored = _bustrail(
        "analyze", "--truth", str(truth_file), "--json", cwd=tmp_path, database_url=url
    )
    assert scored.returncode == 0, scored.stderr
    score = json.loads(scored.stdout)["truth"]
    assert {kind: (s["injected"], s["found"], s["missed"]) for kind, s in score.items()} == {
        kind: (n, n, []) for kind, n in injected.items()
    }
    table = _bustrail("analyze", "--truth", str(truth_file), cwd=tmp_path, database_url=url)
    assert table.returncode == 0 and "Every injected fault was found (4 kinds)." in table.stdout

    # Faults the detectors cannot have found (ids that are not there): exit 1, named.
    doc["truth"]["checksum_mismatch"] = ["00000000-0000-7000-8000-000000000000"]
    truth_file.write_text(json.dumps(doc))
    missed = _bustrail("analyze", "--truth", str(truth_file), cwd=tmp_path, database_url=url)
    assert missed.returncode == 1
    assert "00000000-0000-7000-8000-000000000000" in missed.stdout
    assert "1 injected fault(s) missed." in missed.stdout

    bad = _bustrail("analyze", "--truth", str(tmp_path), cwd=tmp_path, database_url=url)
    assert bad.returncode == 2 and "not a ground truth" in bad.stderr


def test_a_bad_faults_spec_is_one_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'load.db'}"
    proc = _bustrail("load", "--faults", "orphan=3,bogus=1", cwd=tmp_path, database_url=url)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bustrail: --faults: unknown fault 'bogus'; known: orphan,")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "load.db").exists()

    proc = _bustrail("load", "--faults", "orphan=many", cwd=tmp_path, database_url=url)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "bustrail: --faults: fault 'orphan': expected orphan=COUNT (a whole number >= 0)"
    )
