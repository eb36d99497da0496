"""Every detector on both backends: seeded rows that show its problem are found, exactly
(every transaction id, nothing more), near misses are not, and a clean workload yields
no finding at all. The database is real (SQLite file, PostgreSQL); nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from analysis.detectors import DETECTORS, KINDS, run_detectors
from analysis.findings import AnalysisError, AnalysisResult, Params, fingerprint
from analysis.queries import canonical_id
from bus.db import Database, utcnow
from bus.models import Compression, Route, Status
from tests.analysis.audit_seed import archived, breaker_event, clean_workload, seed, stored, tx
from tests.helpers.roles import app_role

DAY = timedelta(days=1)


@pytest.fixture
def now() -> datetime:
    return utcnow()


@pytest.fixture
def clean(db: Database, now: datetime) -> Iterator[None]:
    """Every test runs on top of a healthy workload, which must add nothing."""
    rows, gone = clean_workload(now)
    seed(db, rows, archive_rows=gone)
    yield


def ids(*rows: dict[str, Any]) -> set[str]:
    return {canonical_id(r["id"]) for r in rows}


def analyse(db: Database, now: datetime, **params: Any) -> AnalysisResult:
    return run_detectors(db, now - 3 * DAY, now, params or None)


def found(result: AnalysisResult, kind: str) -> set[str]:
    return result.transaction_ids(kind)


def only_kinds(result: AnalysisResult) -> set[str]:
    return {f.kind for f in result.findings}


# -- the clean workload --------------------------------------------------------------------
def test_a_clean_workload_has_no_findings(db: Database, now: datetime, clean: None) -> None:
    result = analyse(db, now)
    assert result.findings == ()
    assert result.run.transactions_scanned == len(clean_workload(now)[0]) + 1
    assert result.run.kinds == KINDS
    assert all(count == 0 for count in result.run.counts.values())
    assert result.run.backend == db.dialect_name


# -- one test per kind ---------------------------------------------------------------------
def test_orphaned_claim_check(db: Database, now: datetime, clean: None) -> None:
    long_ago = stored(now, timedelta(hours=3), fetches=0)
    expired_unread = stored(
        now, timedelta(minutes=30), fetches=0, expires_at=now - timedelta(minutes=1)
    )
    gone_unread = archived(stored(now, timedelta(hours=50), fetches=0), now - timedelta(hours=1))
    recent = stored(now, timedelta(minutes=30), fetches=0)  # within orphan_grace
    fetched = stored(now, timedelta(hours=3), fetches=2)
    gone_read = archived(stored(now, timedelta(hours=50), fetches=1), now - timedelta(hours=1))
    outside = stored(now, timedelta(days=4), fetches=0, expires_at=now + DAY)  # before since
    seed(
        db,
        [long_ago, expired_unread, recent, fetched, outside],
        archive_rows=[gone_unread, gone_read],
    )

    result = analyse(db, now)

    assert found(result, "orphaned_claim_check") == ids(long_ago, expired_unread, gone_unread)
    assert only_kinds(result) == {"orphaned_claim_check"}
    # A longer grace spares the one stored three hours ago.
    spared = analyse(db, now, orphan_grace="4h")
    assert found(spared, "orphaned_claim_check") == ids(expired_unread, gone_unread)


def test_checksum_mismatch(db: Database, now: datetime, clean: None) -> None:
    live = stored(now, timedelta(hours=2), status=Status.CORRUPTED, error_kind="checksum_mismatch")
    flagged_only = stored(now, timedelta(hours=3), error_kind="checksum_mismatch")
    gone = archived(
        stored(now, timedelta(hours=50), status=Status.CORRUPTED, error_kind="checksum_mismatch"),
        now - timedelta(hours=1),
    )
    store_error = tx(
        now, timedelta(hours=1), route=Route.STORE, status=Status.FAILED, error_kind="store_error"
    )
    seed(db, [live, flagged_only, store_error], archive_rows=[gone])

    result = analyse(db, now)

    assert found(result, "checksum_mismatch") == ids(live, flagged_only, gone)
    assert only_kinds(result) == {"checksum_mismatch"}
    (finding,) = result.of_kind("checksum_mismatch")
    assert finding.severity.value == "critical"


def test_stuck_pending(db: Database, now: datetime, clean: None) -> None:
    pending = tx(now, timedelta(minutes=20), route=Route.STORE, status=Status.PENDING)
    abandoned = tx(
        now,
        timedelta(hours=2),
        route=Route.STORE,
        status=Status.FAILED,
        error_kind="abandoned",
    )
    young = tx(now, timedelta(minutes=5), route=Route.STORE, status=Status.PENDING)
    store_error = tx(
        now, timedelta(hours=1), route=Route.STORE, status=Status.FAILED, error_kind="store_error"
    )
    seed(db, [pending, abandoned, young, store_error])

    result = analyse(db, now)

    assert found(result, "stuck_pending") == ids(pending, abandoned)
    assert only_kinds(result) == {"stuck_pending"}
    assert found(analyse(db, now, stuck_after="30m"), "stuck_pending") == ids(abandoned)


def test_lost_response(db: Database, now: datetime, clean: None) -> None:
    pending = tx(now, timedelta(minutes=20), status=Status.PENDING, delivered_at=None)
    send_failed = tx(
        now, timedelta(hours=1), status=Status.FAILED, error_kind="send_failed", delivered_at=None
    )
    abandoned = tx(
        now,
        timedelta(hours=2),
        route=Route.FALLBACK,
        status=Status.FAILED,
        error_kind="abandoned",
        delivered_at=None,
    )
    young = tx(now, timedelta(minutes=4), status=Status.PENDING, delivered_at=None)
    told = tx(now, timedelta(hours=1), status=Status.FAILED, error_kind="tool_error")
    store_abandoned = tx(
        now, timedelta(hours=1), route=Route.STORE, status=Status.FAILED, error_kind="abandoned"
    )
    seed(db, [pending, send_failed, abandoned, young, told, store_abandoned])

    result = analyse(db, now)

    assert found(result, "lost_response") == ids(pending, send_failed, abandoned)
    assert found(result, "stuck_pending") == ids(store_abandoned)  # the store's own kind
    assert only_kinds(result) == {"lost_response", "stuck_pending"}


def test_fallback_oversize(db: Database, now: datetime, clean: None) -> None:
    lost = tx(
        now,
        timedelta(hours=1),
        route=Route.FALLBACK,
        status=Status.FAILED,
        error_kind="fallback_oversize",
        size=40_000_000,
        tool="generate",
    )
    delivered = tx(now, timedelta(hours=1), route=Route.FALLBACK, size=900_000)
    seed(db, [lost, delivered])

    result = analyse(db, now)

    assert found(result, "fallback_oversize") == ids(lost)
    assert only_kinds(result) == {"fallback_oversize"}
    (finding,) = result.findings
    assert finding.tool == "generate"


def test_empty_success(db: Database, now: datetime, clean: None) -> None:
    empty = tx(now, timedelta(hours=1), error_kind="empty_result", tool="search")
    error_text = stored(now, timedelta(hours=2), fetches=1, error_kind="error_text", tool="search")
    stored_empty = stored(
        now,
        timedelta(minutes=10),
        fetches=0,
        error_kind="empty_result",
        tool="scrape",
    )
    failed = tx(now, timedelta(hours=1), status=Status.FAILED, error_kind="empty_result")
    seed(db, [empty, error_text, stored_empty, failed])

    result = analyse(db, now)

    assert found(result, "empty_success") == ids(empty, error_text, stored_empty)
    assert only_kinds(result) == {"empty_success"}
    # Per tool: one finding for search (two calls), one for scrape.
    per_tool = {f.tool: set(f.transaction_ids) for f in result.of_kind("empty_success")}
    assert per_tool == {"search": ids(empty, error_text), "scrape": ids(stored_empty)}


def test_cleanup_lag(db: Database, now: datetime, clean: None) -> None:
    fetched = stored(now, timedelta(hours=50), fetches=1, expires_at=now - timedelta(hours=2))
    stale = stored(now, timedelta(hours=2), fetches=1, expires_at=now - timedelta(minutes=20))
    in_grace = stored(now, timedelta(hours=2), fetches=1, expires_at=now - timedelta(minutes=10))
    seed(db, [fetched, stale, in_grace])

    result = analyse(db, now)

    assert found(result, "cleanup_lag") == ids(fetched, stale)
    assert only_kinds(result) == {"cleanup_lag"}
    assert found(analyse(db, now, cleanup_grace="1h"), "cleanup_lag") == ids(fetched)


def test_compression_waste(db: Database, now: datetime, clean: None) -> None:
    barely = stored(now, timedelta(hours=1), size=1000, stored_size=950)
    at_ratio = stored(
        now, timedelta(hours=1), size=1000, stored_size=900, compression=Compression.GZIP
    )
    worth_it = stored(now, timedelta(hours=1), size=1000, stored_size=899)
    uncompressed = stored(
        now, timedelta(hours=1), size=1000, stored_size=1000, compression=Compression.NONE
    )
    empty = stored(now, timedelta(hours=1), size=0, stored_size=20)
    seed(db, [barely, at_ratio, worth_it, uncompressed, empty])

    result = analyse(db, now)

    assert found(result, "compression_waste") == ids(barely, at_ratio)
    assert only_kinds(result) == {"compression_waste"}
    assert found(analyse(db, now, waste_ratio=0.94), "compression_waste") == ids(barely)


def test_breaker_flapping(db: Database, now: datetime, clean: None) -> None:
    t0 = now - timedelta(hours=3)
    minute = timedelta(minutes=1)
    flapping = []
    for k in range(3):  # d1 opens three times within 5 minutes
        flapping += [
            breaker_event(t0 + 2 * k * minute, "open"),
            breaker_event(t0 + (2 * k + 1) * minute, "half_open"),
        ]
    flapping.append(breaker_event(t0 + 6 * minute + timedelta(seconds=30), "closed"))
    # Near misses: d2 opens three times but over half an hour; breaker "other" twice;
    # d3 and d4 open twice and once within minutes (three in all, but per daemon < 3).
    calm = [breaker_event(t0 + 15 * k * minute, "open", daemon="d2") for k in range(3)]
    calm += [breaker_event(t0 + k * minute, "open", breaker="other") for k in range(2)]
    calm += [
        breaker_event(now - timedelta(hours=1) + k * minute, "open", daemon="d3") for k in range(2)
    ]
    calm.append(breaker_event(now - timedelta(hours=1), "open", daemon="d4"))
    during = [
        tx(now, timedelta(hours=3) - 30 * timedelta(seconds=1), route=Route.FALLBACK),
        tx(now, timedelta(hours=3) - timedelta(minutes=4, seconds=30), route=Route.FALLBACK),
    ]
    after = tx(now, timedelta(hours=2), route=Route.FALLBACK)
    seed(db, [*during, after], events=[*flapping, *calm])

    result = analyse(db, now)

    (finding,) = result.of_kind("breaker_flapping")
    assert set(finding.transaction_ids) == ids(*during)
    assert finding.count == 3  # the flapping opens
    assert finding.tool is None
    assert finding.details["breaker"] == "store"
    assert finding.fingerprint == fingerprint("breaker_flapping", "store")
    assert [e["daemon_id"] for e in finding.details["episodes"]] == ["d1"]
    assert only_kinds(result) == {"breaker_flapping"}
    # Four opens needed: no flapping any more.
    assert not analyse(db, now, flap_opens=4).of_kind("breaker_flapping")


def test_breaker_flapping_takes_only_the_fallbacks_of_the_daemon_that_flapped(
    db: Database, now: datetime, clean: None
) -> None:
    """Two daemons on one database: d1's breaker flaps; d2's opens once (a brief store
    failure of its own) within the same minutes and falls back once. d2's fallback is
    not d1's flapping. A fallback recorded before transactions named their daemon
    (daemon_id NULL) cannot be told apart, and still counts."""
    t0 = now - timedelta(hours=3)
    minute = timedelta(minutes=1)
    events = []
    for k in range(3):
        events += [
            breaker_event(t0 + 2 * k * minute, "open", daemon="d1"),
            breaker_event(t0 + (2 * k + 1) * minute, "half_open", daemon="d1"),
        ]
    events.append(breaker_event(t0 + 6 * minute + timedelta(seconds=30), "closed", daemon="d1"))
    events += [
        breaker_event(t0 + 2 * minute, "open", daemon="d2"),
        breaker_event(t0 + 2 * minute + timedelta(seconds=20), "half_open", daemon="d2"),
        breaker_event(t0 + 2 * minute + timedelta(seconds=25), "closed", daemon="d2"),
    ]

    def fallback(after: timedelta, daemon: str | None) -> dict[str, Any]:
        return tx(now, timedelta(hours=3) - after, route=Route.FALLBACK, daemon_id=daemon)

    d1 = [fallback(30 * timedelta(seconds=1), "d1"), fallback(4 * minute, "d1")]
    unnamed = fallback(5 * minute, None)
    d2 = fallback(2 * minute + timedelta(seconds=10), "d2")
    seed(db, [*d1, unnamed, d2], events=events)

    result = analyse(db, now)

    (finding,) = result.of_kind("breaker_flapping")
    assert set(finding.transaction_ids) == ids(*d1, unnamed)
    assert [e["daemon_id"] for e in finding.details["episodes"]] == ["d1"]
    assert finding.count == 3
    assert only_kinds(result) == {"breaker_flapping"}


def test_breaker_flapping_without_a_daemon_id_takes_every_fallback(
    db: Database, now: datetime, clean: None
) -> None:
    """Breaker events that name no daemon cannot tell daemons apart either."""
    t0 = now - timedelta(hours=3)
    minute = timedelta(minutes=1)
    events = [breaker_event(t0 + 2 * k * minute, "open", daemon=None) for k in range(3)]
    events.append(breaker_event(t0 + 5 * minute, "closed", daemon=None))
    during = [
        tx(now, timedelta(hours=3) - k * minute, route=Route.FALLBACK, daemon_id=daemon)
        for k, daemon in ((1, "d1"), (2, "d2"), (3, None))
    ]
    seed(db, during, events=events)

    (finding,) = analyse(db, now).of_kind("breaker_flapping")
    assert set(finding.transaction_ids) == ids(*during)
    assert [e["daemon_id"] for e in finding.details["episodes"]] == [None]


def test_missing_trace(db: Database, now: datetime, clean: None) -> None:
    untraced = tx(now, timedelta(hours=1), trace_id=None, span_id=None)
    untraced_failure = tx(
        now, timedelta(hours=2), status=Status.FAILED, error_kind="tool_error", trace_id=None
    )
    rejected = tx(now, timedelta(hours=1), status=Status.REJECTED, trace_id=None)
    seed(db, [untraced, untraced_failure, rejected])

    result = analyse(db, now)

    assert found(result, "missing_trace") == ids(untraced, untraced_failure)
    assert only_kinds(result) == {"missing_trace"}


def test_duplicate_delivery(db: Database, now: datetime, clean: None) -> None:
    key = {"session_id": "s-9", "request_id": "41", "tool": "charge_card"}
    first = tx(now, timedelta(hours=2), **key)
    retry = tx(now, timedelta(hours=2) - timedelta(seconds=30), **key)
    triple_key = {"session_id": "s-9", "request_id": "42", "tool": "generate"}
    triple = [
        stored(now, timedelta(hours=1), fetches=1, **triple_key),
        stored(now, timedelta(minutes=59), fetches=0, **triple_key),
        tx(now, timedelta(minutes=58), **triple_key),
    ]
    near_misses = [
        tx(now, timedelta(hours=1), session_id="s-10", request_id="41", tool="charge_card"),
        tx(now, timedelta(hours=1), session_id="s-9", request_id="41", tool="echo"),
        tx(now, timedelta(hours=1), tenant="globex", **key),
        tx(now, timedelta(hours=1), session_id="s-11", request_id="7"),
        tx(now, timedelta(hours=1), session_id="s-11", request_id="7", status=Status.FAILED),
        tx(now, timedelta(hours=1), session_id=None, request_id=None, tool="up"),
        tx(now, timedelta(hours=1), session_id=None, request_id=None, tool="up"),
    ]
    seed(db, [first, retry, *triple, *near_misses])

    result = analyse(db, now)

    assert found(result, "duplicate_delivery") == ids(first, retry, *triple)
    assert only_kinds(result) == {"duplicate_delivery"}
    assert {f.tool for f in result.findings} == {"charge_card", "generate"}


def _calls(
    now: datetime, start: timedelta, n: int, tool: str, **values: Any
) -> list[dict[str, Any]]:
    """``n`` calls of ``tool`` spread over the hour that starts ``start`` ago."""
    return [tx(now, start - timedelta(seconds=60 * i), tool=tool, **values) for i in range(n)]


def _failed(now: datetime, start: timedelta, n: int, tool: str, kind: str) -> list[dict[str, Any]]:
    return _calls(
        now, start, n, tool, status=Status.FAILED, error_kind=kind, error="x", delivered_at=None
    )


def test_error_rate_regression(db: Database, now: datetime) -> None:
    base, cur = timedelta(hours=30), timedelta(hours=6)  # baseline: the day before since
    rows = []
    # flaky: 2 of 40 failed before (5%), 14 of 40 now (35%): flagged.
    rows += _calls(now, base, 38, "flaky") + _failed(
        now, base - timedelta(hours=1), 2, "flaky", "tool_error"
    )
    flaky_now = _failed(now, cur, 10, "flaky", "tool_error") + _failed(
        now, cur - timedelta(hours=1), 4, "flaky", "timeout"
    )
    rows += _calls(now, cur - timedelta(hours=2), 26, "flaky") + flaky_now
    # steady: 10% before, 17.5% now: under max(2 x 10%, 10% + 10%).
    rows += _calls(now, base, 36, "steady") + _failed(now, base, 4, "steady", "tool_error")
    rows += _calls(now, cur, 33, "steady") + _failed(now, cur, 7, "steady", "tool_error")
    # cancelled calls are not errors of the tool.
    rows += _calls(now, base, 40, "polite")
    rows += _calls(now, cur, 20, "polite") + _failed(now, cur, 20, "polite", "cancelled")
    # small: everything fails now, but too few calls to judge.
    rows += _calls(now, base, 40, "small") + _failed(now, cur, 10, "small", "tool_error")
    seed(db, rows)

    result = run_detectors(db, now - DAY, now)

    assert found(result, "error_rate_regression") == ids(*flaky_now)
    (finding,) = result.of_kind("error_rate_regression")
    assert finding.tool == "flaky"
    assert finding.details["current_rate"] == pytest.approx(14 / 40)
    assert finding.details["baseline_rate"] == pytest.approx(2 / 40)
    assert "35%" in finding.explanation
    assert only_kinds(result) == {"error_rate_regression"}
    # With min_calls above the 40 calls of each window, nothing can be judged.
    assert not run_detectors(db, now - DAY, now, {"min_calls": 41}).findings


def test_error_rate_regression_against_an_explicit_baseline(db: Database, now: datetime) -> None:
    rows = _calls(now, timedelta(days=5), 40, "flaky")  # a healthy week ago
    rows += _calls(now, timedelta(hours=40), 20, "flaky") + _failed(
        now, timedelta(hours=40), 20, "flaky", "tool_error"
    )  # the default baseline: already broken
    failing = _calls(now, timedelta(hours=5), 20, "flaky") + _failed(
        now, timedelta(hours=4), 20, "flaky", "tool_error"
    )
    seed(db, rows + failing)

    assert not run_detectors(db, now - DAY, now).findings  # broken then, broken now
    explicit = {"baseline_start": now - timedelta(days=6), "baseline_end": now - timedelta(days=4)}
    result = run_detectors(db, now - DAY, now, explicit)
    assert found(result, "error_rate_regression") == ids(*failing[20:])


def test_latency_regression(db: Database, now: datetime) -> None:
    base, cur = timedelta(hours=30), timedelta(hours=6)
    rows = []
    # slowpoke: 80..109 ms before (p95 107.55), now 25 calls at 100 ms and 5 at 1 s.
    rows += [
        tx(now, base - timedelta(minutes=i), tool="slowpoke", tool_ms=80.0 + i) for i in range(30)
    ]
    rows += _calls(now, cur, 25, "slowpoke", tool_ms=100.0)
    slow = _calls(now, cur - timedelta(hours=2), 5, "slowpoke", tool_ms=1000.0)
    # quick: 5x slower, but only by 40 ms (under the 100 ms margin).
    rows += _calls(now, base, 30, "quick", tool_ms=10.0) + _calls(
        now, cur, 30, "quick", tool_ms=50.0
    )
    # few: much slower, too few calls now.
    rows += _calls(now, base, 30, "few", tool_ms=10.0) + _calls(now, cur, 5, "few", tool_ms=900.0)
    seed(db, rows + slow)

    result = run_detectors(db, now - DAY, now)

    assert found(result, "latency_regression") == ids(*slow)
    (finding,) = result.of_kind("latency_regression")
    assert finding.tool == "slowpoke"
    assert finding.details["baseline_p95_ms"] == pytest.approx(107.55)
    assert finding.details["current_p95_ms"] == pytest.approx(1000.0)
    assert finding.details["slower_than_ms"] == pytest.approx(215.1)
    assert only_kinds(result) == {"latency_regression"}


def test_latency_regression_names_only_the_calls_slow_by_its_own_margin(
    db: Database, now: datetime
) -> None:
    """A tool of a few ms: twice its baseline p95 is ordinary jitter. The calls named are
    the ones over the baseline by the margin too, not every call that jittered."""
    base, cur = timedelta(hours=30), timedelta(hours=6)
    rows = _calls(now, base, 30, "search", tool_ms=8.0)
    rows += _calls(now, cur, 20, "search", tool_ms=8.0)
    jittered = _calls(now, cur - timedelta(hours=1), 3, "search", tool_ms=25.0)
    slow = _calls(now, cur - timedelta(hours=2), 5, "search", tool_ms=300.0)
    seed(db, rows + jittered + slow)

    result = run_detectors(db, now - DAY, now)

    assert found(result, "latency_regression") == ids(*slow)
    (finding,) = result.of_kind("latency_regression")
    assert finding.count == len(slow)
    assert finding.details["slower_than_ms"] == pytest.approx(108.0)


# -- the findings themselves -----------------------------------------------------------------
def test_findings_carry_what_the_contract_promises(db: Database, now: datetime) -> None:
    rows = [
        tx(now, timedelta(hours=1), error_kind="empty_result", tool="search", tenant=t)
        for t in ("acme", "globex")
    ]
    rows.append(tx(now, timedelta(hours=1), error_kind="empty_result", tool=None))
    seed(db, rows)

    result = analyse(db, now)

    by_tool = {f.tool: f for f in result.findings}
    assert set(by_tool) == {"search", None}
    search = by_tool["search"]
    # Tenant is not part of the fingerprint: one finding for both tenants.
    assert search.fingerprint == fingerprint("empty_success", "search")
    assert search.fingerprint != by_tool[None].fingerprint
    assert search.tenants == ("acme", "globex") and search.tenant is None
    assert search.count == 2 == len(search.transaction_ids)
    detector = DETECTORS["empty_success"]
    assert search.severity is detector.severity and search.remedy == detector.remedy
    as_json = search.to_dict()
    for key in ("kind", "severity", "fingerprint", "count", "transaction_ids", "explanation"):
        assert key in as_json
    assert as_json["tool"] == "search" and as_json["remedy"]


def test_only_the_kinds_asked_for_run(db: Database, now: datetime) -> None:
    seed(db, [tx(now, timedelta(hours=1), trace_id=None, error_kind="empty_result")])
    result = run_detectors(db, now - DAY, now, kinds=["missing_trace"])
    assert result.run.kinds == ("missing_trace",)
    assert only_kinds(result) == {"missing_trace"}
    assert set(result.run.seconds) == {"window_size", "missing_trace"}


def test_the_window_is_since_to_now(db: Database, now: datetime) -> None:
    inside = tx(now, timedelta(hours=2), trace_id=None)
    before = tx(now, timedelta(hours=5), trace_id=None)
    after = tx(now, -timedelta(minutes=5), trace_id=None)  # a clock ahead: after now
    seed(db, [inside, before, after])
    result = run_detectors(db, timedelta(hours=3), now)  # a duration before now
    assert found(result, "missing_trace") == ids(inside)
    assert result.run.since == now - timedelta(hours=3)
    assert result.run.baseline_end == result.run.since
    assert result.run.baseline_start == now - timedelta(hours=6)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"orphan_grace": "soon"}, "orphan_grace"),
        ({"no_such": 1}, "unknown detector parameter"),
        ({"flap_opens": 1}, "flap_opens"),
        ({"min_calls": 2.5}, "min_calls"),
        ({"baseline_start": datetime(2020, 1, 1)}, "baseline_end"),
    ],
)
def test_bad_parameters_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        Params.coerce(params)


def test_bad_windows_and_kinds_are_refused(db: Database, now: datetime) -> None:
    with pytest.raises(AnalysisError, match="window is empty"):
        run_detectors(db, now, now)
    with pytest.raises(AnalysisError, match="unknown detector kind"):
        run_detectors(db, DAY, now, kinds=["no_such_kind"])
    late_baseline = {"baseline_start": now - DAY, "baseline_end": now}
    with pytest.raises(AnalysisError, match="baseline"):
        run_detectors(db, timedelta(hours=2), now, late_baseline)


def test_durations_in_parameters(db: Database) -> None:
    p = Params.coerce({"orphan_grace": "2h", "stuck_after": 90, "lost_after": timedelta(minutes=3)})
    assert (p.orphan_grace, p.stuck_after, p.lost_after) == (
        timedelta(hours=2),
        timedelta(seconds=90),
        timedelta(minutes=3),
    )
    assert Params().to_dict()["orphan_grace"] == "1h"


@pytest.mark.postgres
def test_a_role_under_row_level_security_is_refused(pg_url: str) -> None:
    """As the daemon's role the analysis would see no rows and report a clean bill of
    health: it must refuse instead."""
    with app_role(pg_url) as url:
        as_role = Database(url)
        try:
            with pytest.raises(AnalysisError, match="row-level security"):
                run_detectors(as_role, DAY)
        finally:
            as_role.dispose()
