"""``BUSTRAIL_UPSTREAMS=@FILE``: the upstreams of ``bustrail serve`` from a JSON file.

docs/gateway.md: ``BUSTRAIL_UPSTREAMS='{"notes": "python notes_server.py"}'`` (or
``@upstreams.json``). A good file puts its upstreams behind the daemon as ``--upstream``
does; a bad one stops ``bustrail serve`` before it listens, with one line saying what is
wrong with which file, and exit code 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.support import audit_rows, wait_until
from tests.gateway.support import call, readyz, tool_names, upstream_command
from tests.helpers.daemon import DaemonProcess, daemon_env


def _serve_refused(tmp_path: Path, variable: str, *flags: str) -> list[str]:
    """``bustrail serve`` with BUSTRAIL_UPSTREAMS=``variable``: its stderr lines, once
    it has exited with code 2 without listening (a daemon that listens fails the test
    at once, not after a timeout)."""
    stderr = tmp_path / "serve.stderr"
    with stderr.open("w") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "serve", "--port", "0", *flags],
            env=daemon_env(tmp_path, bustrail_upstreams=variable),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert proc.stdout is not None
        with proc.stdout:
            printed = proc.stdout.readline()  # "" once it exits; its first line if it serves
            if printed:
                proc.kill()
            code = proc.wait(60)
    lines = stderr.read_text().strip().splitlines()
    assert not printed, f"bustrail serve started ({printed.strip()}); its stderr: {lines}"
    assert code == 2, (code, lines)
    return lines


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_upstreams_from_a_file_are_served(tmp_path: Path, where: str) -> None:
    """Named by an absolute path, or relative to where the daemon runs (as documented)."""
    config = tmp_path / "upstreams.json"
    config.write_text(json.dumps({"notes": upstream_command("notes")}), encoding="utf-8")
    variable = f"@{config}" if where == "absolute" else "@upstreams.json"
    env = daemon_env(tmp_path, bustrail_upstreams=variable, bustrail_audit_flush_seconds=0.05)
    daemon = DaemonProcess(env, cwd=tmp_path)
    try:
        assert readyz(daemon.http)[1]["checks"]["upstreams"]["notes"]["state"] == "ready"
        assert {"text", "rows", "whoami", "notes.echo"} <= tool_names(daemon.url)
        result = call(daemon.url, "whoami")
        assert result.text == "notes"  # the upstream the file named, started as it said
        tx = result.transaction_id
        assert tx is not None
        wait_until(lambda: len(audit_rows(env["DATABASE_URL"], id=tx)) == 1, "the audit row")
        assert audit_rows(env["DATABASE_URL"], id=tx)[0]["tool"] == "notes.whoami"
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read: No such file or directory"),
        ('{"notes": "python notes_server.py"', 'expected JSON like {"NAME": "COMMAND"}: '),
        ("", 'expected JSON like {"NAME": "COMMAND"}: '),
        ('["python notes_server.py"]', 'expected a JSON object {"NAME": "COMMAND"}'),
        ('{"notes": ""}', 'expected a JSON object {"NAME": "COMMAND"}'),
        ('{"notes": ["python", "notes_server.py"]}', 'expected a JSON object {"NAME": "COMMAND"}'),
    ],
    ids=["missing", "truncated", "empty", "a-list", "empty-command", "command-as-list"],
)
def test_a_bad_upstreams_file_is_one_clear_error(
    tmp_path: Path, content: str | None, says: str
) -> None:
    config = tmp_path / "upstreams.json"
    if content is not None:
        config.write_text(content, encoding="utf-8")
    lines = _serve_refused(tmp_path, f"@{config}")
    assert len(lines) == 2, lines
    assert lines[0] == "bustrail: invalid settings:"
    assert lines[1].startswith(f"  BUSTRAIL_UPSTREAMS ({config}): {says}"), lines


def test_an_upstream_named_in_the_file_and_by_a_flag_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "upstreams.json"
    config.write_text(json.dumps({"notes": "python notes_server.py"}), encoding="utf-8")
    lines = _serve_refused(tmp_path, f"@{config}", "--upstream", "notes=python other.py")
    assert lines == [
        "bustrail: invalid settings:",
        "  --upstream: names must be unique, got ['notes', 'notes']",
    ]


def test_a_name_twice_in_the_file_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "upstreams.json"
    config.write_text(
        '{"notes": "python notes_server.py", "notes": "python other_server.py"}',
        encoding="utf-8",
    )
    lines = _serve_refused(tmp_path, f"@{config}")
    assert len(lines) == 2 and lines[0] == "bustrail: invalid settings:", lines
    assert lines[1].startswith(f"  BUSTRAIL_UPSTREAMS ({config}): "), lines
    assert "'notes' is named twice" in lines[1], lines
