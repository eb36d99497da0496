"""The debt ledger on both backends: findings open, stay, resolve when their cause is
fixed, reopen as regressions when it comes back; acknowledgement; the burn-down kept in
analysis_runs. Real databases, real detector runs over seeded audit rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from analysis.detectors import run_detectors
from analysis.findings import AnalysisError, AnalysisResult
from analysis.ledger import (
    SAMPLE_SIZE,
    FindingNotFound,
    LedgerChange,
    acknowledge,
    burn_down,
    list_findings,
    open_findings_by_kind,
    record,
    runs,
    show,
)
from analysis.queries import canonical_id
from bus.db import Database, utcnow
from bus.models import FindingStatus
from bus.records import transactions
from tests.analysis.audit_seed import seed, tx

WINDOW = timedelta(days=1)


class Clock:
    """Analysis runs a minute apart."""

    def __init__(self) -> None:
        self.now = utcnow()

    def tick(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def analyse_and_record(
    db: Database, clock: Clock, **kwargs: Any
) -> tuple[AnalysisResult, LedgerChange]:
    now = clock.tick()
    result = run_detectors(db, now - WINDOW, now, **kwargs)
    return result, record(db, result)


def untraced(
    clock: Clock, tool: str = "echo", age: timedelta = timedelta(hours=1)
) -> dict[str, Any]:
    return tx(clock.now, age, tool=tool, trace_id=None, span_id=None)


def empty(clock: Clock, tool: str = "search") -> dict[str, Any]:
    return tx(clock.now, timedelta(hours=2), tool=tool, error_kind="empty_result")


def delete(db: Database, *rows: dict[str, Any]) -> None:
    with db.begin() as conn:
        conn.execute(transactions.delete().where(transactions.c.id.in_([r["id"] for r in rows])))


def kinds_of(entries: list[Any]) -> set[tuple[str, str | None]]:
    return {(e.kind, e.tool) for e in entries}


def test_a_first_run_opens_what_it_finds(db: Database, clock: Clock) -> None:
    rows = [untraced(clock), untraced(clock), empty(clock)]
    seed(db, rows)

    result, change = analyse_and_record(db, clock)

    assert kinds_of(change.new) == {("missing_trace", "echo"), ("empty_success", "search")}
    assert not (change.seen or change.resolved or change.reopened)
    assert change.open_count == 2
    trace = next(e for e in change.new if e.kind == "missing_trace")
    assert trace.status == FindingStatus.OPEN
    assert trace.first_seen_at == trace.last_seen_at == result.run.now
    assert trace.occurrences == 2
    assert sorted(trace.sample_transaction_ids) == sorted(canonical_id(r["id"]) for r in rows[:2])
    assert trace.last_run_id == change.run_id
    assert trace.regression is False and trace.reopened_count == 0
    assert trace.fingerprint == result.of_kind("missing_trace")[0].fingerprint
    assert trace.tenant == "acme" and trace.explanation and trace.remedy
    assert open_findings_by_kind(db) == {"missing_trace": 1, "empty_success": 1}


def test_recording_again_without_change_opens_nothing_new(db: Database, clock: Clock) -> None:
    seed(db, [untraced(clock), empty(clock)])
    _, first = analyse_and_record(db, clock)

    result, second = analyse_and_record(db, clock)

    assert second.new == [] and second.resolved == [] and second.reopened == []
    assert {e.id for e in second.seen} == {e.id for e in first.new}
    assert len(list_findings(db, "all")) == 2
    for entry in second.seen:
        assert entry.status == FindingStatus.OPEN
        assert entry.last_seen_at == result.run.now > entry.first_seen_at
        assert entry.last_run_id == second.run_id
        assert entry.occurrences == 1


def test_occurrences_and_samples_follow_the_latest_run(db: Database, clock: Clock) -> None:
    seed(db, [untraced(clock)])
    _, first = analyse_and_record(db, clock)
    more = [untraced(clock, age=timedelta(minutes=5 + i)) for i in range(SAMPLE_SIZE + 4)]
    seed(db, more)

    _, second = analyse_and_record(db, clock)

    (entry,) = second.seen
    assert entry.id == first.new[0].id
    assert entry.occurrences == SAMPLE_SIZE + 5
    # The newest SAMPLE_SIZE ids (UUIDv7 text sorts by time), newest first.
    newest = sorted((canonical_id(r["id"]) for r in more), reverse=True)[:SAMPLE_SIZE]
    assert entry.sample_transaction_ids == newest


def test_a_fixed_cause_resolves_and_its_return_reopens_as_a_regression(
    db: Database, clock: Clock
) -> None:
    bad = [untraced(clock), untraced(clock)]
    other = empty(clock)
    seed(db, [*bad, other])
    _, first = analyse_and_record(db, clock)
    trace_id = next(e.id for e in first.new if e.kind == "missing_trace")

    # Fix: one row traced after all, the other gone.
    with db.begin() as conn:
        conn.execute(
            transactions.update()
            .where(transactions.c.id == bad[0]["id"])
            .values(trace_id="ab" * 16)
        )
    delete(db, bad[1])
    result, fixed = analyse_and_record(db, clock)

    assert [e.id for e in fixed.resolved] == [trace_id]
    resolved = show(db, trace_id)
    assert resolved.status == FindingStatus.RESOLVED
    assert resolved.resolved_at == result.run.now
    assert kinds_of(fixed.seen) == {("empty_success", "search")}
    assert fixed.open_count == 1
    assert open_findings_by_kind(db) == {"empty_success": 1}

    # Re-inject: the same problem in the same tool comes back.
    seed(db, [untraced(clock)])
    _, back = analyse_and_record(db, clock)

    assert back.new == [] and [e.id for e in back.reopened] == [trace_id]
    reopened = show(db, trace_id)
    assert reopened.status == FindingStatus.OPEN
    assert reopened.regression is True and reopened.reopened_count == 1
    assert reopened.resolved_at is None
    assert reopened.first_seen_at == first.new[0].first_seen_at
    assert back.open_count == 2

    # Seen again while open: still one regression, counted once.
    _, again = analyse_and_record(db, clock)
    assert again.reopened == [] and show(db, trace_id).reopened_count == 1


def test_acknowledged_findings_stay_acknowledged_until_resolved(db: Database, clock: Clock) -> None:
    row = untraced(clock)
    seed(db, [row])
    _, first = analyse_and_record(db, clock)
    finding_id = first.new[0].id
    assert finding_id is not None

    at = clock.now + timedelta(seconds=5)
    acked = acknowledge(db, finding_id, "alice", at=at)
    assert acked.status == FindingStatus.ACKNOWLEDGED
    assert acked.acknowledged_by == "alice" and acked.acknowledged_at == at
    assert acknowledge(db, finding_id, "bob").acknowledged_by == "alice"  # already owned
    assert [e.id for e in list_findings(db, "acknowledged")] == [finding_id]
    assert list_findings(db, "open") == []
    # Acknowledged is still debt: the gauge and the burn-down count it.
    assert open_findings_by_kind(db) == {"missing_trace": 1}

    _, seen = analyse_and_record(db, clock)
    assert seen.seen[0].status == FindingStatus.ACKNOWLEDGED and seen.open_count == 1

    delete(db, row)
    _, fixed = analyse_and_record(db, clock)
    assert [e.id for e in fixed.resolved] == [finding_id]
    with pytest.raises(AnalysisError, match="resolved"):
        acknowledge(db, finding_id, "alice")

    seed(db, [untraced(clock)])
    _, back = analyse_and_record(db, clock)
    entry = back.reopened[0]
    assert entry.status == FindingStatus.OPEN and entry.acknowledged_by is None


def test_unknown_findings_and_statuses_are_clear_errors(db: Database) -> None:
    with pytest.raises(FindingNotFound, match="no finding with id 4242"):
        show(db, 4242)
    with pytest.raises(FindingNotFound):
        acknowledge(db, 4242, "alice")
    with pytest.raises(AnalysisError, match="unknown status"):
        list_findings(db, "closed")


def test_only_the_kinds_that_ran_can_resolve(db: Database, clock: Clock) -> None:
    rows = [untraced(clock), empty(clock)]
    seed(db, rows)
    analyse_and_record(db, clock)
    delete(db, *rows)

    _, partial = analyse_and_record(db, clock, kinds=["missing_trace"])

    assert kinds_of(partial.resolved) == {("missing_trace", "echo")}
    assert open_findings_by_kind(db) == {"empty_success": 1}


def test_the_burn_down_over_analysis_runs(db: Database, clock: Clock) -> None:
    a, b, c = untraced(clock, "alpha"), untraced(clock, "beta"), empty(clock, "gamma")
    seed(db, [a, b, c])
    analyse_and_record(db, clock)  # 3 new, 3 open
    analyse_and_record(db, clock)  # nothing changes
    delete(db, a)
    analyse_and_record(db, clock)  # alpha resolved: 2 open
    delete(db, b, c)
    analyse_and_record(db, clock)  # beta and gamma resolved: 0 open
    seed(db, [untraced(clock, "alpha"), untraced(clock, "delta")])
    analyse_and_record(db, clock)  # alpha reopened, delta new: 2 open

    history = burn_down(db)

    assert history["open_count"].tolist() == [3, 3, 2, 0, 2]
    assert history["new_count"].tolist() == [3, 0, 0, 0, 1]
    assert history["resolved_count"].tolist() == [0, 0, 1, 2, 0]
    assert history["reopened_count"].tolist() == [0, 0, 0, 0, 1]
    assert history["id"].is_monotonic_increasing
    assert str(history["window_end"].dt.tz) == "UTC"
    with db.connect() as conn:
        counts = conn.execute(sa.select(runs.c.counts).order_by(runs.c.id)).scalars().all()
    assert counts[0]["missing_trace"] == 2 and counts[0]["empty_success"] == 1
    assert counts[0]["checksum_mismatch"] == 0
    assert counts[-1]["missing_trace"] == 2 and counts[-1]["empty_success"] == 0
