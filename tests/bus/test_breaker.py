"""Tests for bus.breaker: every transition, the window, slow calls, listeners, wrappers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import pickle
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bus.breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Permit,
    Transition,
)
from bus.errors import BustrailError, StoreError

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Boom(Exception):
    pass


def make(
    clock: FakeClock | None = None, events: list[Transition] | None = None, **overrides: Any
) -> CircuitBreaker:
    """A breaker whose failure-rate rule stays out of the way unless a test sets it."""
    settings: dict[str, Any] = {
        "failure_threshold": 3,
        "window_size": 100,
        "minimum_calls": 100,
        "failure_rate_threshold": 1.0,
        "slow_call_seconds": 5.0,
        "open_seconds": 30.0,
        "half_open_max_calls": 2,
    }
    settings.update(overrides)
    breaker = CircuitBreaker("store", BreakerConfig(**settings), clock or FakeClock())
    if events is not None:
        breaker.add_listener(events.append)
    return breaker


def succeed(breaker: CircuitBreaker, duration: float = 0.1) -> None:
    permit = breaker.allow()
    assert permit is not None
    breaker.record_success(permit, duration)


def fail(breaker: CircuitBreaker, reason: str = "Boom") -> None:
    permit = breaker.allow()
    assert permit is not None
    breaker.record_failure(permit, reason)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        fail(breaker)
    assert breaker.state is OPEN


def summary(events: list[Transition]) -> list[tuple[str, str, str]]:
    return [(e.from_state.value, e.to_state.value, e.reason) for e in events]


# -- configuration ---------------------------------------------------------------------


def test_config_defaults_match_the_documented_settings() -> None:
    config = BreakerConfig()
    assert (
        config.failure_threshold,
        config.window_size,
        config.minimum_calls,
        config.failure_rate_threshold,
        config.slow_call_seconds,
        config.open_seconds,
        config.half_open_max_calls,
    ) == (5, 20, 10, 0.5, 5.0, 30.0, 2)
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("failure_threshold", 0, "failure_threshold must be an integer >= 1"),
        ("failure_threshold", True, "failure_threshold must be an integer >= 1"),
        ("window_size", 2.5, "window_size must be an integer >= 1"),
        ("minimum_calls", 0, "minimum_calls must be an integer >= 1"),
        ("minimum_calls", 21, "minimum_calls (21) must not exceed window_size (20)"),
        ("half_open_max_calls", -1, "half_open_max_calls must be an integer >= 1"),
        ("failure_rate_threshold", 0.0, "failure_rate_threshold must be in (0, 1]"),
        ("failure_rate_threshold", 1.5, "failure_rate_threshold must be in (0, 1]"),
        ("failure_rate_threshold", math.nan, "failure_rate_threshold must be in (0, 1]"),
        ("slow_call_seconds", 0, "slow_call_seconds must be > 0"),
        ("slow_call_seconds", "5", "slow_call_seconds must be > 0"),
        ("open_seconds", -1.0, "open_seconds must be a finite number > 0"),
        ("open_seconds", math.inf, "open_seconds must be a finite number > 0"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BreakerConfig(**{field: value})  # type: ignore[arg-type]


def test_config_allows_disabling_slow_calls_with_infinity() -> None:
    breaker = make(slow_call_seconds=math.inf)
    succeed(breaker, duration=1e9)
    assert breaker.snapshot().failures_total == 0


# -- closed -> open --------------------------------------------------------------------


def test_opens_after_threshold_consecutive_failures() -> None:
    clock, events = FakeClock(), list[Transition]()
    breaker = make(clock, events, failure_threshold=3)
    fail(breaker)
    fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 2
    fail(breaker, reason="OperationalError")

    assert breaker.state is OPEN
    assert summary(events) == [("closed", "open", "consecutive_failures")]
    assert events[0].consecutive_failures == 3
    assert events[0].failure_rate == 1.0
    assert events[0].breaker == "store"
    assert events[0].at == clock.now
    assert breaker.snapshot().last_failure_reason == "OperationalError"


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = make(failure_threshold=3)
    for _ in range(5):
        fail(breaker)
        fail(breaker)
        succeed(breaker)
    snap = breaker.snapshot()
    assert snap.state is CLOSED
    assert snap.consecutive_failures == 0
    assert (snap.failures_total, snap.successes_total) == (10, 5)


def test_opens_on_failure_rate_only_once_minimum_calls_are_in_the_window() -> None:
    events: list[Transition] = []
    breaker = make(
        None,
        events,
        failure_threshold=100,
        window_size=10,
        minimum_calls=4,
        failure_rate_threshold=0.5,
    )
    fail(breaker)
    fail(breaker)
    fail(breaker)  # 100 % failures, but only 3 of the 4 required calls
    assert breaker.state is CLOSED
    assert breaker.snapshot().failure_rate == 1.0

    succeed(breaker)  # 4 calls, 3 failed: 75 % >= 50 %
    assert breaker.state is OPEN
    assert summary(events) == [("closed", "open", "failure_rate")]
    assert events[0].failure_rate == 0.75
    assert events[0].consecutive_failures == 0


def test_failure_rate_below_the_threshold_keeps_the_breaker_closed() -> None:
    breaker = make(
        failure_threshold=100, window_size=10, minimum_calls=4, failure_rate_threshold=0.5
    )
    for _ in range(10):  # S S F repeated: never more than 4 failures in any 10 calls
        succeed(breaker)
        succeed(breaker)
        fail(breaker)
    snap = breaker.snapshot()
    assert snap.state is CLOSED
    assert snap.window_calls == 10
    assert snap.window_failures == 4  # the last ten: F S S F S S F S S F
    assert snap.failure_rate == pytest.approx(0.4)


def test_old_results_fall_out_of_the_sliding_window() -> None:
    events: list[Transition] = []
    breaker = make(
        None,
        events,
        failure_threshold=100,
        window_size=3,
        minimum_calls=3,
        failure_rate_threshold=1.0,
    )
    fail(breaker)
    succeed(breaker)
    succeed(breaker)
    assert (breaker.snapshot().window_calls, breaker.snapshot().window_failures) == (3, 1)
    succeed(breaker)  # evicts the failure
    assert (breaker.snapshot().window_calls, breaker.snapshot().window_failures) == (3, 0)
    fail(breaker)
    fail(breaker)  # window: S F F
    assert breaker.state is CLOSED
    assert breaker.snapshot().failure_rate == pytest.approx(2 / 3)
    fail(breaker)  # evicts the last success: F F F
    assert breaker.state is OPEN
    assert summary(events) == [("closed", "open", "failure_rate")]
    assert events[0].failure_rate == 1.0


# -- open ------------------------------------------------------------------------------


def test_open_breaker_refuses_calls_and_says_when_to_retry() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    clock.advance(17.7)

    assert breaker.allow() is None
    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire()
    error = caught.value
    assert isinstance(error, StoreError)
    assert isinstance(error, BustrailError)
    assert error.retry_after == pytest.approx(12.3)
    assert str(error) == "circuit breaker 'store' is open; retry after 12.3s"
    snap = breaker.snapshot()
    assert snap.calls_rejected_total == 2
    assert snap.retry_after == pytest.approx(12.3)
    assert snap.failure_rate == 1.0


def test_circuit_open_error_survives_pickling() -> None:
    error = CircuitOpenError("store", OPEN, 3.0)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)


def test_open_becomes_half_open_lazily_when_open_seconds_elapse() -> None:
    clock, events = FakeClock(), list[Transition]()
    breaker = make(clock, events, open_seconds=30.0)
    trip(breaker)
    opened_at = clock.now
    clock.advance(29.999)
    assert breaker.state is OPEN
    assert breaker.allow() is None
    clock.advance(0.001)

    assert breaker.state is HALF_OPEN
    assert summary(events)[-1] == ("open", "half_open", "open_timeout_elapsed")
    assert events[-1].at == pytest.approx(opened_at + 30.0)
    assert events[-1].failure_rate == 1.0  # the rate that opened it
    assert breaker.snapshot().retry_after is None


# -- half-open -------------------------------------------------------------------------


def half_open(clock: FakeClock, breaker: CircuitBreaker) -> None:
    trip(breaker)
    clock.advance(breaker.config.open_seconds)
    assert breaker.state is HALF_OPEN


def test_half_open_closes_after_all_probes_succeed() -> None:
    clock, events = FakeClock(), list[Transition]()
    breaker = make(clock, events, half_open_max_calls=2)
    half_open(clock, breaker)
    first, second = breaker.allow(), breaker.allow()
    assert first is not None and first.probe
    assert second is not None and second.probe

    breaker.record_success(first, 0.1)
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot().probe_successes == 1
    breaker.record_success(second, 0.1)

    assert breaker.state is CLOSED
    assert summary(events) == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_timeout_elapsed"),
        ("half_open", "closed", "probe_succeeded"),
    ]
    assert events[-1].failure_rate == 0.0
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.window_failures, snap.consecutive_failures) == (0, 0, 0)
    permit = breaker.allow()
    assert permit is not None and not permit.probe


def test_a_failed_probe_reopens_and_restarts_the_open_timer() -> None:
    clock, events = FakeClock(), list[Transition]()
    breaker = make(clock, events, half_open_max_calls=2)
    half_open(clock, breaker)
    succeed(breaker)
    fail(breaker, reason="TimeoutError")

    assert breaker.state is OPEN
    assert summary(events)[-1] == ("half_open", "open", "probe_failed")
    assert events[-1].failure_rate == 0.5  # one of two completed probes failed
    clock.advance(29.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN


def test_half_open_refuses_calls_beyond_the_probe_limit() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_max_calls=2)
    half_open(clock, breaker)
    first, second = breaker.acquire(), breaker.acquire()
    assert breaker.allow() is None
    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire()
    assert caught.value.retry_after is None
    assert str(caught.value) == (
        "circuit breaker 'store' is half_open; all probe calls are in flight, retry shortly"
    )

    breaker.record_success(first, 0.1)
    assert breaker.allow() is None  # a finished probe keeps its slot
    breaker.release(second)  # a cancelled probe gives its slot back
    third = breaker.allow()
    assert third is not None and third.probe
    breaker.record_success(third, 0.1)
    assert breaker.state is CLOSED
    assert breaker.snapshot().calls_rejected_total == 3


def test_a_late_result_from_before_a_transition_is_ignored() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_max_calls=1)
    slow_starter = breaker.acquire()  # admitted while closed
    half_open(clock, breaker)

    breaker.record_success(slow_starter, 0.1)  # not a probe: must not close the breaker
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot().calls_ignored_total == 1
    probe = breaker.acquire()
    breaker.record_success(probe, 0.1)
    assert breaker.state is CLOSED


def test_a_probe_from_an_earlier_half_open_round_does_not_free_a_slot() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_max_calls=2)
    half_open(clock, breaker)
    straggler, failing = breaker.acquire(), breaker.acquire()
    breaker.record_failure(failing)  # reopens while the straggler is still running
    clock.advance(30)
    first, second = breaker.acquire(), breaker.acquire()
    breaker.release(straggler)  # a probe of the previous round: its slot is long gone

    assert breaker.allow() is None
    assert breaker.snapshot().probes_in_flight == 2
    breaker.record_success(first, 0.1)
    breaker.record_success(second, 0.1)
    assert breaker.state is CLOSED


def test_a_permit_can_be_settled_only_once() -> None:
    breaker = make()
    permit = breaker.acquire()
    breaker.record_success(permit, 0.1)
    with pytest.raises(RuntimeError, match="already settled"):
        breaker.record_failure(permit)
    with pytest.raises(RuntimeError, match="already settled"):
        breaker.release(permit)
    assert breaker.snapshot().successes_total == 1
    assert breaker.snapshot().failures_total == 0


# -- slow calls ------------------------------------------------------------------------


def test_slow_calls_count_as_failures() -> None:
    events: list[Transition] = []
    breaker = make(None, events, failure_threshold=2, slow_call_seconds=5.0)
    succeed(breaker, duration=5.0)  # at the limit is not slow
    assert breaker.snapshot().failures_total == 0
    succeed(breaker, duration=5.001)
    succeed(breaker, duration=60.0)

    assert breaker.state is OPEN
    assert summary(events) == [("closed", "open", "consecutive_failures")]
    snap = breaker.snapshot()
    assert (snap.slow_calls_total, snap.failures_total, snap.successes_total) == (2, 2, 1)
    assert snap.last_failure_reason == "slow_call"


def test_a_slow_probe_reopens_the_breaker() -> None:
    clock, events = FakeClock(), list[Transition]()
    breaker = make(clock, events)
    half_open(clock, breaker)
    succeed(breaker, duration=9.0)
    assert breaker.state is OPEN
    assert events[-1].reason == "probe_failed"


def test_call_returns_the_result_of_a_slow_call_but_counts_it() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1)

    def slow_read() -> bytes:
        clock.advance(6.0)
        return b"payload"

    assert breaker.call(slow_read) == b"payload"
    assert breaker.state is OPEN
    assert breaker.snapshot().slow_calls_total == 1


# -- listeners -------------------------------------------------------------------------


def test_listeners_see_every_transition_with_reason_and_rate() -> None:
    clock, events, others = FakeClock(), list[Transition](), list[Transition]()
    breaker = make(
        clock,
        events,
        failure_threshold=100,
        window_size=4,
        minimum_calls=4,
        failure_rate_threshold=0.5,
        half_open_max_calls=1,
    )
    breaker.add_listener(others.append)
    for ok in (True, False, True, False):
        (succeed if ok else fail)(breaker)
    clock.advance(30)
    assert breaker.state is HALF_OPEN
    fail(breaker)
    clock.advance(30)
    succeed(breaker)
    fail(breaker)
    fail(breaker)

    assert [(*s, e.failure_rate) for s, e in zip(summary(events), events, strict=True)] == [
        ("closed", "open", "failure_rate", 0.5),
        ("open", "half_open", "open_timeout_elapsed", 0.5),
        ("half_open", "open", "probe_failed", 1.0),
        ("open", "half_open", "open_timeout_elapsed", 1.0),
        ("half_open", "closed", "probe_succeeded", 0.0),
    ]
    assert others == events
    assert [e.at for e in events] == [1000.0, 1030.0, 1030.0, 1060.0, 1060.0]
    assert breaker.snapshot().transitions_total == 5
    assert breaker.snapshot().failure_rate == 1.0  # fresh window: F F (below minimum)


def test_a_raising_listener_is_logged_and_breaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    breaker = make(clock)

    def broken(transition: Transition) -> None:
        raise RuntimeError("metrics backend down")

    events: list[Transition] = []
    breaker.add_listener(broken)
    breaker.add_listener(events.append)
    with caplog.at_level(logging.ERROR, logger="bus.breaker"):
        trip(breaker)
        clock.advance(30)
        assert breaker.state is HALF_OPEN

    assert summary(events) == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_timeout_elapsed"),
    ]
    failures = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(failures) == 2
    assert failures[0].exc_info is not None
    assert "metrics backend down" in str(failures[0].exc_info[1])


def test_a_removed_listener_hears_nothing_more() -> None:
    events: list[Transition] = []
    breaker = make(None, events)
    breaker.remove_listener(events.append)
    trip(breaker)
    assert events == []


# -- the wrappers ----------------------------------------------------------------------


def test_call_passes_arguments_and_propagates_the_same_exception() -> None:
    breaker = make()

    def add(a: int, *, b: int) -> int:
        return a + b

    assert breaker.call(add, 2, b=3) == 5
    error = Boom("store down")

    def broken() -> None:
        raise error

    with pytest.raises(Boom) as caught:
        breaker.call(broken)
    assert caught.value is error
    snap = breaker.snapshot()
    assert (snap.successes_total, snap.failures_total) == (1, 1)
    assert snap.last_failure_reason == "Boom"


def test_call_refuses_without_calling_when_open() -> None:
    breaker = make()
    trip(breaker)
    called: list[int] = []
    with pytest.raises(CircuitOpenError):
        breaker.call(called.append, 1)
    assert called == []


def test_is_failure_predicate_excuses_business_errors() -> None:
    breaker = CircuitBreaker(
        "store",
        BreakerConfig(failure_threshold=1),
        FakeClock(),
        is_failure=lambda exc: not isinstance(exc, KeyError),
    )
    with pytest.raises(KeyError):
        breaker.call(dict[str, int]().__getitem__, "missing")
    assert breaker.state is CLOSED
    assert breaker.snapshot().successes_total == 1
    with pytest.raises(Boom):
        breaker.call(_raise, Boom())
    assert breaker.state is OPEN


def test_a_raising_predicate_counts_a_failure_and_keeps_the_original_error() -> None:
    def predicate(exc: Exception) -> bool:
        raise ValueError("bad predicate")

    breaker = CircuitBreaker(
        "store", BreakerConfig(failure_threshold=1), FakeClock(), is_failure=predicate
    )
    with pytest.raises(Boom):
        breaker.call(_raise, Boom())
    assert breaker.state is OPEN


def _total(values: list[int]) -> int:
    return sum(values)


def _raise(exc: BaseException) -> None:
    raise exc


def test_cancellation_is_not_counted_and_propagates() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, half_open_max_calls=1)
    with pytest.raises(asyncio.CancelledError):
        breaker.call(_raise, asyncio.CancelledError())
    with pytest.raises(KeyboardInterrupt):
        breaker.call(_raise, KeyboardInterrupt())
    snap = breaker.snapshot()
    assert snap.state is CLOSED
    assert (snap.failures_total, snap.successes_total, snap.calls_ignored_total) == (0, 0, 2)

    half_open(clock, breaker)
    with pytest.raises(asyncio.CancelledError):
        breaker.call(_raise, asyncio.CancelledError())
    assert breaker.state is HALF_OPEN
    assert breaker.allow() is not None  # the cancelled probe gave its slot back


def test_call_async_wraps_real_coroutines() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2)
    calls: list[str] = []

    async def fetch(key: str, *, suffix: str = "") -> str:
        calls.append(key)
        await asyncio.sleep(0)
        return key + suffix

    async def broken(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0)
        raise Boom(key)

    async def slow(key: str) -> str:
        await asyncio.sleep(0)
        clock.advance(10.0)
        return key

    async def scenario() -> None:
        assert await breaker.call_async(fetch, "a", suffix="!") == "a!"
        assert await breaker.call_async(slow, "b") == "b"  # returned, but slow
        with pytest.raises(Boom, match="c"):
            await breaker.call_async(broken, "c")
        assert breaker.state is OPEN
        with pytest.raises(CircuitOpenError):
            await breaker.call_async(fetch, "d")

    asyncio.run(scenario())
    assert calls == ["a", "c"]
    snap = breaker.snapshot()
    assert (snap.successes_total, snap.failures_total, snap.slow_calls_total) == (1, 2, 1)


def test_call_async_does_not_count_a_cancelled_task() -> None:
    breaker = make(failure_threshold=1)

    async def scenario() -> None:
        started = asyncio.Event()

        async def hang() -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(breaker.call_async(hang))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    snap = breaker.snapshot()
    assert snap.state is CLOSED
    assert (snap.failures_total, snap.calls_ignored_total) == (0, 1)


def test_call_works_for_sync_calls_run_in_threads() -> None:
    breaker = make(failure_threshold=1)

    async def scenario() -> int:
        return await asyncio.to_thread(breaker.call, _total, [1, 2, 3])

    assert asyncio.run(scenario()) == 6
    assert breaker.snapshot().successes_total == 1


# -- threads ---------------------------------------------------------------------------

THREADS, ROUNDS = 8, 2000


@pytest.fixture
def eager_thread_switching() -> Iterator[None]:
    """Switch threads every microsecond so that a missing lock shows up as lost counts."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def run_threads(work: Any) -> None:
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def runner(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.usefixtures("eager_thread_switching")
def test_concurrent_recording_keeps_exact_counts() -> None:
    breaker = make(
        failure_threshold=10**9, window_size=50, minimum_calls=50, failure_rate_threshold=1.0
    )

    def work(index: int) -> None:
        for i in range(ROUNDS):
            permit = breaker.acquire()
            if i % 2:
                breaker.record_failure(permit)
            else:
                breaker.record_success(permit, 0.01)

    run_threads(work)
    snap = breaker.snapshot()
    assert snap.state is CLOSED
    assert snap.successes_total == snap.failures_total == THREADS * ROUNDS // 2
    assert snap.calls_permitted_total == THREADS * ROUNDS
    assert snap.window_calls == 50
    assert 0 < snap.window_failures < 50


@pytest.mark.usefixtures("eager_thread_switching")
def test_concurrent_failures_open_the_breaker_exactly_once() -> None:
    events: list[Transition] = []
    breaker = make(None, events, failure_threshold=5)

    def work(index: int) -> None:
        for _ in range(ROUNDS // 10):
            with contextlib.suppress(Boom, CircuitOpenError):
                breaker.call(_raise, Boom())

    run_threads(work)
    snap = breaker.snapshot()
    assert summary(events) == [("closed", "open", "consecutive_failures")]
    assert snap.state is OPEN
    assert snap.calls_permitted_total + snap.calls_rejected_total == THREADS * ROUNDS // 10
    # Every permit was settled exactly once: counted, or ignored as a late result.
    assert snap.calls_permitted_total == (
        snap.successes_total + snap.failures_total + snap.calls_ignored_total
    )
    assert snap.failures_total == 5


def test_permit_repr_is_readable() -> None:
    assert repr(Permit(3, True)) == "<Permit generation=3 probe=True>"
