"""The real machinery behind the workload's faults: daemons, outages, damaged chunks.

Nothing here writes a fake audit row. A daemon is ``bustrail serve`` in a subprocess
(SIGTERM to stop it, SIGKILL to crash it); a store outage holds SQLite's write lock
from another connection (the daemon's writes time out after
BUSTRAIL_SQLITE_BUSY_TIMEOUT_SECONDS) or cuts a TCP proxy between the daemon and
PostgreSQL; a corrupted payload is one byte flipped in a stored chunk, in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from analysis.tcpproxy import TCPProxy
from bus.audit import AuditWriter
from bus.db import Database, normalize_url
from bus.errors import BustrailError
from bus.models import Chunk, Transaction
from bus.records import row_to_transaction
from daemon.client import CallResult, Client, RPCError, _Pending

__all__ = [
    "DaemonProcess",
    "StoreOutage",
    "TCPProxy",
    "WorkloadClient",
    "WorkloadError",
    "check_injected",
    "daemon_url",
    "flip_chunk_byte",
    "pending_store_row",
    "replay_spool",
    "transaction_ids_by_request",
]

_chunks: sa.Table = Chunk.__table__  # type: ignore[attr-defined]
_transactions: sa.Table = Transaction.__table__  # type: ignore[attr-defined]
_LISTENING = "bustrail listening on "
# Settings the workload decides for its daemons; the caller's own are not inherited.
_OWN_PREFIXES = (
    "BUSTRAIL_",
    "MESSAGE_BUS_",
    "CIRCUIT_BREAKER_",
    "DATABASE_",
    "FALLBACK_TO_WEBSOCKET",
    "WEBSOCKET_MAX_MESSAGE_MB",
)


class WorkloadError(BustrailError):
    """The workload could not run as planned (a daemon would not start, a fault did not
    happen); the message says what and where the daemon's log is."""


# -- daemons ----------------------------------------------------------------------------
class DaemonProcess:
    """``bustrail serve --port 0`` in a subprocess, its output in ``log_dir``."""

    def __init__(
        self,
        name: str,
        settings: dict[str, str],
        log_dir: Path,
        *,
        tool_modules: Sequence[str] = ("analysis.workload_tools",),
        start_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.spool_dir = Path(settings["BUSTRAIL_SPOOL_DIR"])
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
        env.update(settings)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        stamp = time.time_ns()
        self.out_path = log_dir / f"{name}-{stamp}.out"
        self.log_path = log_dir / f"{name}-{stamp}.log"
        tools = [arg for module in tool_modules for arg in ("--tools", module)]
        with open(self.out_path, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from daemon.cli import main; main()",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--log-level",
                    "warning",
                    *tools,
                ],
                env=env,
                cwd=log_dir,  # no stray .env file is read
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self.url = self._wait_listening(start_timeout)
        self.http = self.url.replace("ws://", "http://", 1).removesuffix("/ws")

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out_path.read_text(errors="replace").splitlines():
                if line.startswith(_LISTENING):
                    return line[len(_LISTENING) :].strip()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise WorkloadError(
            f"daemon {self.name!r} did not start (exit {self.proc.returncode}); "
            f"its log, {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: calls in flight finish and the audit is flushed before it exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL: a crash; whatever the daemon held in memory is lost."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


# -- store outages ----------------------------------------------------------------------
class StoreOutage:
    """Make the store unreachable for a daemon, for real, and bring it back.

    SQLite: another connection holds the file's write lock (``BEGIN IMMEDIATE``); the
    daemon's writes wait BUSTRAIL_SQLITE_BUSY_TIMEOUT_SECONDS and fail. PostgreSQL: the
    daemon reaches the server through a :class:`TCPProxy`, which is cut.
    """

    def __init__(self, database_url: str) -> None:
        url = sa.engine.make_url(normalize_url(database_url))
        self.is_postgres = url.get_backend_name() == "postgresql"
        self._sqlite_path = None if self.is_postgres else url.database
        self._lock: sqlite3.Connection | None = None
        self.proxy: TCPProxy | None = None
        self.daemon_database_url = database_url
        if self.is_postgres:
            self.proxy = TCPProxy(url.host or "127.0.0.1", url.port or 5432)
            proxied = url.set(host="127.0.0.1", port=self.proxy.port)
            self.daemon_database_url = proxied.render_as_string(hide_password=False)

    def begin(self) -> None:
        if self.proxy is not None:
            self.proxy.cut()
            return
        assert self._sqlite_path is not None
        lock = sqlite3.connect(
            self._sqlite_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            lock.execute("BEGIN IMMEDIATE")
        except BaseException:
            lock.close()
            raise
        self._lock = lock

    def end(self) -> None:
        if self.proxy is not None:
            self.proxy.restore()
            return
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()

    def close(self) -> None:
        self.end()
        if self.proxy is not None:
            self.proxy.close()


# -- a client that chooses its request ids ------------------------------------------------
class WorkloadClient(Client):
    """The bustrail client, plus calls under a request id of the caller's choosing: to
    send one twice (``duplicate_delivery``), or to find the audit row of a call whose
    answer never comes (a hang-up, a crash)."""

    async def call_as(
        self, request_id: str, tool: str, arguments: dict[str, Any], *, timeout: float | None
    ) -> CallResult:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        # The client's own bookkeeping, so its reader hands this answer over (and fails it
        # when the connection closes).
        self._pending[request_id] = _Pending(future, "tools/call")  # type: ignore[index]
        message = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        try:
            await self._ws.send(json.dumps(message, separators=(",", ":")))
            response = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)  # type: ignore[call-overload]
        if "error" in response:
            error = response["error"]
            raise RPCError(
                int(error.get("code", 0)), str(error.get("message", "")), error.get("data")
            )
        return CallResult(response["result"], 0)


# -- what a fault leaves in the audit trail ------------------------------------------------
_LEFT: dict[str, Callable[[Transaction, float], bool]] = {
    "orphaned_claim_check": lambda t, _: (
        t.route == "store" and t.status == "stored" and t.fetch_count == 0
    ),
    "checksum_mismatch": lambda t, _: t.status == "corrupted",
    "stuck_pending": lambda t, _: (
        t.route == "store" and t.status == "failed" and t.error_kind == "abandoned"
    ),
    "lost_response": lambda t, _: t.error_kind == "send_failed",
    "fallback_oversize": lambda t, _: t.error_kind == "fallback_oversize",
    "empty_success": lambda t, _: (
        t.error_kind in ("empty_result", "error_text")
        and t.status in ("delivered", "stored", "fetched")
    ),
    "cleanup_lag": lambda t, _: t.status in ("stored", "fetched") and t.expires_at is not None,
    "compression_waste": lambda t, _: (
        t.compression != "none" and (t.stored_size or 0) >= 0.9 * t.size
    ),
    "breaker_flapping": lambda t, _: t.route == "fallback",
    "missing_trace": lambda t, _: t.trace_id is None,
    "duplicate_delivery": lambda t, _: t.status == "delivered",
    "error_rate_regression": lambda t, _: t.status == "failed" and t.error_kind == "tool_error",
    "latency_regression": lambda t, slow_ms: (t.tool_ms or 0) >= slow_ms,
}


def check_injected(
    db: Database, truth: Mapping[str, Sequence[str]], *, slow_ms: float
) -> list[str]:
    """What is wrong with the injected transactions' audit rows (nothing: an empty list).

    The workload checks its own work here, so that a fault the detectors miss is the
    detectors' doing, not a fault that never happened."""
    wanted = sorted({tx_id for ids in truth.values() for tx_id in ids})
    rows: dict[str, Transaction] = {}
    with db.begin() as conn:
        for start in range(0, len(wanted), 500):
            batch = [uuid.UUID(i) for i in wanted[start : start + 500]]
            query = sa.select(_transactions).where(_transactions.c.id.in_(batch))
            for found in conn.execute(query).mappings():
                record = row_to_transaction(found)
                rows[str(record.id)] = record
    problems = []
    for kind, ids in truth.items():
        for tx_id in ids:
            tx = rows.get(tx_id)
            if tx is None:
                problems.append(f"{kind}: transaction {tx_id} has no audit row")
            elif not _LEFT[kind](tx, slow_ms):
                problems.append(
                    f"{kind}: transaction {tx_id} is {tx.route}/{tx.status} "
                    f"({tx.error_kind}), not what the fault leaves"
                )
    return problems


# -- the database, seen from the side -----------------------------------------------------
def flip_chunk_byte(db: Database, tenant: str, transaction_id: uuid.UUID) -> None:
    """Damage a stored payload: one bit of one byte in the middle of its first chunk."""
    where = (
        _chunks.c.transaction_id == transaction_id,
        _chunks.c.seq == 0,
        _chunks.c.tenant == tenant,
    )
    with db.begin(tenant) as conn:
        data = conn.execute(sa.select(_chunks.c.data).where(*where)).scalar_one_or_none()
        if data is None:
            raise WorkloadError(f"transaction {transaction_id} has no stored chunk to damage")
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x01
        conn.execute(_chunks.update().where(*where), {"data": bytes(damaged)})


def pending_store_row(db: Database, tenant: str, request_id: str) -> uuid.UUID | None:
    """The id of the call's transaction once its payload is being stored (route store,
    still pending), else None."""
    with db.begin(tenant) as conn:
        found = conn.execute(
            sa.select(_transactions.c.id).where(
                _transactions.c.tenant == tenant,
                _transactions.c.request_id == request_id,
                _transactions.c.route == "store",
                _transactions.c.status == "pending",
            )
        ).scalar_one_or_none()
    return uuid.UUID(str(found)) if found is not None else None


def transaction_ids_by_request(
    db: Database, tenant: str, request_ids: Sequence[str]
) -> dict[str, list[str]]:
    """request id -> the ids of the transactions answering it (in creation order)."""
    if not request_ids:
        return {}
    with db.begin(tenant) as conn:
        rows = conn.execute(
            sa.select(_transactions.c.request_id, _transactions.c.id)
            .where(
                _transactions.c.tenant == tenant,
                _transactions.c.request_id.in_(list(request_ids)),
            )
            .order_by(_transactions.c.created_at, _transactions.c.id)
        ).all()
    found: dict[str, list[str]] = {}
    for request_id, tx_id in rows:
        found.setdefault(str(request_id), []).append(str(tx_id))
    return found


def replay_spool(db: Database, spool_dir: Path) -> int:
    """Write the audit records a stopped daemon left in its spool, as its next start
    would (the product's own replay); return how many there were.

    A daemon stopped soon after a store outage can leave some: while its writer waits
    to retry the database, new records are spooled behind the old ones, and shutdown
    flushes the queue but does not retry the spool."""
    if not spool_dir.is_dir():
        return 0
    writer = AuditWriter(db, spool_dir)
    left = writer.spool.depth
    if left:
        writer.start()
        writer.close()
        if writer.spool.depth:
            raise WorkloadError(
                f"{writer.spool.depth} audit record(s) in {spool_dir} could not be replayed"
            )
    return left


def daemon_url(database_url: str) -> str:
    """A database URL the daemon can use from another working directory (SQLite paths
    made absolute)."""
    url = sa.engine.make_url(normalize_url(database_url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return database_url
    path = Path(url.database).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    return f"sqlite:///{path}"
