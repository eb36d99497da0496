"""What every benchmark shares: results, the table, the `BENCH` lines scripts read, and
the scale.

``BUSTRAIL_BENCH_SCALE`` (a number > 0, default 1) multiplies every module's sizes, row
counts, rounds and timed durations through :func:`scaled`, read once at import: a smoke
run (``BUSTRAIL_BENCH_SCALE=0.01``) goes through every code path in seconds. At a scale
other than 1 every title and ``BENCH`` line says so: such figures are not comparable.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import overload

import sqlalchemy as sa

from bus.db import Database, normalize_url

__all__ = [
    "PG_URL",
    "SCALE",
    "SCALE_VARIABLE",
    "BenchResult",
    "PeakRSS",
    "fresh_database",
    "postgres_missing",
    "print_results",
    "scale_from_env",
    "scale_note",
    "scaled",
    "stopwatch",
]

# The PostgreSQL server benchmarks make their scratch databases on (the tests' variable).
PG_URL = os.environ.get("BUSTRAIL_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")

SCALE_VARIABLE = "BUSTRAIL_BENCH_SCALE"


def scale_from_env(environ: Mapping[str, str] | None = None) -> float:
    """``BUSTRAIL_BENCH_SCALE`` as a number (1.0 when unset or empty); ValueError otherwise."""
    raw = (os.environ if environ is None else environ).get(SCALE_VARIABLE, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{SCALE_VARIABLE}={raw!r} is not a number (e.g. 0.01 for a smoke run; "
            "unset for the real one)"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{SCALE_VARIABLE}={raw!r} must be a finite number greater than 0")
    return value


try:
    SCALE = scale_from_env()
except ValueError as exc:
    # Benchmarks are scripts: stop before anything runs, with the reason and no traceback.
    sys.exit(f"bench: {exc}")


@overload
def scaled(n: int, *, minimum: int = 1) -> int: ...
@overload
def scaled(n: float, *, minimum: float) -> float: ...
def scaled(n: float, *, minimum: float = 1) -> float:
    """``n`` (a size, a count, rounds: int; seconds: float) times the scale, at least
    ``minimum``; exactly ``n`` at scale 1, so the real run is what it always was."""
    if SCALE == 1:
        return n
    if isinstance(n, int):
        return max(int(minimum), round(n * SCALE))
    return max(minimum, n * SCALE)


def scale_note() -> str | None:
    """The warning a run at a scale other than 1 prints (None at scale 1)."""
    if SCALE == 1:
        return None
    return f"scale {SCALE:g} ({SCALE_VARIABLE}): a smoke run, figures are not comparable"


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
        scale = "" if SCALE == 1 else f" scale={SCALE:g}"  # a smoke figure, never to quote
        return f"BENCH {self.name} ratio={self.ratio:.3f} target={target} {verdict}{scale}"


def print_results(title: str, results: list[BenchResult]) -> None:
    """A readable table, then one BENCH line per result."""
    note = scale_note()
    print(f"\n== {title}" + (f"  [{note}]" if note else ""))
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
