"""/readyz through a real store outage: not ready while the breaker is open, even once
the database answers again; ready again when the breaker lets calls through.

The daemon reaches a fresh PostgreSQL database through a TCP proxy; ``cut()`` is a
real outage (connections dropped, new ones refused), during which stored results fail
and open the breaker.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bus.breaker import BreakerState
from bus.db import normalize_url
from daemon.client import Client
from tests.daemon.support import wait_until
from tests.helpers.daemon import ThreadDaemon, thread_daemon
from tests.helpers.tcpproxy import TCPProxy

THRESHOLD = 64 * 1024  # results above it go to the store
# Long enough that the breaker is still open when the test looks right after the
# outage; BUSTRAIL_TEST_TIMEOUT_SCALE stretches it on slow machines.
OPEN_SECONDS = 5.0 * float(os.environ.get("BUSTRAIL_TEST_TIMEOUT_SCALE", "1"))


def _readyz(daemon: ThreadDaemon) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{daemon.http}/readyz", timeout=30)
    return response.status_code, response.json()


def _generate(daemon: ThreadDaemon, seed: int) -> str | None:
    """One call whose result is bound for the store; the route it took."""

    async def call() -> str | None:
        async with await Client.connect(daemon.url) as client:
            result = await client.call("generate", {"size": 2 * THRESHOLD, "seed": seed})
            assert not result.is_error, result.text
            return result.route

    return asyncio.run(call())


@pytest.mark.postgres
def test_readyz_is_503_while_the_breaker_is_open_and_200_after_recovery(
    pg_url: str, tmp_path: Path
) -> None:
    target = sa.engine.make_url(normalize_url(pg_url))
    proxy = TCPProxy(target.host or "127.0.0.1", target.port or 5432)
    proxied = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with thread_daemon(
            tmp_path,
            database_url=proxied,
            message_bus_threshold_bytes=THRESHOLD,
            circuit_breaker_threshold=2,
            circuit_breaker_open_seconds=OPEN_SECONDS,
            circuit_breaker_half_open_calls=1,
            # Only the outage may open the breaker, not a store call slowed by a busy host.
            circuit_breaker_slow_call_seconds=120,
        ) as daemon:
            breaker = daemon.runtime.breaker
            assert breaker is not None
            before = _readyz(daemon)
            assert _generate(daemon, 1) == "store"

            proxy.cut()
            outage_routes = [_generate(daemon, seed) for seed in (2, 3)]
            opened = breaker.state
            during = _readyz(daemon)
            proxy.restore()
            # The database answers again, but the breaker has not let a call through yet.
            breaker_only = _readyz(daemon)

            wait_until(lambda: _readyz(daemon)[0] == 200, "the breaker to let calls through")
            probing = _readyz(daemon)
            recovered_route = _generate(daemon, 4)
            after = _readyz(daemon)
    finally:
        proxy.close()

    assert before == (200, {"ready": True, "checks": {"database": "ok", "breaker": "closed"}})
    assert outage_routes == ["fallback", "fallback"]
    assert opened is BreakerState.OPEN
    status, body = during
    assert (status, body["ready"], body["checks"]["breaker"]) == (503, False, "open")
    assert body["checks"]["database"] != "ok"  # the outage itself shows too
    assert breaker_only == (503, {"ready": False, "checks": {"database": "ok", "breaker": "open"}})
    assert probing == (200, {"ready": True, "checks": {"database": "ok", "breaker": "half_open"}})
    assert recovered_route == "store"  # the probe succeeded: the breaker closed
    assert after == before
