"""The audit writer: every record reaches the database, even across an outage.

Records (transaction rows and breaker events) are queued in memory and written by one
background thread in batches, flushed by count (``batch_size``) and by time
(``flush_seconds``). A writer that has fallen behind takes up to ``GROUP_BATCHES``
batches' worth of what is queued into one database transaction: a burst costs fewer
commits (each one an fsync on the server), and nothing counts as written before its
commit. When the database cannot be reached, a batch goes to the *spool*:
append-only JSON-lines segment files in ``spool_dir``, fsync'd before the writer moves
on. While anything is spooled, new batches are spooled behind it, so the order holds;
once the database answers again, segments are replayed oldest first and deleted. Writes
are upserts keyed by id, so a segment replayed twice (a crash between writing and
deleting it) is harmless. A leftover spool is replayed when the writer starts.

Two failures are not outages, and are not retried as if they were. A record whose
content the database refuses (a constraint, a value it cannot hold) would block every
retry behind it: the batch is written in halves down to the single records refused,
which are set aside in ``spool_dir/rejected.jsonl`` with the database's error, counted
and logged; the rest is written. A spool whose disk refuses writes (full, read-only)
keeps the batch in memory, says so, and tries again after ``retry_seconds``.

What a crash can lose: records still in memory, at most ``flush_seconds`` worth (a
SIGKILL gives no chance to flush). Everything spooled survives. ``close()`` (called on
SIGTERM) flushes the queue first.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bus.db import Database
from bus.errors import BustrailError, StoreError
from bus.records import breaker_events, insert_breaker_events, transactions, upsert_transactions
from bus.telemetry import untraced

__all__ = ["AuditStats", "AuditWriter", "Spool"]

log = logging.getLogger(__name__)

TX = "tx"
BREAKER = "breaker"
GROUP_BATCHES = 8  # at most this many batch_size's worth in one write (group commit)
REJECTED_FILE = "rejected.jsonl"  # records the database refused, with its error
_WRITERS: dict[str, Callable[[Database, list[dict[str, Any]]], int]] = {
    TX: upsert_transactions,
    BREAKER: insert_breaker_events,
}
_TABLES = {TX: transactions, BREAKER: breaker_events}


@dataclass(frozen=True)
class AuditStats:
    queued: int  # in memory, not yet written
    spooled: int  # on disk, waiting for the database
    written_total: int  # reached the database
    spooled_total: int  # ever sent to the spool
    write_failures_total: int  # batches the database refused
    database_up: bool
    rejected_total: int = 0  # records the database refused for their content: set aside
    spool_writable: bool = True  # False while the spool's disk refuses writes


def _refused_rows(exc: BaseException) -> bool:
    """True when the database (or its driver) refused the rows themselves: a constraint,
    a value it cannot hold. Writing them again cannot help. An outage, a lock, a missing
    table (an upgrade may come) can: those are retried, spooled meanwhile."""
    if not isinstance(exc, StoreError):
        # The driver refused a value before sending it (sqlite3: an int over 64 bits).
        return isinstance(exc, ValueError | TypeError | OverflowError)
    cause = exc.__cause__
    for error in (cause, getattr(cause, "orig", None)):
        if error is not None and any(
            k.__name__ in ("IntegrityError", "DataError") for k in type(error).__mro__
        ):
            return True
    return False


# -- the spool -------------------------------------------------------------------------
def _encode(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _decode(kind: str, row: Mapping[str, Any]) -> dict[str, Any]:
    table = _TABLES[kind]
    # A line spooled by an older bustrail lacks the (nullable) columns added since, such
    # as transactions.daemon_id: NULL, as an INSERT that does not name them would store.
    out: dict[str, Any] = {c.name: None for c in table.columns if c.nullable and c.name not in row}
    for name, value in row.items():
        column = table.c[name]
        if value is None:
            out[name] = None
        elif isinstance(column.type, sa.DateTime):
            out[name] = datetime.fromisoformat(value)
        elif isinstance(column.type, sa.Uuid):
            out[name] = uuid.UUID(value)
        elif isinstance(column.type, sa.Enum) and column.type.enum_class is not None:
            out[name] = column.type.enum_class(value)
        else:
            out[name] = value
    return out


class Spool:
    """Append-only, fsync'd segment files of records waiting for the database."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._depth = sum(self._count(p) for p in self.segments())

    @property
    def depth(self) -> int:
        """Records on disk."""
        return self._depth

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("segment-*.jsonl"))

    def append(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Write one batch as a new segment, durably (file and directory fsync'd)."""
        name = f"segment-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        tmp = self.directory / (name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for kind, row in batch:
                record = {"k": kind, "r": {k: _encode(v) for k, v in row.items()}}
                f.write(json.dumps(record, default=str))  # never refuse a record for a type
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        # A segment appears whole or not at all: a crash mid-write leaves only *.tmp.
        tmp.rename(self.directory / name)
        self._fsync_dir()
        self._depth += len(batch)

    def read(self, segment: Path) -> list[tuple[str, dict[str, Any]]]:
        batch = []
        # Bytes, decoded line by line: a damaged line (bad UTF-8 included) is named.
        with open(segment, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    batch.append((item["k"], _decode(item["k"], item["r"])))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise BustrailError(
                        f"audit spool segment {segment} line {number} is unreadable ({exc}); "
                        "move it aside to let the writer continue"
                    ) from exc
        return batch

    def remove(self, segment: Path, count: int) -> None:
        segment.unlink()
        self._fsync_dir()
        self._depth -= count

    def _count(self, segment: Path) -> int:
        with open(segment, "rb") as f:
            return sum(1 for line in f if line.strip())

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the writer ------------------------------------------------------------------------
class AuditWriter:
    """Queue records from any thread or coroutine; one thread writes them."""

    def __init__(
        self,
        db: Database,
        spool_dir: Path,
        *,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
        retry_seconds: float = 1.0,
    ) -> None:
        self.db = db
        self.spool = Spool(spool_dir)
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._cond = threading.Condition()
        self._busy = 0  # records taken from the queue, not yet written or spooled
        self._flushing = 0  # flush() calls waiting: write what is queued without delay
        self._closing = False
        self._thread: threading.Thread | None = None
        self._written = 0
        self._spooled_total = 0
        self._failures = 0
        self._database_up = True
        self._next_retry = 0.0
        self._rejected = 0
        self._spool_error: str | None = None  # why the spool's disk refused, while it does

    # -- producer side --------------------------------------------------------------------
    def submit(self, row: Mapping[str, Any]) -> None:
        """Queue a full transaction row (upserted by id)."""
        self._put(TX, dict(row))

    def submit_breaker_event(self, row: Mapping[str, Any]) -> None:
        self._put(BREAKER, dict(row))

    def _put(self, kind: str, row: dict[str, Any]) -> None:
        with self._cond:
            if self._closing and self._thread is None:
                raise BustrailError("audit writer is closed; record not accepted")
            self._queue.append((kind, row))
            if len(self._queue) >= self.batch_size:
                self._cond.notify_all()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Replay a leftover spool (when the database answers), then start writing."""
        if self._thread is not None:
            return
        if self.spool.depth:
            log.info(
                "audit: replaying %d spooled record(s) left by a previous run", self.spool.depth
            )
            self._replay()
        self._thread = threading.Thread(target=self._run, name="bustrail-audit", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written or spooled."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            try:
                self._cond.notify_all()
                while self._queue or self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, 0.05))
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then stop the thread. Records left unwritten go to the spool."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            leftover = list(self._queue)
            self._queue.clear()
        if leftover:
            self._to_spool(leftover)
        with self._cond:
            lost = len(self._queue)
            self._queue.clear()
        if lost:
            log.error(
                "audit: %d record(s) lost at close: the database did not answer and the spool "
                "could not be written (%s)",
                lost,
                self._spool_error,
            )
        if self.spool.depth:
            # One last try, retry delay or not: a daemon stopped just after the database
            # came back would otherwise leave its records on a disk that may not survive it.
            self._next_retry = 0.0
            try:
                replayed = self._replay()
            except BustrailError as exc:  # an unreadable segment: said at start-up too
                log.error("audit: %s", exc)
                replayed = False
            if not replayed:
                log.warning(
                    "audit: %d record(s) remain spooled in %s; the next start replays them",
                    self.spool.depth,
                    self.spool.directory,
                )

    def stats(self) -> AuditStats:
        with self._cond:
            queued = len(self._queue) + self._busy
        return AuditStats(
            queued=queued,
            spooled=self.spool.depth,
            written_total=self._written,
            spooled_total=self._spooled_total,
            write_failures_total=self._failures,
            database_up=self._database_up,
            rejected_total=self._rejected,
            spool_writable=self._spool_error is None,
        )

    # -- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        with untraced():  # batches answer no single request: no spans of their own
            self._loop()

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._handle(batch)
            except Exception:  # never let the thread die: spool what we hold
                log.exception("audit: unexpected error; spooling the batch")
                self._to_spool(batch)
            finally:
                with self._cond:
                    self._busy = 0
                    self._cond.notify_all()

    def _take(self) -> list[tuple[str, dict[str, Any]]] | None:
        with self._cond:
            wait = self.flush_seconds
            if self.spool.depth:  # an idle writer still retries the database on time
                wait = min(wait, self.retry_seconds)
            deadline = time.monotonic() + wait
            # A partial batch waits for the timer, unless close() or flush() wants it now.
            while len(self._queue) < self.batch_size and not self._closing:
                if self._flushing and self._queue:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closing and not self._queue:
                return None
            take = min(len(self._queue), self.batch_size * GROUP_BATCHES)
            batch = [self._queue.popleft() for _ in range(take)]
            self._busy = len(batch)
            return batch

    def _handle(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        if self.spool.depth and not self._replay():
            self._to_spool(batch)  # keep the order: behind what is already spooled
            return
        if batch and not self._write(batch):
            self._to_spool(batch)

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> bool:
        if not self._database_up and time.monotonic() < self._next_retry:
            return False
        try:
            for kind in (TX, BREAKER):
                rows = [row for k, row in batch if k == kind]
                if rows:
                    _WRITERS[kind](self.db, rows)
        except Exception as exc:
            if _refused_rows(exc):
                return self._write_apart(batch, exc)
            if not isinstance(exc, StoreError):
                raise
            self._failures += 1
            if self._database_up:
                log.warning(
                    "audit: database unreachable (%s); spooling to %s", exc, self.spool.directory
                )
            self._database_up = False
            self._next_retry = time.monotonic() + self.retry_seconds
            return False
        if not self._database_up:
            log.info("audit: database reachable again")
        self._database_up = True
        self._written += len(batch)
        return True

    def _write_apart(self, batch: list[tuple[str, dict[str, Any]]], exc: Exception) -> bool:
        """The database refused some record of ``batch`` itself: write it in halves, down
        to the single records it refuses, which are set aside. False on an outage."""
        if len(batch) == 1:
            self._set_aside(batch[0], exc)
            return True
        middle = len(batch) // 2
        # Upserts by id: a half written again after an outage is harmless.
        return self._write(batch[:middle]) and self._write(batch[middle:])

    def _set_aside(self, item: tuple[str, dict[str, Any]], exc: Exception) -> None:
        kind, row = item
        self._rejected += 1
        path = self.spool.directory / REJECTED_FILE
        line = {"k": kind, "r": {k: _encode(v) for k, v in row.items()}, "error": str(exc)}
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as disk:
            log.error("audit: record refused by the database (%s) and not set aside (%s): %s",
                      exc, disk, line)  # fmt: skip
            return
        log.error(
            "audit: the database refused %s record %s (%s); set aside in %s",
            kind,
            row.get("id"),
            exc,
            path,
        )

    def _to_spool(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Spool ``batch``; when the disk refuses, keep it in memory (at the head of the
        queue, in order) and wait ``retry_seconds`` before the writer tries again."""
        if not batch:
            return  # an idle tick while the database is away: no empty segment
        try:
            self.spool.append(batch)
        except OSError as exc:
            if self._spool_error is None:
                log.error(
                    "audit: cannot write the spool in %s (%s); holding %d record(s) in memory "
                    "until the database or the disk answers again",
                    self.spool.directory,
                    exc,
                    len(batch),
                )
            self._spool_error = str(exc)
            with self._cond:
                self._queue.extendleft(reversed(batch))
                self._busy = 0  # back in the queue: counted there, not twice
                if self._closing:
                    return
                self._cond.wait(self.retry_seconds)
            return
        if self._spool_error is not None:
            log.warning("audit: the spool in %s is writable again", self.spool.directory)
            self._spool_error = None
        self._spooled_total += len(batch)

    def _replay(self) -> bool:
        """Write spooled segments oldest first; True when the spool is empty."""
        for segment in self.spool.segments():
            batch = self.spool.read(segment)
            if not self._write(batch):
                return False
            self.spool.remove(segment, len(batch))
        return self.spool.depth == 0
