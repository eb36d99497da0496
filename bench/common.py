"""What every benchmark shares: results, the table, and the `BENCH` lines scripts read."""

from __future__ import annotations

import os
import resource
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa

from bus.db import Database, normalize_url

__all__ = [
    "PG_URL",
    "BenchResult",
    "PeakRSS",
    "fresh_database",
    "postgres_missing",
    "print_results",
    "stopwatch",
]

# The PostgreSQL server benchmarks make their scratch databases on (the tests' variable).
PG_URL = os.environ.get("BUSTRAIL_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    admin = sa.create_engine(normalize_url(PG_URL))
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        return f"PostgreSQL not reachable at {PG_URL}: {str(exc.orig).strip().splitlines()[0]}"
    finally:
        admin.dispose()
    return None


@contextmanager
def fresh_database(prefix: str = "bustrail_bench") -> Iterator[Database]:
    """A new migrated database on the benchmark server, dropped afterwards."""
    from bus.schema import upgrade

    admin = sa.create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(normalize_url(PG_URL)).set(database=name)
    db = Database(url.render_as_string(hide_password=False))
    try:
        upgrade(db)
        yield db
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class BenchResult:
    """One measured figure. ``ratio`` compares it with its baseline (higher is better
    unless ``lower_is_better``); ``target`` is the ratio it must reach, if any."""

    name: str
    ratio: float
    target: float | None = None
    lower_is_better: bool = False
    details: dict[str, str] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target

    def line(self) -> str:
        target = "none" if self.target is None else f"{self.target:g}"
        verdict = {True: "met", False: "missed", None: "info"}[self.met]
        return f"BENCH {self.name} ratio={self.ratio:.3f} target={target} {verdict}"


def print_results(title: str, results: list[BenchResult]) -> None:
    """A readable table, then one BENCH line per result."""
    print(f"\n== {title}")
    width = max((len(r.name) for r in results), default=10)
    for r in results:
        info = "  ".join(f"{k}={v}" for k, v in r.details.items())
        print(f"  {r.name:<{width}}  ratio {r.ratio:8.3f}  {info}")
    for r in results:
        print(r.line())


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PeakRSS:
    """Samples this process's resident memory in a thread; ``growth`` is peak - start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start
