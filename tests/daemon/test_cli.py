"""The ``bustrail`` command line, run as a subprocess against a real daemon."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from daemon.tools import generate_json
from tests.daemon.support import audit_rows, wait_until
from tests.helpers.daemon import DaemonProcess, daemon_env, thread_daemon
from tests.helpers.tcpproxy import TCPProxy

TOKEN = "cli-token"
_SCRIPT = Path(sys.executable).with_name("bustrail")


def bustrail(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed ``bustrail`` script (``python -m daemon.cli`` if there is none)."""
    command = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "daemon.cli"]
    return subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DaemonProcess, dict[str, str]]]:
    """One daemon (auth on) for the client commands of this module, and its env."""
    tmp = tmp_path_factory.mktemp("cli")
    env = daemon_env(tmp, bustrail_auth_disabled="false", bustrail_auth_tokens=f"{TOKEN}=cli")
    daemon = DaemonProcess(env)
    try:
        yield daemon, env
    finally:
        daemon.stop()


def _client_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**{k: v for k, v in env.items() if k != "BUSTRAIL_TOKEN"}, **extra}


def test_call_prints_the_result_and_its_metadata(
    served: tuple[DaemonProcess, dict[str, str]],
) -> None:
    daemon, env = served
    done = bustrail(
        "call", "echo", "text=hello there", "--url", daemon.url, "--token", TOKEN, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello there\n"
    meta = json.loads(done.stderr.strip().splitlines()[-1])
    assert meta["route"] == "inline" and meta["checksum"].startswith("sha256:")


def test_call_takes_the_token_from_the_environment(
    served: tuple[DaemonProcess, dict[str, str]],
) -> None:
    daemon, env = served
    done = bustrail(
        "call",
        "echo",
        "text=via env",
        env=_client_env(env, BUSTRAIL_URL=daemon.url, BUSTRAIL_TOKEN=TOKEN),
    )
    assert (done.returncode, done.stdout) == (0, "via env\n"), done.stderr


def test_call_writes_a_stored_result_to_a_file(
    served: tuple[DaemonProcess, dict[str, str]], tmp_path: Path
) -> None:
    daemon, env = served
    target = tmp_path / "generated.json"
    done = bustrail(
        "call", "generate", "size=3000000", "seed=2", "-o", str(target),
        "--url", daemon.url, "--token", TOKEN, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == generate_json(3_000_000, 2).encode()
    meta = json.loads(done.stderr.strip().splitlines()[-1])
    assert meta["route"] == "store"


@pytest.mark.parametrize(
    ("args", "token", "says"),
    [
        (["fail", "message=on purpose"], TOKEN, "on purpose"),
        (["echo"], TOKEN, "-32602"),
        (["no_such_tool"], TOKEN, "unknown tool"),
        (["echo", "text=x"], "wrong-token", "token"),
        (["echo", "text=x"], None, "token"),
    ],
    ids=["tool-error", "missing-argument", "unknown-tool", "wrong-token", "no-token"],
)
def test_call_failures_exit_non_zero_with_one_clear_line(
    served: tuple[DaemonProcess, dict[str, str]], args: list[str], token: str | None, says: str
) -> None:
    daemon, env = served
    auth = ["--token", token] if token else []
    done = bustrail("call", *args, "--url", daemon.url, *auth, env=_client_env(env))
    assert done.returncode == 1
    assert says in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_fetch_writes_a_verified_file(
    served: tuple[DaemonProcess, dict[str, str]], tmp_path: Path
) -> None:
    daemon, env = served
    called = bustrail(
        "call", "generate", "size=2000000", "seed=9", "--url", daemon.url, "--token", TOKEN, env=env
    )
    assert called.returncode == 0, called.stderr
    tx_id = json.loads(called.stderr.strip().splitlines()[-1])["transaction_id"]
    target = tmp_path / "fetched.json"
    done = bustrail(
        "fetch", tx_id, "-o", str(target), "--url", daemon.url, "--token", TOKEN, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "checksum verified" in done.stdout
    assert target.read_bytes() == generate_json(2_000_000, 9).encode()
    rows = audit_rows(env["DATABASE_URL"], id=tx_id)
    assert rows[0]["fetch_count"] == 1

    missing = tmp_path / "missing.json"
    unknown = bustrail(
        "fetch",
        "01a21a44-2303-76a5-b84b-d1bc3e7b76c0",
        "-o",
        str(missing),
        "--url",
        daemon.url,
        "--token",
        TOKEN,
        env=env,
    )
    assert unknown.returncode == 1 and "404" in unknown.stderr
    assert not missing.exists()


def test_fetch_from_a_daemon_that_is_not_there_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = tmp_path / "never.json"
    done = bustrail(
        "fetch",
        "01a21a44-2303-76a5-b84b-d1bc3e7b76c0",
        "-o",
        str(target),
        "--url",
        f"ws://127.0.0.1:{port}/ws",
        env=daemon_env(tmp_path),
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"bustrail: GET http://127.0.0.1:{port}/v1/transactions/01a21a44")
    assert "no answer from the daemon (ConnectError" in line
    assert not target.exists()


def test_health_says_whether_the_daemon_answers(
    served: tuple[DaemonProcess, dict[str, str]],
) -> None:
    daemon, env = served
    up = bustrail("health", "--url", daemon.url, env=env)
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        nobody = f"ws://127.0.0.1:{probe.getsockname()[1]}/ws"
    down = bustrail("health", "--url", nobody, "--timeout", "2", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert '"database":"ok"' in up.stdout.replace(" ", "")
    assert down.returncode != 0
    assert "no answer" in down.stderr


@pytest.mark.postgres
def test_health_fails_when_the_database_does_not_answer(pg_url: str, tmp_path: Path) -> None:
    target = urlsplit(pg_url.replace("postgresql+psycopg", "postgresql"))
    proxy = TCPProxy(target.hostname or "127.0.0.1", target.port or 5432)
    try:
        proxied = pg_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
        env = daemon_env(tmp_path, database_url=proxied)
        daemon = DaemonProcess(env)
        try:
            assert bustrail("health", "--url", daemon.url, env=env).returncode == 0
            proxy.cut()
            down = bustrail("health", "--url", daemon.url, env=env)
            proxy.restore()
            wait_until(lambda: _ready(daemon.http), "the daemon to see its database again")
            back = bustrail("health", "--url", daemon.url, env=env)
        finally:
            daemon.stop()
    finally:
        proxy.close()
    assert down.returncode == 1
    assert "503" in down.stdout
    assert back.returncode == 0, back.stdout + back.stderr


def _ready(http: str) -> bool:
    return httpx.get(f"{http}/readyz", timeout=10).status_code == 200


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = daemon_env(
        tmp_path,
        database_url="postgresql://app:s3cr3t-pw@db.example:5432/bustrail"
        "?sslmode=require&sslpassword=key-pw&password=query-pw",
        bustrail_auth_tokens="tok-very-secret=alice",
        bustrail_auth_disabled="false",
    )
    done = bustrail("config", "show", env=env)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines())
    for secret in ("s3cr3t-pw", "key-pw", "query-pw", "tok-very-secret"):
        assert secret not in done.stdout, secret
    assert lines["DATABASE_URL"] == (
        "postgresql://app:***@db.example:5432/bustrail?password=***&sslmode=require&sslpassword=***"
    )
    assert lines["BUSTRAIL_AUTH_TOKENS"] == "********"
    assert lines["MESSAGE_BUS_THRESHOLD_BYTES"] == "1048576"


def test_config_show_names_a_bad_setting(tmp_path: Path) -> None:
    done = bustrail("config", "show", env=daemon_env(tmp_path, message_bus_compression="lz4"))
    assert done.returncode == 2
    assert "MESSAGE_BUS_COMPRESSION" in done.stderr and "Traceback" not in done.stderr


def test_db_upgrade_creates_the_schema_once(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    first = bustrail("db", "upgrade", env=env)
    second = bustrail("db", "upgrade", env=env)
    assert first.returncode == 0 and "applied" in first.stdout, first.stderr
    assert second.returncode == 0 and "nothing to do" in second.stdout, second.stderr


@pytest.mark.postgres
def test_db_upgrade_prepares_an_empty_postgresql_for_serve(pg_server: Any, tmp_path: Path) -> None:
    name = pg_server.create_database()
    try:
        env = daemon_env(tmp_path, database_url=pg_server.url_for(name))
        before = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "serve", "--port", "0"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        upgraded = bustrail("db", "upgrade", env=env)
        daemon = DaemonProcess(env)
        daemon.stop()
    finally:
        pg_server.drop_database(name)
    assert before.returncode != 0 and "db upgrade" in before.stderr, before.stderr
    assert upgraded.returncode == 0 and "applied" in upgraded.stdout, upgraded.stderr


def test_cleanup_expires_stored_payloads(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    with thread_daemon(tmp_path, message_bus_ttl_hours=0.0003) as daemon:  # about a second
        called = bustrail("call", "generate", "size=2000000", "--url", daemon.url, env=env)
        assert called.returncode == 0, called.stderr
        meta = json.loads(called.stderr.strip().splitlines()[-1])
        expires = datetime.fromisoformat(meta["expires_at"])
        wait_until(lambda: datetime.now(UTC) > expires, "the payload to expire")
        cleaned = bustrail("cleanup", env=env)
        gone = httpx.get(f"{daemon.http}/v1/transactions/{meta['transaction_id']}", timeout=10)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "expired 1 stored payload(s)" in cleaned.stdout
    assert gone.status_code == 410 and gone.json()["status"] == "expired"
    (row,) = audit_rows(env["DATABASE_URL"], id=meta["transaction_id"])
    assert row["archived"] and row["status"] == "expired"


def test_serve_without_any_auth_setting_refuses_to_start(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    del env["BUSTRAIL_AUTH_DISABLED"]
    done = bustrail("serve", "--port", "0", env=env, timeout=60)
    assert done.returncode == 2
    assert "BUSTRAIL_AUTH_TOKENS" in done.stderr and "BUSTRAIL_AUTH_DISABLED" in done.stderr
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) <= 2
