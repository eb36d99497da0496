"""Tests for bus.messagebus: routing through a real store, fallback, breaker, one audit row.

The store is a real PostgreSQL database reached through a TCP proxy; an outage is the
test cutting the proxy (connections refused and reset), never a mocked exception.
The breaker runs on a clock the test moves, so nothing here sleeps through open time.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from bus.audit import AuditWriter
from bus.breaker import BreakerConfig, BreakerState, CircuitBreaker, Transition
from bus.db import Database, normalize_url
from bus.errors import StoreError
from bus.messagebus import Delivery, MessageBus
from bus.models import Route, Status, Transaction
from bus.records import breaker_events, row_to_transaction, transactions
from bus.router import Action, RoutingPolicy, encode_message
from bus.store import PayloadStore, StoreConfig, TransactionContext, chunks
from tests.helpers.tcpproxy import TCPProxy

pytestmark = pytest.mark.postgres

WAIT = 30.0
THRESHOLD = 64 * 1024
PAYLOAD = (b'{"rows":[' + b",".join(b'{"n":%d,"v":"value %d"}' % (i, i) for i in range(5000)))[
    :100_000
] + b"]}"


class Clock:
    """The breaker's clock: moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Bus:
    bus: MessageBus
    breaker: CircuitBreaker
    clock: Clock
    audit: AuditWriter
    proxy: TCPProxy
    direct: Database  # the same database, not through the proxy: to look during outages

    def call(
        self, payload: bytes = PAYLOAD, *, client_cap: int | None = None, tool: str = "generate"
    ) -> tuple[TransactionContext, Delivery]:
        """What the daemon does for one tool result: begin, deliver, send (settle)."""
        ctx = TransactionContext(tenant="acme", tool=tool, session_id="s-1", request_id="1")
        self.bus.begin(ctx)
        delivery = asyncio.run(
            self.bus.deliver(ctx, payload, inline_builder(payload), client_cap=client_cap)
        )
        self.bus.settle(ctx, delivery, sent=True)
        return ctx, delivery

    def settle_audit(self) -> None:
        """Everything submitted so far is in the database (the spool replayed too)."""
        assert self.audit.flush(WAIT)
        deadline = time.monotonic() + WAIT
        while self.audit.stats().spooled:
            assert time.monotonic() < deadline, "the audit spool was not replayed"
            time.sleep(0.02)
        assert self.audit.flush(WAIT)

    def rows(self) -> dict[uuid.UUID, Transaction]:
        with self.direct.begin() as conn:
            found = [
                row_to_transaction(r)
                for r in conn.execute(sa.select(transactions)).mappings().all()
            ]
        by_id = {t.id: t for t in found}
        assert len(by_id) == len(found), "one transaction id has several rows"
        return by_id

    def chunk_count(self, tx_id: uuid.UUID) -> int:
        with self.direct.begin() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(chunks.c.transaction_id == tx_id)
                ).scalar_one()
            )

    def events(self) -> list[tuple[str, str, str]]:
        with self.direct.begin() as conn:
            found = conn.execute(
                sa.select(
                    breaker_events.c.from_state, breaker_events.c.to_state, breaker_events.c.reason
                ).order_by(breaker_events.c.at, breaker_events.c.id)
            ).all()
        return [tuple(r) for r in found]  # type: ignore[misc]

    def transitions(self) -> list[tuple[str, str, str, float, int]]:
        """Every recorded transition with the numbers stored with it, read with plain SQL."""
        with self.direct.begin() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT from_state, to_state, reason, failure_rate, consecutive_failures "
                    "FROM breaker_events ORDER BY at, id"
                )
            ).all()
        return [(r[0], r[1], r[2], r[3], r[4]) for r in found]


def as_recorded(transition: Transition) -> tuple[str, str, str, float, int]:
    """A transition as the breaker computed it, in the shape of Bus.transitions()."""
    return (
        transition.from_state.value,
        transition.to_state.value,
        transition.reason,
        transition.failure_rate,
        transition.consecutive_failures,
    )


def inline_builder(payload: bytes) -> Callable[[Route, str], bytes]:
    def build(route: Route, checksum: str) -> bytes:
        return encode_message(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "result": {
                    "content": [{"type": "text", "text": payload.decode()}],
                    "_meta": {"bustrail": {"route": route.value, "checksum": checksum}},
                },
            }
        )

    return build


@pytest.fixture
def make_bus(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., Bus]]:
    made: list[tuple[AuditWriter, list[Database], TCPProxy]] = []

    def make(
        *, fallback: bool = True, threshold: int = 3, config: BreakerConfig | None = None
    ) -> Bus:
        target = sa.engine.make_url(normalize_url(pg_url))
        proxy = TCPProxy(target.host or "127.0.0.1", target.port or 5432)
        through = target.set(host="127.0.0.1", port=proxy.port)
        db = Database(through.render_as_string(hide_password=False), pool_size=2)
        direct = Database(pg_url, pool_size=2)
        audit = AuditWriter(db, tmp_path / "spool", flush_seconds=0.05, retry_seconds=0.05)
        audit.start()
        made.append((audit, [db, direct], proxy))
        clock = Clock()
        breaker = CircuitBreaker(
            "store",
            config or BreakerConfig(failure_threshold=threshold, window_size=20, minimum_calls=20),
            clock,
            is_failure=lambda exc: isinstance(exc, StoreError),
        )
        policy = RoutingPolicy(threshold_bytes=THRESHOLD, fallback_to_websocket=fallback)
        store = PayloadStore(db, StoreConfig(chunk_bytes=64 * 1024))
        bus = MessageBus(store, audit, policy, breaker)
        return Bus(bus, breaker, clock, audit, proxy, direct)

    yield make
    for audit, dbs, proxy in made:
        audit.close(timeout=10)
        proxy.close()
        for db in dbs:
            db.dispose()


# -- the healthy path ------------------------------------------------------------------
def test_a_large_result_is_stored_and_leaves_one_stored_row(make_bus: Callable[..., Bus]) -> None:
    b = make_bus()
    _ctx, delivery = b.call()
    assert delivery.action is Action.STORE and delivery.record is not None
    b.settle_audit()
    rows = b.rows()
    assert list(rows) == [delivery.transaction_id]
    row = rows[delivery.transaction_id]
    assert (row.route, row.status, row.error_kind) == (Route.STORE, Status.STORED, None)
    assert row.size == len(PAYLOAD) and b.chunk_count(row.id) >= 1
    assert b.bus.store.open("acme", row.id).read_all() == PAYLOAD


def test_a_small_result_goes_inline_and_leaves_one_delivered_row(
    make_bus: Callable[..., Bus],
) -> None:
    b = make_bus()
    _ctx, delivery = b.call(b"hello", tool="echo")
    assert delivery.action is Action.INLINE and delivery.message is not None
    b.settle_audit()
    row = b.rows()[delivery.transaction_id]
    assert (row.route, row.status, row.size) == (Route.INLINE, Status.DELIVERED, 5)
    assert b.chunk_count(row.id) == 0


# -- the store fails: fallback -----------------------------------------------------------
def test_store_down_falls_back_inline_when_the_message_fits_the_client(
    make_bus: Callable[..., Bus],
) -> None:
    b = make_bus()
    b.proxy.cut()
    _ctx, delivery = b.call(client_cap=None)  # 1 MiB, the default: 100 kB fits
    assert delivery.action is Action.FALLBACK
    assert delivery.message is not None
    sent = json.loads(delivery.message)["result"]
    assert sent["content"][0]["text"].encode() == PAYLOAD
    assert sent["_meta"]["bustrail"]["route"] == "fallback"
    assert b.breaker.snapshot().failures_total == 1
    b.proxy.restore()
    b.settle_audit()
    rows = b.rows()
    assert list(rows) == [delivery.transaction_id]
    row = rows[delivery.transaction_id]
    assert (row.route, row.status, row.error_kind) == (Route.FALLBACK, Status.DELIVERED, None)
    assert row.size == len(PAYLOAD) and row.delivered_at is not None
    assert b.chunk_count(row.id) == 0


def test_store_down_and_too_big_for_the_client_fails_as_fallback_oversize(
    make_bus: Callable[..., Bus],
) -> None:
    b = make_bus()
    b.proxy.cut()
    _ctx, delivery = b.call(client_cap=80 * 1024)  # over 64 KiB: stored; 100 kB: too big
    assert delivery.action is Action.FAIL and delivery.message is None
    assert delivery.error_kind == "fallback_oversize"
    assert delivery.error is not None and "81,920 bytes" in delivery.error
    b.proxy.restore()
    b.settle_audit()
    rows = b.rows()
    assert list(rows) == [delivery.transaction_id]
    row = rows[delivery.transaction_id]
    assert (row.route, row.status, row.error_kind) == (
        Route.FALLBACK,
        Status.FAILED,
        "fallback_oversize",
    )
    assert row.error == delivery.error


def test_store_down_with_fallback_off_fails_as_store_unavailable(
    make_bus: Callable[..., Bus],
) -> None:
    b = make_bus(fallback=False)
    b.proxy.cut()
    _ctx, delivery = b.call()
    assert delivery.action is Action.FAIL and delivery.error_kind == "store_unavailable"
    assert delivery.error is not None and "FALLBACK_TO_WEBSOCKET" in delivery.error
    b.proxy.restore()
    b.settle_audit()
    rows = b.rows()
    assert list(rows) == [delivery.transaction_id]
    row = rows[delivery.transaction_id]
    assert (row.route, row.status, row.error_kind) == (
        Route.FALLBACK,
        Status.FAILED,
        "store_unavailable",
    )


def test_an_upload_while_the_store_is_down_fails_with_one_failed_row(
    make_bus: Callable[..., Bus],
) -> None:
    b = make_bus()
    b.proxy.cut()
    ctx = TransactionContext(tenant="acme", tool="upload")
    with pytest.raises(StoreError):
        asyncio.run(b.bus.put(ctx, [PAYLOAD]))
    b.proxy.restore()
    b.settle_audit()
    rows = b.rows()
    assert list(rows) == [ctx.transaction_id]
    row = rows[ctx.transaction_id]
    assert (row.route, row.status, row.error_kind) == (Route.STORE, Status.FAILED, "store_error")


# -- the breaker -------------------------------------------------------------------------
def test_an_open_breaker_falls_back_without_touching_the_store(
    make_bus: Callable[..., Bus],
) -> None:
    b = make_bus(threshold=3)
    b.proxy.cut()
    tripped = [b.call()[1] for _ in range(3)]
    assert [d.action for d in tripped] == [Action.FALLBACK] * 3
    assert b.breaker.state is BreakerState.OPEN
    assert b.audit.flush(WAIT)
    spooled_while_down = b.audit.stats().spooled
    assert spooled_while_down >= 7  # 3 x (pending, delivered) and the breaker event
    b.proxy.restore()  # the store works again, but the breaker is still open

    before = b.breaker.snapshot()
    _ctx, delivery = b.call()
    after = b.breaker.snapshot()
    assert delivery.action is Action.FALLBACK
    assert after.calls_rejected_total == before.calls_rejected_total + 1
    assert after.calls_permitted_total == before.calls_permitted_total  # never tried
    b.settle_audit()
    assert b.chunk_count(delivery.transaction_id) == 0  # no byte of it was stored
    rows = b.rows()
    assert set(rows) == {d.transaction_id for d in [*tripped, delivery]}
    for row in rows.values():
        assert (row.route, row.status, row.error_kind) == (Route.FALLBACK, Status.DELIVERED, None)
    # The transition happened while the database was down: it came through the spool.
    assert b.events() == [("closed", "open", "consecutive_failures")]


def test_the_breaker_recovers_through_half_open_and_every_step_is_recorded(
    make_bus: Callable[..., Bus],
) -> None:
    b = make_bus(threshold=3)
    seen: list[Transition] = []
    b.breaker.add_listener(seen.append)
    _ctx, first = b.call()  # one success first: the window's failure rate is not just 1
    assert first.action is Action.STORE
    b.proxy.cut()
    for _ in range(3):
        b.call()
    assert b.breaker.state is BreakerState.OPEN
    b.clock.now += b.breaker.config.open_seconds  # open time over: probes are let through
    _ctx, probe = b.call()  # the store is still down: the probe fails
    assert probe.action is Action.FALLBACK
    assert b.breaker.state is BreakerState.OPEN

    b.proxy.restore()
    b.clock.now += b.breaker.config.open_seconds
    probes = [b.call()[1] for _ in range(b.breaker.config.half_open_max_calls)]
    assert [p.action for p in probes] == [Action.STORE] * len(probes)
    assert b.breaker.state is BreakerState.CLOSED
    _ctx, after = b.call()
    assert after.action is Action.STORE

    b.settle_audit()
    assert b.events() == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_timeout_elapsed"),
        ("half_open", "open", "probe_failed"),
        ("open", "half_open", "open_timeout_elapsed"),
        ("half_open", "closed", "probe_succeeded"),
    ]
    # The failure rate and consecutive failures stored are the ones the breaker computed:
    # the window's [ok, failed x3] when it opened (carried through open), then the probes.
    assert b.transitions() == [as_recorded(t) for t in seen]
    assert b.transitions() == [
        ("closed", "open", "consecutive_failures", 0.75, 3),
        ("open", "half_open", "open_timeout_elapsed", 0.75, 3),
        ("half_open", "open", "probe_failed", 1.0, 4),
        ("open", "half_open", "open_timeout_elapsed", 1.0, 4),
        ("half_open", "closed", "probe_succeeded", 0.0, 0),
    ]
    rows = b.rows()
    assert len(rows) == 1 + 3 + 1 + len(probes) + 1
    stored = [r for r in rows.values() if r.route is Route.STORE]
    assert {r.status for r in stored} == {Status.STORED}
    assert len(stored) == 1 + len(probes) + 1
    for row in stored:
        assert b.bus.store.open("acme", row.id).read_all() == PAYLOAD


def test_an_opening_on_the_failure_rate_records_the_windows_rate(
    make_bus: Callable[..., Bus],
) -> None:
    """Two successes then two failures fill a window of 4 at 50%: the breaker opens on the
    rate (not on 2 consecutive failures, far below 10). A half-open round of one success
    and one failure stores the probes' rate, 1 of 2."""
    config = BreakerConfig(
        failure_threshold=10, window_size=4, minimum_calls=4, failure_rate_threshold=0.5
    )
    b = make_bus(config=config)
    seen: list[Transition] = []
    b.breaker.add_listener(seen.append)
    assert [b.call()[1].action for _ in range(2)] == [Action.STORE] * 2
    b.proxy.cut()
    assert [b.call()[1].action for _ in range(2)] == [Action.FALLBACK] * 2
    assert b.breaker.state is BreakerState.OPEN

    b.proxy.restore()
    b.clock.now += config.open_seconds
    assert b.call()[1].action is Action.STORE  # the first probe succeeds
    b.proxy.cut()
    assert b.call()[1].action is Action.FALLBACK  # the second fails: open again
    assert b.breaker.state is BreakerState.OPEN
    b.proxy.restore()

    b.settle_audit()
    assert b.transitions() == [as_recorded(t) for t in seen]
    assert b.transitions() == [
        ("closed", "open", "failure_rate", 0.5, 2),
        ("open", "half_open", "open_timeout_elapsed", 0.5, 2),
        ("half_open", "open", "probe_failed", 0.5, 1),
    ]


def test_a_result_that_could_not_be_sent_is_failed_not_delivered(
    make_bus: Callable[..., Bus],
) -> None:
    b = make_bus()
    b.proxy.cut()
    ctx = TransactionContext(tenant="acme", tool="generate")
    b.bus.begin(ctx)
    delivery = asyncio.run(b.bus.deliver(ctx, PAYLOAD, inline_builder(PAYLOAD), client_cap=None))
    assert delivery.action is Action.FALLBACK
    b.bus.settle(ctx, delivery, sent=False, error="send failed: connection closed")
    b.proxy.restore()
    b.settle_audit()
    row = b.rows()[delivery.transaction_id]
    assert (row.route, row.status, row.error_kind) == (Route.FALLBACK, Status.FAILED, "send_failed")


# -- who wrote it ----------------------------------------------------------------------------
def test_every_row_and_breaker_event_names_the_daemon_that_wrote_it(
    make_bus: Callable[..., Bus],
) -> None:
    b = make_bus(threshold=2)
    stored = b.call()[1]  # the store's own row, then its update
    inline = b.call(b"hello", tool="echo")[1]
    uploaded = asyncio.run(b.bus.put(TransactionContext(tenant="acme", tool="upload"), [PAYLOAD]))
    b.proxy.cut()
    fallbacks = [b.call()[1] for _ in range(3)]  # the second opens the breaker
    b.proxy.restore()
    b.settle_audit()

    rows = b.rows()
    ids = {d.transaction_id for d in [stored, inline, *fallbacks]} | {uploaded.id}
    assert set(rows) == ids
    assert [d.route for d in fallbacks] == [Route.FALLBACK] * 3
    assert {row.daemon_id for row in rows.values()} == {b.bus.daemon_id}
    with b.direct.begin() as conn:
        event_daemons = set(conn.execute(sa.select(breaker_events.c.daemon_id)).scalars())
    assert event_daemons == {b.bus.daemon_id}  # the same value: one source
