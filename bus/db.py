"""The database connection: one SQLAlchemy engine over SQLite or PostgreSQL (psycopg 3).

Everything that touches the database goes through :class:`Database`, which

* opens the embedded SQLite file (WAL, so the dashboard can read while the daemon writes)
  or a pooled PostgreSQL connection (``postgresql://`` and ``postgres://`` URLs, as
  managed services and Supabase hand them out, are taken as they are);
* scopes each database transaction to one tenant (``bustrail.tenant``, which the
  PostgreSQL row-level security policies read);
* translates driver errors into :class:`~bus.errors.StoreError`, in one place.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from bus.errors import StoreError

__all__ = [
    "Database",
    "as_utc",
    "created_at_of",
    "mask_url",
    "new_transaction_id",
    "normalize_url",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; every timestamp bustrail writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class _RandomPool:
    """Bytes from the operating system's CSPRNG, drawn a block at a time.

    ``uuid.uuid4()`` made one ``getrandom`` system call per id, which lets go of the GIL:
    in a busy daemon the audit writer's thread could take it, and the event loop then
    waited to get it back (bench_daemon). The same bytes, read 4 KiB at a time, cost
    one call every ~400 ids. A forked child starts with an empty pool, so parent and
    child never hand out the same bytes.
    """

    def __init__(self, block: int = 4096) -> None:
        self._block = block
        self._lock = threading.Lock()
        self._bytes = b""
        self._used = 0

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._bytes = b""
        self._used = 0

    def integer(self, size: int) -> int:
        """A random non-negative integer of ``size`` bytes."""
        with self._lock:
            start = self._used
            if start + size > len(self._bytes):
                self._bytes = os.urandom(self._block)
                start = 0
            self._used = start + size
            return int.from_bytes(self._bytes[start : start + size])


_RANDOM = _RandomPool()
os.register_at_fork(after_in_child=_RANDOM.reset)
_MS_MASK = (1 << 48) - 1


def new_transaction_id(now: datetime | None = None) -> tuple[uuid.UUID, datetime]:
    """A UUIDv7 and the millisecond timestamp inside it, which becomes ``created_at``.

    Keeping the two equal lets a lookup by id name its PostgreSQL partition. Written
    here rather than taken from ``uuid6`` because seeding history and tests need ids for
    a given time, which ``uuid6.uuid7()`` cannot make.
    """
    ms = (time.time_ns() // 1_000_000 if now is None else int(now.timestamp() * 1000)) & _MS_MASK
    rand = _RANDOM.integer(10)  # 80 bits, 74 of them used
    value = ms << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 64) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0x2 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    # created_at_of(), without checking the version just set.
    return uuid.UUID(int=value), datetime.fromtimestamp(ms / 1000, tz=UTC)


def created_at_of(transaction_id: uuid.UUID) -> datetime:
    """The creation time a UUIDv7 carries (millisecond precision)."""
    if transaction_id.version != 7:
        raise ValueError(f"{transaction_id} is not a UUIDv7 transaction id")
    ms = transaction_id.int >> 80
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def normalize_url(url: str) -> str:
    """Map the URL forms people paste to the SQLAlchemy driver bustrail uses."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# Query parameters that hold a secret: libpq's password and sslpassword, and the
# like (a driver's or a proxy's token, secret, api_key).
_SECRET_PARAMETER = re.compile(r"pass(word|wd)|pwd|secret|token|api_?key", re.IGNORECASE)


def mask_url(url: str) -> str:
    """A database URL with its password, in ``user:password@`` and in the query
    (``?password=``, ``?sslpassword=``, ...), replaced by ***."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return "<unparseable database URL>"
    # The query as SQLAlchemy renders one (sorted keys, quote_plus), secrets as ***.
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    pairs = [(key, value) for key in sorted(parsed.query) for value in parsed.normalized_query[key]]
    if not pairs:
        return shown
    query = "&".join(
        f"{quote_plus(key)}={'***' if _SECRET_PARAMETER.search(key) else quote_plus(value)}"
        for key, value in pairs
    )
    return f"{shown}?{query}"


class Database:
    """An engine plus the few things every caller needs from it."""

    def __init__(
        self, url: str, *, pool_size: int = 10, echo: bool = False, busy_timeout: float = 30.0
    ) -> None:
        self.url = normalize_url(url)
        self.busy_timeout = busy_timeout
        self.dialect_name = "postgresql" if self.url.startswith("postgresql") else "sqlite"
        self.engine: Engine = self._create_engine(pool_size=pool_size, echo=echo)

    @property
    def is_postgres(self) -> bool:
        return self.dialect_name == "postgresql"

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, for logs and `config show`."""
        return mask_url(self.url)

    def _create_engine(self, *, pool_size: int, echo: bool) -> Engine:
        if self.dialect_name == "sqlite":
            path = sa.engine.make_url(self.url).database
            if path and path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(
                self.url,
                echo=echo,
                connect_args={"check_same_thread": False, "timeout": self.busy_timeout},
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return sa.create_engine(
            self.url,
            echo=echo,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_timeout=10,
            connect_args={"connect_timeout": 5},
        )

    @contextlib.contextmanager
    def begin(self, tenant: str | None = None) -> Iterator[Connection]:
        """A database transaction, scoped to ``tenant`` when one is given."""
        with translate_errors(), self.engine.begin() as conn:
            if tenant is not None:
                self.scope(conn, tenant)
            yield conn

    def scope(self, conn: Connection, tenant: str) -> None:
        """Make the rest of this database transaction act for ``tenant`` (RLS)."""
        if self.is_postgres:
            conn.execute(
                sa.text("SELECT set_config('bustrail.tenant', :tenant, true)"), {"tenant": tenant}
            )

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        with translate_errors(), self.engine.connect() as conn:
            yield conn

    def ping(self) -> None:
        """Raise StoreError unless the database answers a trivial query."""
        with self.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StoreError(f"database error: {detail}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"database error: {exc}") from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
