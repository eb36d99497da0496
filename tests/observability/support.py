"""Helpers for the observability tests: real daemons, spans in memory, scrapes, programs.

Nothing here fakes the daemon, the store or the database: spans come from the real
OpenTelemetry SDK (an in-memory exporter), metrics from a real ``/metrics`` scrape
parsed by prometheus_client's own parser, audit rows from the real database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from bus.db import Database
from bus.records import TRANSACTION_COLUMNS, transactions
from bus.settings import Settings, load_settings
from bus.telemetry import Telemetry, make_tracer_provider
from tests.helpers.daemon import ThreadDaemon

__all__ = [
    "IN_CI",
    "REPO",
    "UNIT",
    "Scrape",
    "Tracing",
    "audit_row",
    "daemon_settings",
    "free_port",
    "require_program",
    "running_daemon",
    "scrape",
    "span_id",
    "trace_id",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# One unit for every wait; BUSTRAIL_TEST_TIMEOUT_SCALE stretches it on slow machines.
UNIT = 30.0 * float(os.environ.get("BUSTRAIL_TEST_TIMEOUT_SCALE", "1"))
DB_SCOPE = "opentelemetry.instrumentation.sqlalchemy"

T = TypeVar("T")


def require_program(name: str) -> str:
    """The path of a system program the test drives; skips loudly without it, except
    in CI (``CI=true``), where its absence fails the test."""
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} is not installed (Debian package `prometheus`; scripts/ensure-system-deps)"
        )
        if IN_CI:
            pytest.fail(f"CI=true requires {name}: {message}", pytrace=False)
        pytest.skip(f"SKIPPING: {message}")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], T], what: str, timeout: float = UNIT) -> T:
    """Poll until ``condition()`` is truthy and return it; a bounded wait for something
    that happens in the background (a scrape, a span ending), never a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


# -- traces ------------------------------------------------------------------------------
@dataclass
class Tracing:
    """A tracer provider whose spans land in memory, as they end."""

    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    provider: TracerProvider = field(init=False)

    def __post_init__(self) -> None:
        self.provider = make_tracer_provider(extra=SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str, kind: SpanKind | None = None) -> ReadableSpan:
        """The one span called ``name`` (of ``kind``, when given)."""
        found = [s for s in self.named(name) if kind is None or s.kind is kind]
        assert len(found) == 1, f"{len(found)} span(s) named {name!r} of kind {kind}"
        return found[0]

    def db_spans(self) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans()
            if s.instrumentation_scope and s.instrumentation_scope.name == DB_SCOPE
        ]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


# -- daemons -----------------------------------------------------------------------------
def daemon_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "bustrail_spool_dir": tmp_path / "spool",
        "bustrail_auth_disabled": True,
        "bustrail_files_root": tmp_path,
    }
    values.update(overrides)
    return load_settings(_env_file=None, **values)


@contextlib.contextmanager
def running_daemon(
    tmp_path: Path, database_url: str, *, tracing: Tracing | None = None, **settings: Any
) -> Iterator[ThreadDaemon]:
    """A real daemon in this process (its spans to ``tracing`` when given)."""
    kwargs: dict[str, Any] = {}
    if tracing is not None:
        kwargs["telemetry"] = Telemetry(tracing.provider)
    daemon = ThreadDaemon(daemon_settings(tmp_path, database_url, **settings), **kwargs)
    try:
        yield daemon
    finally:
        daemon.stop()


def audit_row(database_url: str, transaction_id: str | uuid.UUID) -> dict[str, Any]:
    """The live audit row of one transaction, read as the schema owner."""
    db = Database(database_url)
    try:
        with db.begin() as conn:
            row = (
                conn.execute(
                    sa.select(*(transactions.c[name] for name in TRANSACTION_COLUMNS)).where(
                        transactions.c.id == uuid.UUID(str(transaction_id))
                    )
                )
                .mappings()
                .one()
            )
        return dict(row)
    finally:
        db.dispose()


# -- metrics -----------------------------------------------------------------------------
class Scrape:
    """One ``/metrics`` answer, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The one sample ``name`` whose labels include ``labels``."""
        found = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, f"{len(found)} sample(s) {name}{labels} in:\n{self.text}"
        return float(found[0])

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        found = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return float(sum(found)) if found else default


def scrape(http_base: str) -> Scrape:
    response = httpx.get(f"{http_base}/metrics", timeout=UNIT)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)
