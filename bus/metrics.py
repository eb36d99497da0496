"""Prometheus metrics, named by Prometheus conventions (base units, ``_total``,
``_seconds``, ``_bytes``), in a registry of their own per daemon (tests stay apart).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bus.audit import AuditStats
from bus.breaker import BreakerSnapshot, BreakerState

__all__ = ["Metrics"]

_SIZE_BUCKETS = tuple(float(2**p) for p in range(10, 31, 2))  # 1 KiB .. 1 GiB


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.transactions = Counter(
            "bustrail_transactions_total",
            "Transactions by route and final status.",
            ["route", "status"],
            registry=r,
        )
        self.refused_frames = Counter(
            "bustrail_refused_frames_total",
            "Frames and requests answered with a JSON-RPC error, by code.",
            ["code"],
            registry=r,
        )
        self.payload_bytes = Histogram(
            "bustrail_payload_size_bytes",
            "Size of tool results and uploads before compression.",
            ["route"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.connections = Gauge(
            "bustrail_websocket_connections", "Open WebSocket connections.", registry=r
        )
        self.audit_queue = Gauge(
            "bustrail_audit_queue_records", "Audit records waiting in memory.", registry=r
        )
        self.audit_spool = Gauge(
            "bustrail_audit_spool_records",
            "Audit records spooled on disk while the database is unreachable.",
            registry=r,
        )
        self.breaker_state = Gauge(
            "bustrail_breaker_state",
            "1 for the state each breaker is in, 0 for the others.",
            ["breaker", "state"],
            registry=r,
        )
        self.calls_in_flight = Gauge(
            "bustrail_tool_calls_in_flight", "Tool calls running now.", registry=r
        )

    def observe_audit(self, stats: AuditStats) -> None:
        self.audit_queue.set(stats.queued)
        self.audit_spool.set(stats.spooled)

    def observe_breaker(self, snapshot: BreakerSnapshot) -> None:
        for state in BreakerState:
            self.breaker_state.labels(breaker=snapshot.name, state=state.value).set(
                1 if snapshot.state is state else 0
            )

    def refused(self, code: int) -> None:
        self.refused_frames.labels(code=str(code)).inc()
