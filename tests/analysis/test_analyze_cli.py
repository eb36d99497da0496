"""`bustrail analyze` and `bustrail debt`, run as the real command line in a subprocess
against a seeded database on each backend (DATABASE_URL: an SQLite file, PostgreSQL).

(Named test_analyze_cli.py: tests/daemon/test_cli.py holds the basename test_cli.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from analysis.queries import canonical_id
from bus.db import Database, utcnow
from tests.analysis.audit_seed import seed, tx

FINDING_KEYS = {
    "kind",
    "severity",
    "fingerprint",
    "count",
    "transaction_ids",
    "explanation",
    "remedy",
    "tool",
}


def bustrail(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MESSAGE_BUS_", "BUSTRAIL_", "DATABASE_URL", "COLUMNS"))
    }
    env["DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        env=env,
        cwd=cwd,  # no stray .env from the checkout
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def seeded(db_url: str) -> dict[str, set[str]]:
    """Two kinds of silent failure in the audit trail: their transaction ids by kind."""
    now = utcnow()
    untraced = [tx(now, timedelta(hours=h), tool="echo", trace_id=None) for h in (1, 2)]
    empty = [tx(now, timedelta(hours=3), tool="search", error_kind="error_text")]
    clean = [tx(now, timedelta(minutes=30 + m)) for m in range(5)]
    db = Database(db_url)
    try:
        seed(db, [*untraced, *empty, *clean])
    finally:
        db.dispose()
    return {
        "missing_trace": {canonical_id(r["id"]) for r in untraced},
        "empty_success": {canonical_id(r["id"]) for r in empty},
    }


def one_json_object(out: str) -> Any:
    """The whole of stdout is one JSON document (json.loads refuses anything more)."""
    return json.loads(out)


def test_analyze_json_prints_one_object_with_the_findings(
    db_url: str, seeded: dict[str, set[str]], tmp_path: Path
) -> None:
    done = bustrail(db_url, tmp_path, "analyze", "--json", "--since", "24h")

    assert done.returncode == 0, done.stderr
    payload = one_json_object(done.stdout)
    assert set(payload) == {"run", "findings"}
    run = payload["run"]
    assert run["transactions_scanned"] == 8
    assert run["counts"]["missing_trace"] == 2 and run["counts"]["empty_success"] == 1
    assert run["params"]["orphan_grace"] == "1h"
    found: dict[str, set[str]] = {}
    for finding in payload["findings"]:
        assert set(finding) >= FINDING_KEYS
        assert finding["count"] == len(finding["transaction_ids"])
        assert finding["explanation"] and finding["remedy"]
        found.setdefault(finding["kind"], set()).update(finding["transaction_ids"])
    assert found == seeded
    tools = {f["kind"]: f["tool"] for f in payload["findings"]}
    assert tools == {"missing_trace": "echo", "empty_success": "search"}
    assert [f["severity"] for f in payload["findings"]] == ["warning", "info"]  # worst first


def test_analyze_prints_a_table_by_default(
    db_url: str, seeded: dict[str, set[str]], tmp_path: Path
) -> None:
    done = bustrail(db_url, tmp_path, "analyze")

    assert done.returncode == 0, done.stderr
    for text in ("missing_trace", "empty_success", "search", "2 finding(s)"):
        assert text in done.stdout


def test_record_then_list_show_and_acknowledge(
    db_url: str, seeded: dict[str, set[str]], tmp_path: Path
) -> None:
    recorded = bustrail(db_url, tmp_path, "analyze", "--record")
    assert recorded.returncode == 0, recorded.stderr
    assert "2 new, 0 resolved, 0 reopened; 2 open" in recorded.stdout

    again = bustrail(db_url, tmp_path, "analyze", "--record", "--json")
    assert again.returncode == 0, again.stderr
    ledger = one_json_object(again.stdout)["ledger"]
    assert ledger["new"] == [] and len(ledger["seen"]) == 2 and ledger["open_count"] == 2

    listed = bustrail(db_url, tmp_path, "debt", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = one_json_object(listed.stdout)
    assert {e["kind"] for e in entries} == set(seeded)
    trace = next(e for e in entries if e["kind"] == "missing_trace")
    assert set(trace["sample_transaction_ids"]) == seeded["missing_trace"]

    table = bustrail(db_url, tmp_path, "debt", "list")
    assert table.returncode == 0 and "missing_trace" in table.stdout

    shown = bustrail(db_url, tmp_path, "debt", "show", str(trace["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "missing_trace" in shown.stdout
    assert all(tx_id in shown.stdout for tx_id in seeded["missing_trace"])

    acked = bustrail(db_url, tmp_path, "debt", "ack", str(trace["id"]), "--by", "alice")
    assert acked.returncode == 0, acked.stderr
    assert "acknowledged by alice" in acked.stdout
    after = one_json_object(
        bustrail(db_url, tmp_path, "debt", "show", str(trace["id"]), "--json").stdout
    )
    assert after["status"] == "acknowledged" and after["acknowledged_by"] == "alice"
    still_open = one_json_object(bustrail(db_url, tmp_path, "debt", "list", "--json").stdout)
    assert [e["kind"] for e in still_open] == ["empty_success"]
    everything = bustrail(db_url, tmp_path, "debt", "list", "--status", "all", "--json")
    assert len(one_json_object(everything.stdout)) == 2


@pytest.mark.parametrize("command", [("show", "4242"), ("ack", "4242", "--by", "alice")])
def test_an_unknown_finding_is_one_clear_error(
    db_url: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    done = bustrail(db_url, tmp_path, "debt", *command)

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "bustrail: no finding with id 4242 (see `bustrail debt list --status all`)"
    )


@pytest.mark.parametrize("since", ["5x", "15", "-3h", "0m", "yesterday"])
def test_a_bad_since_is_one_clear_error_and_exit_2(
    sqlite_url: str, tmp_path: Path, since: str
) -> None:
    done = bustrail(sqlite_url, tmp_path, "analyze", "--since", since)

    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"bustrail: invalid --since: {since!r}")
    assert "90s, 15m, 24h or 7d" in lines[0] or "greater than zero" in lines[0]


def test_a_bad_status_is_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    done = bustrail(sqlite_url, tmp_path, "debt", "list", "--status", "closed")
    assert done.returncode == 2
    assert "invalid --status 'closed'" in done.stderr


def test_a_database_without_the_schema_is_exit_1(tmp_path: Path) -> None:
    done = bustrail(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path, "analyze")
    assert done.returncode == 1
    assert "bustrail db upgrade" in done.stderr and "Traceback" not in done.stderr


def test_help_documents_the_exit_codes(tmp_path: Path) -> None:
    for command in (("analyze",), ("debt", "list"), ("debt", "show"), ("debt", "ack")):
        done = bustrail("sqlite:///unused.db", tmp_path, *command, "--help")
        assert done.returncode == 0
        text = " ".join(done.stdout.split())
        assert "Exit codes: 0 done; 1 the database failed" in text
        assert "2 bad options or settings" in text
