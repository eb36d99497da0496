"""``bustrail serve`` as a real process: SIGTERM during a burst, several daemons on one
PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from daemon.client import Client, ClientError, RPCError
from daemon.tools import generate_json
from tests.daemon.support import TOOLS_FOR_TESTS, audit_rows, calls_in_flight, wait_until
from tests.helpers.daemon import DaemonProcess, daemon_env

MB = 1_000_000
SHUTTING_DOWN = -32009
CANCELLED = -32008


def _ready_status(http: str) -> int:
    try:
        return httpx.get(f"{http}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


@pytest.mark.slow
def test_sigterm_lets_calls_in_flight_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    daemon = DaemonProcess(env, "--tools", TOOLS_FOR_TESTS)
    release = tmp_path / "release"
    try:

        async def burst() -> dict[str, Any]:
            async with (
                await Client.connect(daemon.url) as first,
                await Client.connect(daemon.url) as second,
            ):
                sleeps = [
                    asyncio.ensure_future(
                        (first if i % 2 else second).call("sleep", {"seconds": 1 + (i % 5) * 0.5})
                    )
                    for i in range(50)
                ]
                echoes = [
                    asyncio.ensure_future(first.call("echo", {"text": f"echo {i}"}))
                    for i in range(20)
                ]
                # Holds the drain open until the test has seen it refuse new work.
                hold = asyncio.ensure_future(first.call("wait_for_file", {"path": str(release)}))
                await asyncio.to_thread(
                    wait_until, lambda: calls_in_flight(daemon.http) == 51, "51 calls running"
                )
                daemon.proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(
                    wait_until, lambda: _ready_status(daemon.http) == 503, "draining"
                )
                with pytest.raises(RPCError) as refused:
                    await second.call("echo", {"text": "too late"})
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    async with websockets.connect(daemon.url) as late:
                        await late.recv()
                release.touch()
                results = await asyncio.gather(*sleeps, *echoes, hold, return_exceptions=True)
                return {"results": results, "refused": refused.value, "closed": closed.value}

        out = asyncio.run(burst())
        code = daemon.proc.wait(60)
    finally:
        daemon.stop()
    assert code == 0, daemon.log_path.read_text()
    failures = [r for r in out["results"] if isinstance(r, BaseException)]
    assert not failures, failures
    texts = [r.text for r in out["results"]]
    assert texts[:50] == [f"slept {1 + (i % 5) * 0.5}s" for i in range(50)]
    assert texts[50:] == [*(f"echo {i}" for i in range(20)), f"found {release}"]
    assert out["refused"].code == SHUTTING_DOWN
    assert "shutting down" in out["refused"].message
    assert out["closed"].rcvd is not None and out["closed"].rcvd.code == 1001
    # The audit trail has every call, none left pending.
    rows = audit_rows(env["DATABASE_URL"])
    assert Counter((r["tool"], r["status"]) for r in rows) == {
        ("sleep", "delivered"): 50,
        ("echo", "delivered"): 20,
        ("wait_for_file", "delivered"): 1,
    }


@pytest.mark.slow
def test_calls_past_the_grace_period_get_a_clear_error(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    daemon = DaemonProcess(env, "--grace", "3")
    try:

        async def scenario() -> tuple[list[Any], BaseException | None]:
            async with await Client.connect(daemon.url) as client:
                long = [
                    asyncio.ensure_future(client.call("sleep", {"seconds": 120})) for _ in range(3)
                ]
                short = asyncio.ensure_future(client.call("sleep", {"seconds": 0.5}))
                await asyncio.to_thread(
                    wait_until, lambda: calls_in_flight(daemon.http) == 4, "4 calls running"
                )
                daemon.proc.send_signal(signal.SIGTERM)
                results = await asyncio.gather(*long, short, return_exceptions=True)
                # Once the daemon is gone, a call fails at once with a ClientError.
                await asyncio.to_thread(daemon.proc.wait, 60)
                after: BaseException | None = None
                try:
                    await asyncio.wait_for(client.ping(), 30)
                except (ClientError, TimeoutError) as exc:
                    after = exc
                return results, after

        results, after = asyncio.run(scenario())
        code = daemon.proc.wait(60)
    finally:
        daemon.stop()
    assert code == 0, daemon.log_path.read_text()
    *long, short = results
    for error in long:
        assert isinstance(error, RPCError), error
        assert error.code == CANCELLED and "shutting down" in error.message
    assert not isinstance(short, BaseException) and short.text == "slept 0.5s"
    assert isinstance(after, ClientError), after
    rows = audit_rows(env["DATABASE_URL"], tool="sleep")
    assert Counter((r["status"], r["error_kind"]) for r in rows) == {
        ("failed", "cancelled"): 3,
        ("delivered", None): 1,
    }


@pytest.mark.postgres
@pytest.mark.slow
def test_two_daemons_share_one_postgresql(pg_url: str, tmp_path: Path) -> None:
    env_a = daemon_env(tmp_path / "a", database_url=pg_url)
    env_b = daemon_env(tmp_path / "b", database_url=pg_url)
    for path in (tmp_path / "a", tmp_path / "b"):
        path.mkdir()
    # Started side by side: each start-up is mostly imports and the schema check.
    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(DaemonProcess, env) for env in (env_a, env_b)]
    started = [f.result() for f in starting if f.exception() is None]
    failed = [f.exception() for f in starting if f.exception() is not None]
    if failed:
        for daemon in started:
            daemon.stop()
        raise failed[0]  # type: ignore[misc]
    a, b = started
    try:

        async def scenario() -> dict[str, Any]:
            async with (
                await Client.connect(a.url) as via_a,
                await Client.connect(b.url) as via_b,
            ):
                stored = await via_a.call("generate", {"size": 3 * MB, "seed": 11})
                assert stored.route == "store" and stored.transaction_id
                fetched = await via_b.fetch(stored.transaction_id)
                # An upload through b is an argument through a.
                upload = await via_b.upload(b"uploaded through b " * 50_000)
                echoed = await via_a.call("echo", {"text": upload["uri"]})
                return {
                    "id": stored.transaction_id,
                    "fetched": fetched,
                    "echoed": await via_a.result_bytes(echoed),
                }

        out = asyncio.run(scenario())
    finally:
        a.stop()
        b.stop()
    assert out["fetched"] == generate_json(3 * MB, 11).encode()
    assert out["echoed"] == b"uploaded through b " * 50_000
    (row,) = audit_rows(pg_url, id=out["id"])
    assert (row["status"], row["fetch_count"]) == ("fetched", 1)
