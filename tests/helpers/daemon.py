"""Real daemons for tests: in a subprocess (signals, crashes) or in a thread (internals).

Both listen on an ephemeral 127.0.0.1 port and are reached with real WebSocket and
HTTP clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from bus.settings import Settings, load_settings
from daemon.app import create_app
from daemon.runtime import Runtime
from daemon.server import build_registry

_LISTENING = re.compile(r"bustrail listening on (ws://\S+)")


REPO = Path(__file__).resolve().parents[2]


def bustrail_cli(args: list[str], database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``bustrail ARGS`` with no setting from the outside (nor a ``.env``: ``cwd`` is a
    fresh directory) but the database URL."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env["DATABASE_URL"] = database_url.replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def daemon_env(tmp_path: Path, **settings: Any) -> dict[str, str]:
    """An environment for a daemon subprocess: isolated spool and SQLite file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESSAGE_BUS_", "BUSTRAIL_"))}
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'bustrail.db'}",
            "BUSTRAIL_SPOOL_DIR": str(tmp_path / "spool"),
            "BUSTRAIL_AUTH_DISABLED": "true",
            "BUSTRAIL_FILES_ROOT": str(tmp_path),
        }
    )
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return env


class DaemonProcess:
    """``bustrail serve --port 0`` in a subprocess; ``url`` once it listens."""

    def __init__(self, env: dict[str, str], *args: str, cwd: Path | None = None) -> None:
        self.log_path = (
            Path(env.get("BUSTRAIL_SPOOL_DIR", ".")).parent / f"daemon-{time.time_ns()}.log"
        )
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.cli",
                "serve",
                "--port",
                "0",
                "--log-level",
                "warning",
                *args,
            ],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.url = self._wait_listening()
        self.http = self.url.replace("ws://", "http://").removesuffix("/ws")

    def _wait_listening(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = _LISTENING.search(line)
            if match:
                return match[1]
        self.kill()
        text = self.log_text()
        self._close()
        raise RuntimeError(f"daemon did not start; its log:\n{text}")

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()


@contextlib.contextmanager
def daemon_process(env: dict[str, str], *args: str) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(env, *args)
    try:
        yield daemon
    finally:
        daemon.stop()


class ThreadDaemon:
    """The daemon app under uvicorn in a background thread of this process."""

    def __init__(
        self, settings: Settings, tool_modules: list[str] | None = None, **runtime_kwargs: Any
    ) -> None:
        self.runtime = Runtime(
            settings, build_registry(settings, tool_modules or []), **runtime_kwargs
        )
        config = uvicorn.Config(
            create_app(self.runtime),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            ws="websockets-sansio",
            ws_max_size=settings.websocket_max_message_bytes,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("in-thread daemon did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"ws://{host}:{port}/ws"
        self.http = f"http://{host}:{port}"

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(60)


@contextlib.contextmanager
def thread_daemon(
    tmp_path: Path, tool_modules: list[str] | None = None, **overrides: Any
) -> Iterator[ThreadDaemon]:
    """A daemon in this process; ``overrides`` are settings (lower-case names)."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'bustrail.db'}",
        "bustrail_spool_dir": tmp_path / "spool",
        "bustrail_auth_disabled": True,
        "bustrail_files_root": tmp_path,
    }
    values.update(overrides)
    daemon = ThreadDaemon(load_settings(_env_file=None, **values), tool_modules)
    try:
        yield daemon
    finally:
        daemon.stop()
