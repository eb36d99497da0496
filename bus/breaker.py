"""The circuit breaker around store calls: a pure state machine and two thin wrappers.

States: ``closed`` (calls flow, outcomes are counted), ``open`` (calls are refused
without being tried) and ``half_open`` (a few probe calls decide between the two).
The breaker opens after ``failure_threshold`` consecutive failures, or when the failure
rate over the last ``window_size`` calls reaches ``failure_rate_threshold`` (once the
window holds ``minimum_calls``). A call slower than ``slow_call_seconds`` is a failure
even if it returned. After ``open_seconds`` the breaker lets ``half_open_max_calls``
probes through: all succeed -> closed, any fails -> open again, extra calls refused.

The core (:meth:`CircuitBreaker.allow`, :meth:`~CircuitBreaker.record_success`,
:meth:`~CircuitBreaker.record_failure`, :meth:`~CircuitBreaker.release`) does no I/O
and reads time only from the injected clock; :meth:`~CircuitBreaker.call` and
:meth:`~CircuitBreaker.call_async` wrap it for sync and ``await`` calls.

Why not a library (pybreaker, aiobreaker, purgatory, circuitbreaker, aiomisc): none
combines a count-based failure-rate window, slow calls, a half-open probe limit,
transition reasons with the failure rate and an injectable clock; the evaluation is
in docs/decisions/circuit-breaker.md.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from bus.errors import StoreError

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "Listener",
    "Permit",
    "Transition",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

Clock = Callable[[], float]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds of one breaker. Invalid values raise ``ValueError`` naming the field."""

    failure_threshold: int = 5
    window_size: int = 20
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5
    slow_call_seconds: float = 5.0
    open_seconds: float = 30.0
    half_open_max_calls: int = 2

    def __post_init__(self) -> None:
        for field in ("failure_threshold", "window_size", "minimum_calls", "half_open_max_calls"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BreakerConfig.{field} must be an integer >= 1, got {value!r}")
        if self.minimum_calls > self.window_size:
            raise ValueError(
                f"BreakerConfig.minimum_calls ({self.minimum_calls}) must not exceed "
                f"window_size ({self.window_size}): the failure rate would never be evaluated"
            )
        rate = self.failure_rate_threshold
        if not _is_number(rate) or not 0 < rate <= 1:
            raise ValueError(
                f"BreakerConfig.failure_rate_threshold must be in (0, 1], got {rate!r}"
            )
        # math.inf turns slow-call detection off; an infinite open time would never probe.
        slow = self.slow_call_seconds
        if not _is_number(slow) or not slow > 0:
            raise ValueError(f"BreakerConfig.slow_call_seconds must be > 0, got {slow!r}")
        opened = self.open_seconds
        if not _is_number(opened) or not 0 < opened < math.inf:
            raise ValueError(
                f"BreakerConfig.open_seconds must be a finite number > 0, got {opened!r}"
            )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True)
class Transition:
    """One state change, as every listener sees it.

    ``failure_rate`` and ``consecutive_failures`` describe the state being left: the
    sliding window when leaving ``closed``, the completed probes when leaving
    ``half_open``, and the values that opened the breaker when leaving ``open``.
    """

    breaker: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    failure_rate: float
    consecutive_failures: int
    at: float


@dataclass(frozen=True)
class BreakerSnapshot:
    """A consistent view for metrics; the ``*_total`` fields only ever grow."""

    name: str
    state: BreakerState
    failure_rate: float
    consecutive_failures: int
    window_calls: int
    window_failures: int
    probes_in_flight: int
    probe_successes: int
    retry_after: float | None
    last_failure_reason: str | None
    calls_permitted_total: int
    calls_rejected_total: int
    successes_total: int
    failures_total: int
    slow_calls_total: int
    calls_ignored_total: int
    transitions_total: int


class Permit:
    """The right to make one call. Settle it exactly once: record a result or release it.

    A permit remembers the breaker generation (bumped by every transition) it was
    issued in, so the late result of a call admitted before a transition is ignored
    rather than counted against the new state, and whether it holds a half-open probe
    slot.
    """

    __slots__ = ("_settled", "generation", "probe")

    def __init__(self, generation: int, probe: bool) -> None:
        self.generation = generation
        self.probe = probe
        self._settled = False

    def __repr__(self) -> str:
        return f"<Permit generation={self.generation} probe={self.probe}>"


class CircuitOpenError(StoreError):
    """The breaker refused the call without trying it."""

    def __init__(self, name: str, state: BreakerState, retry_after: float | None) -> None:
        self.name = name
        self.state = state
        self.retry_after = retry_after
        super().__init__(name, state, retry_after)

    def __str__(self) -> str:
        if self.retry_after is None:
            return (
                f"circuit breaker {self.name!r} is {self.state.value}; "
                "all probe calls are in flight, retry shortly"
            )
        return (
            f"circuit breaker {self.name!r} is {self.state.value}; "
            f"retry after {self.retry_after:.1f}s"
        )


Listener = Callable[[Transition], None]


class CircuitBreaker:
    """One breaker, shared by every task and thread that calls the guarded resource.

    State updates happen under a lock that is never held across a guarded call or an
    ``await``. Listeners run synchronously, in transition order, on the thread that
    caused the transition, while the lock is held: keep them quick and non-blocking
    (update a metric, append to a queue, ``loop.call_soon_threadsafe``). They may read
    the breaker. A listener that raises is logged and does not affect the breaker.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        clock: Clock = time.monotonic,
        *,
        is_failure: Callable[[Exception], bool] | None = None,
    ) -> None:
        self.name = name
        self.config = config if config is not None else BreakerConfig()
        self._clock = clock
        self._is_failure = is_failure
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._window: deque[bool] = deque(maxlen=self.config.window_size)  # True: failure
        self._window_failures = 0
        self._consecutive = 0
        self._opened_at = 0.0
        self._open_rate = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._probe_failures = 0
        self._last_failure_reason: str | None = None
        self._permitted = self._rejected = self._successes = self._failures = 0
        self._slow = self._ignored = self._transitions = 0

    # -- the pure core -------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose time is up becomes half-open here."""
        with self._lock:
            self._tick()
            return self._state

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def allow(self) -> Permit | None:
        """A permit for one call, or ``None`` when the breaker refuses it."""
        with self._lock:
            self._tick()
            if self._state is BreakerState.OPEN or (
                self._state is BreakerState.HALF_OPEN
                and self._probes_in_flight + self._probe_successes
                >= self.config.half_open_max_calls
            ):
                self._rejected += 1
                return None
            probe = self._state is BreakerState.HALF_OPEN
            if probe:
                self._probes_in_flight += 1
            self._permitted += 1
            return Permit(self._generation, probe)

    def acquire(self) -> Permit:
        """Like :meth:`allow`, but a refusal raises :class:`CircuitOpenError`."""
        with self._lock:
            permit = self.allow()
            if permit is None:
                raise CircuitOpenError(self.name, self._state, self._retry_after())
            return permit

    def record_success(self, permit: Permit, duration_seconds: float) -> None:
        """The call returned; slower than ``slow_call_seconds`` it still counts as failed."""
        with self._lock:
            if duration_seconds > self.config.slow_call_seconds:
                self._slow += 1
                self._record(permit, failed=True, reason="slow_call")
            else:
                self._record(permit, failed=False, reason=None)

    def record_failure(self, permit: Permit, reason: str = "error") -> None:
        """The call failed; ``reason`` (an exception name, say) shows in the snapshot."""
        with self._lock:
            self._record(permit, failed=True, reason=reason)

    def release(self, permit: Permit) -> None:
        """Settle a permit without an outcome (the call was cancelled, not judged)."""
        with self._lock:
            self._settle(permit)
            self._ignored += 1

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            self._tick()
            return BreakerSnapshot(
                name=self.name,
                state=self._state,
                failure_rate=self._failure_rate(),
                consecutive_failures=self._consecutive,
                window_calls=len(self._window),
                window_failures=self._window_failures,
                probes_in_flight=self._probes_in_flight,
                probe_successes=self._probe_successes,
                retry_after=self._retry_after() if self._state is BreakerState.OPEN else None,
                last_failure_reason=self._last_failure_reason,
                calls_permitted_total=self._permitted,
                calls_rejected_total=self._rejected,
                successes_total=self._successes,
                failures_total=self._failures,
                slow_calls_total=self._slow,
                calls_ignored_total=self._ignored,
                transitions_total=self._transitions,
            )

    # -- thin wrappers -------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` through the breaker (also fine inside ``asyncio.to_thread``)."""
        permit = self.acquire()
        started = self._clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._settle_exception(permit, exc, self._clock() - started)
            raise
        self.record_success(permit, self._clock() - started)
        return result

    async def call_async(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        permit = self.acquire()
        started = self._clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._settle_exception(permit, exc, self._clock() - started)
            raise
        self.record_success(permit, self._clock() - started)
        return result

    def _settle_exception(self, permit: Permit, exc: BaseException, duration: float) -> None:
        # CancelledError, KeyboardInterrupt and SystemExit are BaseExceptions: they say
        # nothing about the resource's health, so the permit is released, not judged.
        if not isinstance(exc, Exception):
            self.release(permit)
            return
        try:
            failed = self._is_failure(exc) if self._is_failure is not None else True
        except Exception:
            logger.exception("breaker %r: is_failure raised; counting a failure", self.name)
            failed = True
        if failed:
            self.record_failure(permit, type(exc).__name__)
        else:
            # A failure the predicate excuses (a business error) means the resource
            # answered: it counts as a success, so only its duration can trip the breaker.
            self.record_success(permit, duration)

    # -- internals (called with the lock held) -------------------------------------------

    def _settle(self, permit: Permit) -> bool:
        """Mark the permit used; True when its result still belongs to the current state."""
        if permit._settled:
            raise RuntimeError(f"{permit!r} of breaker {self.name!r} was already settled")
        permit._settled = True
        current = permit.generation == self._generation
        if current and permit.probe:
            self._probes_in_flight -= 1
        return current

    def _record(self, permit: Permit, *, failed: bool, reason: str | None) -> None:
        if not self._settle(permit):
            self._ignored += 1
            return
        if failed:
            self._failures += 1
            self._consecutive += 1
            self._last_failure_reason = reason
        else:
            self._successes += 1
            self._consecutive = 0
        if self._state is BreakerState.HALF_OPEN:
            self._record_probe(failed)
        else:
            self._record_closed(failed)

    def _record_closed(self, failed: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._window_failures -= 1
        self._window.append(failed)
        self._window_failures += failed
        if self._consecutive >= self.config.failure_threshold:
            self._open("consecutive_failures")
        elif (
            len(self._window) >= self.config.minimum_calls
            and self._failure_rate() >= self.config.failure_rate_threshold
        ):
            self._open("failure_rate")

    def _record_probe(self, failed: bool) -> None:
        if failed:
            self._probe_failures += 1
            self._open("probe_failed")
            return
        self._probe_successes += 1
        if self._probe_successes >= self.config.half_open_max_calls:
            self._move(BreakerState.CLOSED, "probe_succeeded")

    def _open(self, reason: str) -> None:
        self._open_rate = self._failure_rate()
        self._move(BreakerState.OPEN, reason)

    def _tick(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.config.open_seconds
        ):
            self._move(BreakerState.HALF_OPEN, "open_timeout_elapsed")

    def _failure_rate(self) -> float:
        if self._state is BreakerState.OPEN:
            return self._open_rate
        if self._state is BreakerState.HALF_OPEN:
            done = self._probe_successes + self._probe_failures
            return self._probe_failures / done if done else 0.0
        return self._window_failures / len(self._window) if self._window else 0.0

    def _retry_after(self) -> float | None:
        if self._state is not BreakerState.OPEN:
            return None
        return max(0.0, self._opened_at + self.config.open_seconds - self._clock())

    def _move(self, to_state: BreakerState, reason: str) -> None:
        now = self._clock()
        transition = Transition(
            breaker=self.name,
            from_state=self._state,
            to_state=to_state,
            reason=reason,
            failure_rate=self._failure_rate(),
            consecutive_failures=self._consecutive,
            at=now,
        )
        self._state = to_state
        self._generation += 1
        self._transitions += 1
        self._probes_in_flight = self._probe_successes = self._probe_failures = 0
        if to_state is BreakerState.OPEN:
            self._opened_at = now
        elif to_state is BreakerState.CLOSED:
            self._window.clear()
            self._window_failures = 0
        log = logger.warning if to_state is BreakerState.OPEN else logger.info
        log(
            "= breaker %r: %s -> %s (%s, failure rate %.2f, %d consecutive failures)",
            self.name,
            transition.from_state.value,
            to_state.value,
            reason,
            transition.failure_rate,
            transition.consecutive_failures,
        )
        for listener in list(self._listeners):
            try:
                listener(transition)
            except Exception:
                logger.exception("breaker %r: listener %r raised", self.name, listener)
