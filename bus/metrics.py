"""Prometheus metrics, named by Prometheus conventions (base units, ``_total``,
``_seconds``, ``_bytes``), in a registry of their own per daemon (tests stay apart).

Counters and histograms are updated where things happen; values that live elsewhere
(audit queue and spool, breaker state, open findings) are read at scrape time by a
collector, so a scrape always sees the current figure and nothing polls in between.
A source that fails to answer (the findings query during a database outage) costs only
its own families, reported by ``bustrail_metrics_source_up``: the scrape still shows the
breaker and the spool, which is when they matter most.

Counters that alerts watch exist at 0 from the start (``increase()`` cannot see the
first event of a series that appears with it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bus.audit import AuditStats
from bus.breaker import BreakerSnapshot, BreakerState, Transition

__all__ = ["Metrics", "ToolCallTimer"]

log = logging.getLogger(__name__)

_SIZE_BUCKETS = tuple(float(4**p) for p in range(5, 15))  # 1 KiB .. 256 MiB
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RATIO_BUCKETS = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# Every edge the breaker's state machine can take (bus.breaker).
_BREAKER_EDGES = (
    (BreakerState.CLOSED, BreakerState.OPEN),
    (BreakerState.OPEN, BreakerState.HALF_OPEN),
    (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    (BreakerState.HALF_OPEN, BreakerState.OPEN),
)
_FALLBACK_OUTCOMES = ("delivered", "fallback_oversize", "store_unavailable")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.transactions = Counter(
            "bustrail_transactions_total",
            "Transactions by route and status reached (delivered, stored, failed, ...).",
            ["route", "status"],
            registry=r,
        )
        self.payload_bytes = Histogram(
            "bustrail_payload_size_bytes",
            "Size of tool results and uploads before compression.",
            ["route"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.stored_bytes = Histogram(
            "bustrail_stored_size_bytes",
            "Bytes at rest of stored payloads, after compression.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.compression_ratio = Histogram(
            "bustrail_compression_ratio",
            "Original size over stored size of stored payloads.",
            ["compression"],
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            "bustrail_store_duration_seconds",
            "Store operations, by operation (put: a whole payload stored; read: the time "
            "spent reading and verifying a whole payload, waits for the client excluded).",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "bustrail_store_errors_total",
            "Store operations that failed.",
            ["operation"],
            registry=r,
        )
        self.fallbacks = Counter(
            "bustrail_fallbacks_total",
            "Results that could not be stored, by outcome (delivered, fallback_oversize, "
            "store_unavailable).",
            ["outcome"],
            registry=r,
        )
        self.fallback_oversize = Counter(
            "bustrail_fallback_oversize_total",
            "Results lost to the client because the store failed and they were too big "
            "to send inline.",
            registry=r,
        )
        self.checksum_mismatches = Counter(
            "bustrail_checksum_mismatches_total",
            "Reads that found stored bytes not matching their checksum.",
            registry=r,
        )
        self.fetches = Counter(
            "bustrail_fetches_total", "Completed fetches of stored payloads.", ["via"], registry=r
        )
        self.breaker_transitions = Counter(
            "bustrail_breaker_transitions_total",
            "Breaker state changes, by breaker and from/to state.",
            ["breaker", "from_state", "to_state"],
            registry=r,
        )
        self.breaker_trips = Counter(
            "bustrail_breaker_trips_total",
            "Times a breaker opened (a scrape can miss a short open; this cannot).",
            ["breaker"],
            registry=r,
        )
        self.refused_frames = Counter(
            "bustrail_refused_frames_total",
            "Frames, requests and connections refused, by JSON-RPC error or HTTP code.",
            ["code"],
            registry=r,
        )
        self.connections = Gauge(
            "bustrail_websocket_connections", "Open WebSocket connections.", registry=r
        )
        self.calls_in_flight = Gauge(
            "bustrail_tool_calls_in_flight", "Tool calls running now.", registry=r
        )
        # Counted at scrape time: adding to and removing from a set (atomic, from any
        # thread) costs far less than a gauge's inc() and dec(), on every call.
        self._running: set[ToolCallTimer] = set()
        self.calls_in_flight.set_function(lambda: len(self._running))
        self.tool_seconds = Histogram(
            "bustrail_tool_duration_seconds",
            "Tool run time, by tool.",
            ["tool"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_up = Gauge(
            "bustrail_upstream_up",
            "1 when a gateway upstream MCP server is initialized and answering.",
            ["upstream"],
            registry=r,
        )
        self.upstream_restarts = Counter(
            "bustrail_upstream_restarts_total",
            "Times a gateway upstream was restarted after dying.",
            ["upstream"],
            registry=r,
        )
        self.upstream_calls = Counter(
            "bustrail_upstream_calls_total",
            "Tool calls forwarded to a gateway upstream, by outcome.",
            ["upstream", "outcome"],
            registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._live = _LiveCollector()
        r.register(self._live)
        for outcome in _FALLBACK_OUTCOMES:
            self.fallbacks.labels(outcome=outcome)
        self.store_errors.labels(operation="put")
        for via in ("http", "resources/read", "argument"):
            self.fetches.labels(via=via)

    # -- events ---------------------------------------------------------------------------
    def transaction(
        self,
        route: str,
        status: str,
        size: int,
        *,
        stored_size: int | None = None,
        compression: str | None = None,
    ) -> None:
        self._child(self.transactions, route, status).inc()
        self._child(self.payload_bytes, route).observe(size)
        if stored_size:
            self.stored_bytes.observe(stored_size)
            self.compression_ratio.labels(compression=compression or "none").observe(
                size / stored_size
            )

    def fallback(self, outcome: str) -> None:
        self.fallbacks.labels(outcome=outcome).inc()
        if outcome == "fallback_oversize":
            self.fallback_oversize.inc()

    def breaker_transition(self, transition: Transition) -> None:
        self.breaker_transitions.labels(
            breaker=transition.breaker,
            from_state=transition.from_state.value,
            to_state=transition.to_state.value,
        ).inc()
        if transition.to_state is BreakerState.OPEN:
            self.breaker_trips.labels(breaker=transition.breaker).inc()

    def refused(self, code: int) -> None:
        self.refused_frames.labels(code=str(code)).inc()

    def tool_call(self, tool: str) -> ToolCallTimer:
        """A tool running: in flight while inside ``with metrics.tool_call(tool):``, its
        duration observed however it ends."""
        return ToolCallTimer(self._running, self._child(self.tool_seconds, tool))

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: looking a child up anew (validation, a
        lock) was a few percent of a small call (bench_daemon)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- values read at scrape time -------------------------------------------------------
    def watch_audit(self, stats: Callable[[], AuditStats]) -> None:
        self._live.audit = stats

    def watch_breaker(self, snapshot: Callable[[], BreakerSnapshot]) -> None:
        name = snapshot().name
        self.breaker_trips.labels(breaker=name)
        for from_state, to_state in _BREAKER_EDGES:
            self.breaker_transitions.labels(
                breaker=name, from_state=from_state.value, to_state=to_state.value
            )
        self._live.breakers.append(snapshot)

    def watch_findings(self, open_by_kind: Callable[[], Mapping[str, int]]) -> None:
        self._live.findings = open_by_kind


class ToolCallTimer:
    """What ``Metrics.tool_call`` returns: a plain context manager, not a generator-based
    one, which cost twice as much, on every call (bench_daemon)."""

    __slots__ = ("_running", "_seconds", "_started")

    def __init__(self, running: set[ToolCallTimer], seconds: Any) -> None:
        self._running = running  # the calls in flight
        self._seconds = seconds  # the tool's child of bustrail_tool_duration_seconds
        self._started = 0.0

    def __enter__(self) -> None:
        self._running.add(self)
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._running.discard(self)
        self._seconds.observe(time.perf_counter() - self._started)


class _LiveCollector(Collector):
    def __init__(self) -> None:
        self.audit: Callable[[], AuditStats] | None = None
        self.breakers: list[Callable[[], BreakerSnapshot]] = []
        self.findings: Callable[[], Mapping[str, int]] | None = None

    def describe(self) -> list[Metric]:
        return []  # values appear only once something is watched

    def collect(self) -> Iterator[Metric]:
        sources: list[tuple[str, Callable[[], list[Metric]]]] = []
        if self.audit is not None:
            sources.append(("audit", self._audit))
        if self.breakers:
            sources.append(("breaker", self._breakers))
        if self.findings is not None:
            sources.append(("findings", self._findings))
        if not sources:
            return
        up = GaugeMetricFamily(
            "bustrail_metrics_source_up",
            "1 when a value source answered this scrape (audit, breaker, findings); 0 when it "
            "failed and its metrics are missing from the scrape.",
            labels=["source"],
        )
        for name, read in sources:
            try:
                families = read()  # read in full first: a failure yields nothing half-done
            except Exception as exc:
                log.warning("metrics: the %s source failed at scrape time: %r", name, exc)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up

    def _audit(self) -> list[Metric]:
        assert self.audit is not None
        stats = self.audit()
        return [
            GaugeMetricFamily(
                "bustrail_audit_queue_records", "Audit records waiting in memory.", stats.queued
            ),
            GaugeMetricFamily(
                "bustrail_audit_spool_records",
                "Audit records spooled on disk while the database is unreachable.",
                stats.spooled,
            ),
            CounterMetricFamily(
                "bustrail_audit_records_written",
                "Audit records that reached the database.",
                stats.written_total,
            ),
            CounterMetricFamily(
                "bustrail_audit_records_spooled",
                "Audit records ever sent to the spool.",
                stats.spooled_total,
            ),
            CounterMetricFamily(
                "bustrail_audit_write_failures",
                "Audit batches the database refused (then spooled).",
                stats.write_failures_total,
            ),
            GaugeMetricFamily(
                "bustrail_audit_database_up",
                "1 when the audit writer's last write reached the database.",
                1 if stats.database_up else 0,
            ),
            CounterMetricFamily(
                "bustrail_audit_records_rejected",
                "Audit records the database refused for their content, set aside in the "
                "spool directory's rejected.jsonl.",
                stats.rejected_total,
            ),
            GaugeMetricFamily(
                "bustrail_audit_spool_writable",
                "0 while the spool's disk refuses writes (records are held in memory).",
                1 if stats.spool_writable else 0,
            ),
        ]

    def _breakers(self) -> list[Metric]:
        state = GaugeMetricFamily(
            "bustrail_breaker_state",
            "1 for the state each breaker is in, 0 for the others.",
            labels=["breaker", "state"],
        )
        rate = GaugeMetricFamily(
            "bustrail_breaker_failure_rate",
            "Failure rate over each breaker's sliding window.",
            labels=["breaker"],
        )
        for snapshot_of in self.breakers:
            snap = snapshot_of()
            for s in BreakerState:
                state.add_metric([snap.name, s.value], 1 if snap.state is s else 0)
            rate.add_metric([snap.name], snap.failure_rate)
        return [state, rate]

    def _findings(self) -> list[Metric]:
        assert self.findings is not None
        findings = GaugeMetricFamily(
            "bustrail_findings_open",
            "Open silent-failure findings in the debt ledger, by kind.",
            labels=["kind"],
        )
        for kind, count in sorted(self.findings().items()):
            findings.add_metric([kind], count)
        return [findings]
