"""10,000 transactions through a real daemon, with the database cut in the middle.

A daemon (in this process, so the test can see its breaker and audit writer) reaches
a fresh PostgreSQL database through a TCP proxy. Four WebSocket clients send 10,000
tool calls: mostly small ``echo`` results (inline, audit only), a steady share of large
``generate`` results (over the threshold: claim checks in the store) and a few tool
errors. One client declares a small message cap, so a large result it asks for cannot
fall back inline while the store is down. In the middle the proxy is cut for a few
seconds (connections refused and reset), then restored.

Afterwards: exactly one audit row per transaction id the clients saw, with the outcome
each client was told; every payload byte-identical (inline ones on arrival, stored ones
fetched after recovery); the breaker went closed -> open -> half_open -> closed with a
reason for every step, and what was written while the database was down arrived
through the spool.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bus.audit import Spool
from bus.breaker import BreakerState
from bus.db import Database
from bus.records import breaker_events, transactions
from daemon.client import CallResult, Client, RPCError
from daemon.jsonrpc import Code
from daemon.tools import generate_json
from tests.helpers.daemon import ThreadDaemon, thread_daemon
from tests.helpers.tcpproxy import TCPProxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CALLS = 10_000
CLIENTS = 4
SMALL_CAP_CLIENT = 3  # declares a 48 KiB cap: a large result cannot fall back to it
SMALL_CAP = 48 * 1024
THRESHOLD = 64 * 1024  # MESSAGE_BUS_THRESHOLD_BYTES, lowered to keep the test quick
LARGE_EVERY = 20  # every 20th call is a large generate result (5%)
LARGE_SIZE = 80_000
SEEDS = 8
FAIL_EVERY = 97  # and a few tool errors
IN_FLIGHT = 64  # calls in flight at once, across the clients
BEFORE_OUTAGE = 4_000  # calls before the cut
DURING_OUTAGE = (1_500, 4_000)  # at least, at most: calls while the database is down
OUTAGE_SECONDS = 3.0  # the cut lasts at least this long (several breaker open times)
OPEN_SECONDS = 1.0  # CIRCUIT_BREAKER_OPEN_SECONDS
WAIT = 60.0


@dataclass
class Outcome:
    index: int
    tool: str
    phase: str
    expected: bytes
    result: CallResult | None = None
    error: RPCError | None = None

    @property
    def transaction_id(self) -> str:
        if self.result is not None:
            found = self.result.transaction_id
        else:
            assert self.error is not None
            found = (self.error.data or {}).get("transaction_id")
        assert found, f"call {self.index} ({self.tool}) came back without a transaction id"
        return str(found)


_LARGE = {seed: generate_json(LARGE_SIZE, seed).encode() for seed in range(SEEDS)}


def plan(i: int) -> tuple[str, dict[str, Any], bytes]:
    """Call ``i``: its tool, arguments and the bytes a correct result carries."""
    if i % LARGE_EVERY == 0:
        seed = (i // LARGE_EVERY) % SEEDS
        return "generate", {"size": LARGE_SIZE, "seed": seed}, _LARGE[seed]
    if i % FAIL_EVERY == 1:
        message = f"planned failure {i}"
        return "fail", {"message": message}, message.encode()
    text = f"call {i}: " + "x" * (i % 300)
    return "echo", {"text": text}, text.encode()


def client_of(i: int) -> int:
    # Spreads the large calls (every 20th) over every client, the small-cap one too.
    return (i + i // LARGE_EVERY) % CLIENTS


class Load:
    """The clients, and what each call came back with."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self.outcomes: dict[int, Outcome] = {}
        self._slots = asyncio.Semaphore(IN_FLIGHT)

    async def run(self, indices: Iterable[int], phase: str) -> None:
        await asyncio.gather(*(self._one(i, phase) for i in indices))

    async def _one(self, i: int, phase: str) -> None:
        tool, arguments, expected = plan(i)
        outcome = Outcome(i, tool, phase, expected)
        async with self._slots:
            try:
                outcome.result = await self.clients[client_of(i)].call(tool, arguments)
            except RPCError as exc:  # anything else (a dropped connection...) fails the test
                outcome.error = exc
        self.outcomes[i] = outcome


def spool_contents(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    spool = Spool(directory)
    return [item for segment in spool.segments() for item in spool.read(segment)]


async def stable_spool(runtime: Any, directory: Path) -> tuple[list[Any], Any]:
    """The spool on disk and the writer's stats, read when they agree (the outcome
    record of the very last answer may still be on its way to the spool)."""
    deadline = time.monotonic() + WAIT
    while True:
        before = runtime.audit.stats()
        contents = spool_contents(directory)
        after = runtime.audit.stats()
        if before == after and after.queued == 0 and after.spooled == len(contents):
            return contents, after
        assert time.monotonic() < deadline, "the spool never settled"
        await asyncio.sleep(0.1)


async def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({WAIT:g}s) for: {what}")
        await asyncio.sleep(0.05)


async def scenario(daemon: ThreadDaemon, proxy: TCPProxy, spool_dir: Path) -> dict[str, Any]:
    runtime = daemon.runtime
    assert runtime.breaker is not None
    clients = [
        await Client.connect(
            daemon.url, max_message_bytes=SMALL_CAP if n == SMALL_CAP_CLIENT else 1024 * 1024
        )
        for n in range(CLIENTS)
    ]
    load = Load(clients)
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        await load.run(range(BEFORE_OUTAGE), "before")
        timings["before"] = time.monotonic() - started

        proxy.cut()
        cut_at = time.monotonic()
        next_call = BEFORE_OUTAGE
        low, high = BEFORE_OUTAGE + DURING_OUTAGE[0], BEFORE_OUTAGE + DURING_OUTAGE[1]
        while next_call < high and (next_call < low or time.monotonic() - cut_at < OUTAGE_SECONDS):
            batch = range(next_call, min(next_call + 250, high))
            await load.run(batch, "during")
            next_call = batch.stop
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
        # Whatever the outage produced is on disk now: the database is still down.
        assert await asyncio.to_thread(runtime.audit.flush, WAIT)
        spooled, spooled_stats = await stable_spool(runtime, spool_dir)
        proxy.restore()
        timings["outage"] = time.monotonic() - cut_at

        # Past the open time, the next store calls are the half-open probes.
        await asyncio.sleep(OPEN_SECONDS * 1.5)
        resumed = time.monotonic()
        await load.run(range(next_call, CALLS), "after")
        timings["after"] = time.monotonic() - resumed

        await asyncio.to_thread(runtime.audit.flush, WAIT)
        await wait_for(lambda: runtime.audit.stats().spooled == 0, "the spool to be replayed")
        assert await asyncio.to_thread(runtime.audit.flush, WAIT)

        fetched: dict[str, bytes] = {}
        fetch_slots = asyncio.Semaphore(16)

        async def fetch(outcome: Outcome) -> None:
            async with fetch_slots:
                data = await clients[0].fetch(outcome.transaction_id)
            assert isinstance(data, bytes)
            fetched[outcome.transaction_id] = data

        stored = [
            o for o in load.outcomes.values() if o.result is not None and o.result.route == "store"
        ]
        fetch_started = time.monotonic()
        await asyncio.gather(*(fetch(o) for o in stored))
        timings["fetch"] = time.monotonic() - fetch_started
    finally:
        for client in clients:
            await client.close()
    return {
        "outcomes": load.outcomes,
        "fetched": fetched,
        "spooled": spooled,
        "spooled_stats": spooled_stats,
        "timings": timings,
        "during": next_call - BEFORE_OUTAGE,
    }


def test_ten_thousand_transactions_through_a_database_outage(
    pg_url: str, proxied_pg_url: str, pg_proxy: TCPProxy, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    with thread_daemon(
        tmp_path,
        database_url=proxied_pg_url,
        bustrail_spool_dir=spool_dir,
        message_bus_threshold_bytes=THRESHOLD,
        circuit_breaker_threshold=3,
        circuit_breaker_open_seconds=OPEN_SECONDS,
        # Only the outage may open the breaker, not a store call slowed by a busy machine.
        circuit_breaker_slow_call_seconds=120,
    ) as daemon:
        run = asyncio.run(scenario(daemon, pg_proxy, spool_dir))
        runtime = daemon.runtime
        assert runtime.breaker is not None
        final_state = runtime.breaker.state
        audit = runtime.audit.stats()
        daemon_id = runtime.bus.daemon_id

    outcomes: dict[int, Outcome] = run["outcomes"]
    fetched: dict[str, bytes] = run["fetched"]
    timings = run["timings"]
    print(
        f"\n{CALLS} calls: {BEFORE_OUTAGE} before the cut in {timings['before']:.1f}s, "
        f"{run['during']} during an outage of {timings['outage']:.1f}s, "
        f"{CALLS - BEFORE_OUTAGE - run['during']} after in {timings['after']:.1f}s; "
        f"{len(fetched)} stored results fetched in {timings['fetch']:.1f}s"
    )

    # -- every caller got its result or a clear error ---------------------------------
    assert sorted(outcomes) == list(range(CALLS))
    seen: Counter[str] = Counter()
    expected_rows: dict[str, tuple[str, str, str | None]] = {}
    for o in outcomes.values():
        tx_id = o.transaction_id
        assert tx_id not in expected_rows, f"transaction id {tx_id} answered two calls"
        if o.error is not None:
            kind = (o.error.data or {}).get("error_kind")
            # The only error this load may meet: a large result for the small-cap client
            # while the store could not take it: down, or the breaker not yet closed
            # again (half-open lets only its probes through).
            assert (o.tool, kind) == ("generate", "fallback_oversize"), o.error
            assert o.phase != "before", o.error
            assert client_of(o.index) == SMALL_CAP_CLIENT
            assert o.error.code == Code.RESULT_TOO_LARGE and "over this client" in o.error.message
            seen["error fallback_oversize"] += 1
            expected_rows[tx_id] = ("fallback", "failed", "fallback_oversize")
            continue
        assert o.result is not None
        if o.tool == "fail":
            assert o.result.is_error and o.result.text == o.expected.decode()
            seen["tool error"] += 1
            expected_rows[tx_id] = ("inline", "failed", "tool_error")
            continue
        assert not o.result.is_error
        route = o.result.route
        assert route in {"inline", "store", "fallback"}, route
        seen[f"{o.tool} {route}"] += 1
        if route == "store":
            assert o.tool == "generate"
            assert fetched[tx_id] == o.expected, f"stored result of call {o.index} differs"
            assert o.result.checksum is not None
            expected_rows[tx_id] = ("store", "fetched", None)
        else:
            assert o.result.inline_bytes() == o.expected  # checksum verified too
            assert (route == "fallback") == (o.tool == "generate")
            expected_rows[tx_id] = (route, "delivered", None)
    print(f"outcomes: {dict(sorted(seen.items()))}")
    assert seen["generate fallback"] > 0 and seen["error fallback_oversize"] > 0
    assert seen["generate store"] > 0 and seen["echo inline"] > 0 and seen["tool error"] > 0

    # -- exactly one audit row per transaction, saying what the client was told -------
    db = Database(pg_url, pool_size=1)
    try:
        with db.begin() as conn:
            rows = conn.execute(
                sa.select(
                    transactions.c.id,
                    transactions.c.route,
                    transactions.c.status,
                    transactions.c.error_kind,
                    transactions.c.fetch_count,
                    transactions.c.daemon_id,
                )
            ).all()
            events = conn.execute(
                sa.select(
                    breaker_events.c.id,
                    breaker_events.c.from_state,
                    breaker_events.c.to_state,
                    breaker_events.c.reason,
                    breaker_events.c.daemon_id,
                ).order_by(breaker_events.c.at, breaker_events.c.id)
            ).all()
    finally:
        db.dispose()
    per_id = Counter(str(r.id) for r in rows)
    assert [tx for tx, n in per_id.items() if n > 1] == []
    assert len(rows) == CALLS
    assert set(per_id) == set(expected_rows), "audit rows and client-seen ids differ"
    actual_rows = {str(r.id): (r.route.value, r.status.value, r.error_kind) for r in rows}
    wrong = {
        tx: (actual_rows[tx], want) for tx, want in expected_rows.items() if actual_rows[tx] != want
    }
    assert wrong == {}, (
        f"{len(wrong)} audit rows disagree with their client, e.g. {list(wrong.items())[:3]}"
    )
    assert {r.fetch_count for r in rows if r.route.value == "store"} == {1}

    # -- the breaker: every step, with its reason ------------------------------------
    steps = [(e.from_state, e.to_state, e.reason) for e in events]
    assert steps[0][:2] == ("closed", "open") and steps[0][2] in {
        "consecutive_failures",
        "failure_rate",
    }
    for before, after in itertools.pairwise(steps):
        assert before[1] == after[0], f"breaker steps do not chain: {steps}"
    allowed = {
        ("closed", "open"): {"consecutive_failures", "failure_rate"},
        ("open", "half_open"): {"open_timeout_elapsed"},
        ("half_open", "open"): {"probe_failed"},
        ("half_open", "closed"): {"probe_succeeded"},
    }
    for step in steps:
        assert step[2] in allowed[step[:2]], step
    assert ("open", "half_open", "open_timeout_elapsed") in steps
    assert steps[-1] == ("half_open", "closed", "probe_succeeded")
    assert {e.daemon_id for e in events} == {daemon_id}
    # Its audit rows name the same daemon, those that came through the spool too.
    assert {r.daemon_id for r in rows} == {daemon_id}
    assert final_state is BreakerState.CLOSED

    # -- what the outage produced came through the spool ------------------------------
    spooled: list[tuple[str, dict[str, Any]]] = run["spooled"]
    spooled_events = {str(r["id"]): r for k, r in spooled if k == "breaker"}
    spooled_tx = {str(r["id"]) for k, r in spooled if k == "tx"}
    assert ("closed", "open") in {(r["from_state"], r["to_state"]) for r in spooled_events.values()}
    assert set(spooled_events) <= {str(e.id) for e in events}
    during = {o.transaction_id for o in outcomes.values() if o.phase == "during"}
    assert during <= spooled_tx, "a call answered during the outage was not spooled"
    assert spooled_tx <= set(per_id)
    assert run["spooled_stats"].spooled == len(spooled) and not run["spooled_stats"].database_up
    assert audit.spooled == 0 and audit.database_up
    assert audit.spooled_total >= len(spooled) and audit.write_failures_total >= 1
    assert audit.queued == 0
