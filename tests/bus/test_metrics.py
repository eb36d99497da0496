"""Tests for bus.metrics: every metric's name, type and labels as Prometheus sees them,
the events that move them, and the values read at scrape time.

Each test scrapes the registry in the Prometheus text format and parses it back with
prometheus_client's own parser, so names (``_total``, ``_seconds``, ``_bytes``) are
checked as a Prometheus server would read them.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bus.audit import AuditStats
from bus.breaker import BreakerConfig, BreakerState, CircuitBreaker
from bus.errors import StoreError
from bus.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scrape(metrics: Metrics) -> dict[str, list[Sample]]:
    """Samples by family name, from the text a scrape would get."""
    text = generate_latest(metrics.registry).decode()
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def types(metrics: Metrics) -> dict[str, str]:
    """Family types; the ``*_created`` gauges prometheus_client adds to each counter and
    histogram in the text format are left out."""
    text = generate_latest(metrics.registry).decode()
    return {
        f.name: f.type
        for f in text_string_to_metric_families(text)
        if not f.name.endswith("_created")
    }


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    family = name.removesuffix("_total")
    for suffix in ("_bucket", "_count", "_sum"):
        family = family.removesuffix(suffix)
    found = [
        s.value
        for s in samples.get(family, [])
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, f"{len(found)} sample(s) {name}{labels}: {samples.get(family)}"
    return float(found[0])


def audit_stats(**values: int | bool) -> AuditStats:
    base: dict[str, int | bool] = {
        "queued": 0,
        "spooled": 0,
        "written_total": 0,
        "spooled_total": 0,
        "write_failures_total": 0,
        "database_up": True,
    }
    base.update(values)
    return AuditStats(**base)  # type: ignore[arg-type]


def tripped_breaker(metrics: Metrics, clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker("store", BreakerConfig(failure_threshold=2), clock)
    breaker.add_listener(metrics.breaker_transition)
    metrics.watch_breaker(breaker.snapshot)
    for _ in range(2):
        breaker.record_failure(breaker.acquire(), "StoreError")
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_every_metric_is_named_by_prometheus_conventions() -> None:
    metrics = Metrics()
    metrics.watch_audit(audit_stats)
    metrics.watch_breaker(CircuitBreaker("store").snapshot)
    metrics.watch_findings(dict)
    assert types(metrics) == {
        "bustrail_transactions": "counter",
        "bustrail_payload_size_bytes": "histogram",
        "bustrail_stored_size_bytes": "histogram",
        "bustrail_compression_ratio": "histogram",
        "bustrail_store_duration_seconds": "histogram",
        "bustrail_store_errors": "counter",
        "bustrail_fallbacks": "counter",
        "bustrail_fallback_oversize": "counter",
        "bustrail_checksum_mismatches": "counter",
        "bustrail_fetches": "counter",
        "bustrail_breaker_transitions": "counter",
        "bustrail_breaker_trips": "counter",
        "bustrail_refused_frames": "counter",
        "bustrail_websocket_connections": "gauge",
        "bustrail_tool_calls_in_flight": "gauge",
        "bustrail_tool_duration_seconds": "histogram",
        "bustrail_upstream_up": "gauge",
        "bustrail_upstream_restarts": "counter",
        "bustrail_upstream_calls": "counter",
        "bustrail_audit_queue_records": "gauge",
        "bustrail_audit_spool_records": "gauge",
        "bustrail_audit_records_written": "counter",
        "bustrail_audit_records_spooled": "counter",
        "bustrail_audit_write_failures": "counter",
        "bustrail_audit_database_up": "gauge",
        "bustrail_audit_records_rejected": "counter",
        "bustrail_audit_spool_writable": "gauge",
        "bustrail_breaker_state": "gauge",
        "bustrail_breaker_failure_rate": "gauge",
        "bustrail_findings_open": "gauge",
        "bustrail_metrics_source_up": "gauge",
    }


def test_counters_that_alerts_watch_start_at_zero() -> None:
    # increase() cannot see the first event of a series that appears with it.
    metrics = Metrics()
    metrics.watch_breaker(CircuitBreaker("store").snapshot)
    samples = scrape(metrics)
    assert value(samples, "bustrail_checksum_mismatches_total") == 0
    assert value(samples, "bustrail_fallback_oversize_total") == 0
    assert value(samples, "bustrail_breaker_trips_total", breaker="store") == 0
    for outcome in ("delivered", "fallback_oversize", "store_unavailable"):
        assert value(samples, "bustrail_fallbacks_total", outcome=outcome) == 0
    for edge in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
        assert (
            value(
                samples,
                "bustrail_breaker_transitions_total",
                breaker="store",
                from_state=edge[0],
                to_state=edge[1],
            )
            == 0
        )
    assert value(samples, "bustrail_fetches_total", via="http") == 0
    assert value(samples, "bustrail_store_errors_total", operation="put") == 0


def test_a_transaction_counts_by_route_and_status_with_its_sizes() -> None:
    metrics = Metrics()
    metrics.transaction("inline", "delivered", 300)
    metrics.transaction("store", "stored", 40_000, stored_size=10_000, compression="zstd")
    metrics.transaction("store", "stored", 9_000, stored_size=3_000, compression="zstd")
    samples = scrape(metrics)

    assert value(samples, "bustrail_transactions_total", route="store", status="stored") == 2
    assert value(samples, "bustrail_transactions_total", route="inline", status="delivered") == 1
    assert value(samples, "bustrail_payload_size_bytes_count", route="store") == 2
    assert value(samples, "bustrail_payload_size_bytes_sum", route="store") == 49_000
    assert value(samples, "bustrail_payload_size_bytes_sum", route="inline") == 300
    # Only stored payloads have a size at rest and a compression ratio.
    assert value(samples, "bustrail_stored_size_bytes_count") == 2
    assert value(samples, "bustrail_stored_size_bytes_sum") == 13_000
    assert value(samples, "bustrail_compression_ratio_count", compression="zstd") == 2
    assert value(samples, "bustrail_compression_ratio_sum", compression="zstd") == 4 + 3
    assert value(samples, "bustrail_compression_ratio_bucket", compression="zstd", le="3.0") == 1


def test_a_fallback_oversize_counts_twice_a_delivered_fallback_once() -> None:
    metrics = Metrics()
    metrics.fallback("delivered")
    metrics.fallback("delivered")
    metrics.fallback("fallback_oversize")
    samples = scrape(metrics)
    assert value(samples, "bustrail_fallbacks_total", outcome="delivered") == 2
    assert value(samples, "bustrail_fallbacks_total", outcome="fallback_oversize") == 1
    assert value(samples, "bustrail_fallback_oversize_total") == 1


def test_breaker_state_trips_and_transitions_follow_a_real_breaker() -> None:
    metrics, clock = Metrics(), FakeClock()
    breaker = tripped_breaker(metrics, clock)
    samples = scrape(metrics)
    assert value(samples, "bustrail_breaker_state", breaker="store", state="open") == 1
    assert value(samples, "bustrail_breaker_state", breaker="store", state="closed") == 0
    assert value(samples, "bustrail_breaker_state", breaker="store", state="half_open") == 0
    assert value(samples, "bustrail_breaker_trips_total", breaker="store") == 1
    assert (
        value(
            samples,
            "bustrail_breaker_transitions_total",
            breaker="store",
            from_state="closed",
            to_state="open",
        )
        == 1
    )

    # open -> half_open -> open (a probe fails) is a second trip; then a recovery.
    clock.now += breaker.config.open_seconds
    breaker.record_failure(breaker.acquire(), "StoreError")
    clock.now += breaker.config.open_seconds
    for _ in range(breaker.config.half_open_max_calls):
        breaker.record_success(breaker.acquire(), 0.01)
    samples = scrape(metrics)
    assert value(samples, "bustrail_breaker_state", breaker="store", state="closed") == 1
    assert value(samples, "bustrail_breaker_trips_total", breaker="store") == 2
    moves = {
        (s.labels["from_state"], s.labels["to_state"]): s.value
        for s in samples["bustrail_breaker_transitions"]
        if s.name.endswith("_total")
    }
    assert moves == {
        ("closed", "open"): 1,
        ("open", "half_open"): 2,
        ("half_open", "open"): 1,
        ("half_open", "closed"): 1,
    }


def test_audit_values_are_read_at_scrape_time() -> None:
    metrics = Metrics()
    stats = {"now": audit_stats(queued=3)}
    metrics.watch_audit(lambda: stats["now"])
    samples = scrape(metrics)
    assert value(samples, "bustrail_audit_queue_records") == 3
    assert value(samples, "bustrail_audit_spool_records") == 0
    assert value(samples, "bustrail_audit_database_up") == 1

    stats["now"] = audit_stats(
        queued=0,
        spooled=120,
        written_total=40,
        spooled_total=130,
        write_failures_total=4,
        database_up=False,
        rejected_total=2,
        spool_writable=False,
    )
    samples = scrape(metrics)
    assert value(samples, "bustrail_audit_records_rejected_total") == 2
    assert value(samples, "bustrail_audit_spool_writable") == 0
    assert value(samples, "bustrail_audit_spool_records") == 120
    assert value(samples, "bustrail_audit_records_written_total") == 40
    assert value(samples, "bustrail_audit_records_spooled_total") == 130
    assert value(samples, "bustrail_audit_write_failures_total") == 4
    assert value(samples, "bustrail_audit_database_up") == 0


def test_open_findings_by_kind_come_from_a_plain_callable() -> None:
    metrics = Metrics()
    ledger: dict[str, int] = {"empty_success": 4, "stored_never_fetched": 1}
    metrics.watch_findings(lambda: ledger)
    samples = scrape(metrics)
    assert value(samples, "bustrail_findings_open", kind="empty_success") == 4
    assert value(samples, "bustrail_findings_open", kind="stored_never_fetched") == 1

    ledger["empty_success"] = 2
    del ledger["stored_never_fetched"]
    samples = scrape(metrics)
    assert [(s.labels["kind"], s.value) for s in samples["bustrail_findings_open"]] == [
        ("empty_success", 2)
    ]


def test_a_failing_source_costs_only_its_own_metrics() -> None:
    # The findings query fails during a database outage: that is exactly when the
    # breaker and the spool must still be scraped.
    metrics, clock = Metrics(), FakeClock()
    tripped_breaker(metrics, clock)
    metrics.watch_audit(lambda: audit_stats(spooled=7))

    def findings() -> Mapping[str, int]:
        raise StoreError("database unreachable")

    metrics.watch_findings(findings)
    samples = scrape(metrics)
    assert "bustrail_findings_open" not in samples
    assert value(samples, "bustrail_breaker_state", breaker="store", state="open") == 1
    assert value(samples, "bustrail_audit_spool_records") == 7
    assert value(samples, "bustrail_metrics_source_up", source="findings") == 0
    assert value(samples, "bustrail_metrics_source_up", source="breaker") == 1
    assert value(samples, "bustrail_metrics_source_up", source="audit") == 1


def test_a_tool_call_is_in_flight_while_it_runs_and_timed_however_it_ends() -> None:
    metrics = Metrics()
    with metrics.tool_call("echo"):
        assert value(scrape(metrics), "bustrail_tool_calls_in_flight") == 1
    with pytest.raises(RuntimeError), metrics.tool_call("fail"):
        raise RuntimeError("the tool failed")
    samples = scrape(metrics)
    assert value(samples, "bustrail_tool_calls_in_flight") == 0
    assert value(samples, "bustrail_tool_duration_seconds_count", tool="echo") == 1
    assert value(samples, "bustrail_tool_duration_seconds_count", tool="fail") == 1


def test_refusals_count_by_code_and_registries_stay_apart() -> None:
    first, second = Metrics(), Metrics()
    first.refused(-32700)
    first.refused(-32700)
    first.refused(1009)
    samples = scrape(first)
    assert value(samples, "bustrail_refused_frames_total", code="-32700") == 2
    assert value(samples, "bustrail_refused_frames_total", code="1009") == 1
    assert (
        "bustrail_refused_frames" not in scrape(second)
        or not scrape(second)["bustrail_refused_frames"]
    )
