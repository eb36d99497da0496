"""The newcomer's path: a fresh clone, the README's first command, as written.

`make demo` must build its own environment and run the whole product on the embedded
database: the summary names a finding for every injected fault kind, shows a breaker
trip, and leaves a database the dashboard can open.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_quickstart() -> list[str]:
    """The commands of the README's first code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README has no sh code block"
    return [
        line.split("#")[0].strip() for line in block[1].splitlines() if line.split("#")[0].strip()
    ]


def test_readme_starts_with_the_two_commands() -> None:
    assert _readme_quickstart() == ["make demo", "make test"]


@pytest.mark.slow
def test_make_demo_in_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "bustrail"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # The working tree as committed plus what is not committed yet: the test checks
    # this tree, not the last commit.
    for path in subprocess.run(
        ["git", "ls-files", "--modified", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split():
        source = ROOT / path
        if source.is_file():
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / path)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BUSTRAIL_", "MESSAGE_BUS_", "DATABASE_URL", "VIRTUAL_ENV"))
    }
    # pip may reuse its cache; everything else is built from scratch in the clone.
    result = subprocess.run(
        ["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    output = result.stdout + result.stderr
    (tmp_path / "demo-output.txt").write_text(output)
    assert result.returncode == 0, output[-4000:]
    assert "Every injected fault was found" in output, output[-4000:]
    trips = re.search(r"breaker trips (\d+)", output)
    assert trips and int(trips[1]) >= 1, output[-3000:]
    for kind in (
        "orphaned_claim_check",
        "checksum_mismatch",
        "stuck_pending",
        "lost_response",
        "fallback_oversize",
        "empty_success",
        "cleanup_lag",
        "compression_waste",
        "breaker_flapping",
        "missing_trace",
        "duplicate_delivery",
        "error_rate_regression",
        "latency_regression",
    ):
        assert kind in output, f"{kind} missing from the demo summary"
    database = clone / ".bustrail" / "bustrail.db"
    assert database.is_file()
    assert (clone / ".bustrail" / "report.html").is_file()
    # The dashboard's own queries open the database the demo left, and see its traffic.
    script = (
        "import sys; from datetime import timedelta; from bus.db import Database, utcnow; "
        "from dashboard import queries; url = sys.argv[1]; "
        "print(queries.database_state(url)); db = Database(url); now = utcnow(); "
        "o = queries.overview(db, now - timedelta(hours=1), now, 60); "
        "print(sum(o.totals.values()) > 0, len(queries.debt(db).__dict__))"
    )
    check = subprocess.run(
        [str(clone / ".venv/bin/python"), "-c", script, f"sqlite:///{database}"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines()[0] == "ok", check.stdout
    assert check.stdout.splitlines()[1].startswith("True"), check.stdout

    # The commands the demo prints at its end work as printed, each given a free port,
    # on the database the demo left: the dashboard answers, /metrics shows its debt.
    hints = re.findall(r"^(Dashboard|Metrics): +(.+?) +\(then open (\S+)\)$", output, re.M)
    assert [name for name, _, _ in hints] == ["Dashboard", "Metrics"], output[-1500:]
    for name, command, url in hints:
        port = _free_port()
        url = re.sub(r":\d+/?", f":{port}/", url, count=1)
        body = _serve_and_get(f"{command} --port {port}", url, clone, env)
        if name == "Metrics":
            assert "bustrail_findings_open{" in body, body[:2000]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_and_get(command: str, url: str, cwd: Path, env: dict[str, str]) -> str:
    """Start ``command`` in a shell, GET ``url`` once it answers, stop it; the body."""
    server = subprocess.Popen(
        command,
        shell=True,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"{command!r} exited: {server.stdout.read()}"  # type: ignore[union-attr]
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(url, timeout=10)
                if response.status_code == 200:
                    return response.text
            assert time.monotonic() < deadline, f"{url} never answered 200 to {command!r}"
            time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stdout.close()  # type: ignore[union-attr]
