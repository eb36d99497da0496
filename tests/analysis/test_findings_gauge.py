"""The debt ledger seen from Prometheus: ``bustrail_findings_open{kind}`` on /metrics of a
real daemon, and the cache in front of its query (a scrape never waits for the database).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from analysis.detectors import run_detectors
from analysis.ledger import acknowledge, record
from bus.db import Database, utcnow
from bus.errors import StoreError
from bus.schema import upgrade
from daemon.runtime import CachedFindings
from tests.analysis.audit_seed import seed, tx
from tests.helpers.daemon import thread_daemon

WAIT = 30.0


class Source:
    """A findings query that counts its reads and can be made to fail."""

    def __init__(self) -> None:
        self.value: dict[str, int] = {"empty_success": 2}
        self.reads = 0
        self.fail = False
        self.read_done = threading.Event()

    def __call__(self) -> Mapping[str, int]:
        self.reads += 1
        try:
            if self.fail:
                raise StoreError("database error: connection refused")
            return dict(self.value)
        finally:
            self.read_done.set()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_serves_a_stale_value_while_it_refreshes() -> None:
    source, clock = Source(), Clock()
    cache = CachedFindings(source, 30.0, clock=clock)
    cache.refresh()
    assert cache() == {"empty_success": 2} and source.reads == 1

    clock.now += 29
    source.value = {"empty_success": 3}
    assert cache() == {"empty_success": 2} and source.reads == 1  # fresh enough

    clock.now += 2
    source.read_done.clear()
    assert cache() == {"empty_success": 2}  # stale, served at once; a refresh starts
    assert source.read_done.wait(WAIT)
    _wait_for(lambda: cache() == {"empty_success": 3})
    assert source.reads == 2


def test_a_failed_read_is_reported_not_hidden() -> None:
    source, clock = Source(), Clock()
    cache = CachedFindings(source, 30.0, clock=clock)
    with pytest.raises(StoreError, match="not read yet"):
        cache()  # starts the first read
    assert source.read_done.wait(WAIT)
    _wait_for(lambda: _answers(cache))

    source.fail = True
    clock.now += 31
    source.read_done.clear()
    cache()
    assert source.read_done.wait(WAIT)
    _wait_for(lambda: not _answers(cache))
    with pytest.raises(StoreError, match="connection refused"):
        cache()

    source.fail = False
    clock.now += 31
    source.read_done.clear()
    with pytest.raises(StoreError):
        cache()
    assert source.read_done.wait(WAIT)
    _wait_for(lambda: _answers(cache))


def _answers(cache: CachedFindings) -> bool:
    try:
        cache()
    except StoreError:
        return False
    return True


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_the_daemon_exports_open_findings_by_kind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bustrail.db'}"
    db = Database(url)
    try:
        upgrade(db)
        now = utcnow()
        seed(
            db,
            [
                tx(now, timedelta(hours=1), trace_id=None),
                tx(now, timedelta(hours=1), tool="search", error_kind="empty_result"),
                tx(now, timedelta(hours=1), tool="scrape", error_kind="empty_result"),
            ],
        )
        change = record(db, run_detectors(db, timedelta(days=1), now))
        trace = next(e for e in change.new if e.kind == "missing_trace")
        assert trace.id is not None
        acknowledge(db, trace.id, "alice")  # acknowledged is still open debt
    finally:
        db.dispose()

    with thread_daemon(tmp_path, database_url=url) as daemon:
        text = httpx.get(f"{daemon.http}/metrics", timeout=WAIT).text

    assert 'bustrail_findings_open{kind="empty_success"} 2.0' in text
    assert 'bustrail_findings_open{kind="missing_trace"} 1.0' in text
    assert 'bustrail_metrics_source_up{source="findings"} 1.0' in text
