"""Tenant isolation in time: is another tenant's transaction id told apart from one that
does not exist by how long the answer takes?

A daemon with two tenants (auth on) stores results for ``acme``; ``beta`` then asks for
them, and for ids that were never issued (fresh UUIDv7s, the same shape), over HTTP
(``GET /v1/transactions/<id>``) and over WebSocket (``resources/read``), the two kinds of
request alternating one by one on one kept-alive connection. The answers must be the same
bytes (checked); the figure is how far apart their median latencies are:
``max(other / unknown, unknown / other)``, 1.0 meaning no difference at all (lower is
better). ``python -m bench isolation`` runs it alone.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable

import httpx
from websockets.sync.client import connect

from bench._servers import Daemon, stopping
from bench.common import BenchResult, print_results, scaled
from bus.db import new_transaction_id
from daemon.client import Client

STORED = scaled(20, minimum=2)  # acme's stored results
REQUESTS = scaled(2_000, minimum=20)  # of each kind, per protocol
TARGET = 1.25  # the farther median may be at most 25% off the nearer one
TOKENS = {"acme": "acme-token", "beta": "beta-token"}


def _store_for_acme(url: str) -> list[str]:
    async def run() -> list[str]:
        async with await Client.connect(url, token=TOKENS["acme"]) as client:
            ids = []
            for seed in range(STORED):
                result = await client.call("generate", {"size": 4_000, "seed": seed})
                assert result.route == "store" and result.transaction_id, result
                ids.append(result.transaction_id)
            return ids

    return asyncio.run(run())


def _alternate(
    ask: Callable[[str], str], others: list[str], unknown: list[str]
) -> tuple[list[float], list[float]]:
    """Latencies of asking for ``others`` and ``unknown`` ids, one of each in turn
    (which goes first alternates too); the answers of a pair must be equal."""
    other_s: list[float] = []
    unknown_s: list[float] = []
    for i in range(REQUESTS):
        pair = [(others[i % len(others)], other_s), (unknown[i % len(unknown)], unknown_s)]
        answers = []
        for tx_id, into in pair if i % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            answer = ask(tx_id)
            into.append(time.perf_counter() - start)
            answers.append(answer.replace(tx_id, "<id>"))
        assert answers[0] == answers[1], answers  # not found, word for word
    return other_s, unknown_s


def _result(name: str, what: str, other_s: list[float], unknown_s: list[float]) -> BenchResult:
    other, unknown = statistics.median(other_s), statistics.median(unknown_s)
    return BenchResult(
        name,
        max(other / unknown, unknown / other),
        target=TARGET,
        lower_is_better=True,
        details={
            "other_tenant_us": f"{other * 1e6:.0f}",
            "unknown_us": f"{unknown * 1e6:.0f}",
            "requests": f"{REQUESTS:,} each",
            "what": what,
        },
    )


def run() -> list[BenchResult]:
    daemon = Daemon(
        bustrail_auth_disabled="false",
        bustrail_auth_tokens=",".join(f"{t}={tenant}" for tenant, t in TOKENS.items()),
        message_bus_threshold_bytes=1024,
    )
    with stopping(daemon):
        others = _store_for_acme(daemon.url)
        unknown = [str(new_transaction_id()[0]) for _ in others]
        beta = {"Authorization": f"Bearer {TOKENS['beta']}"}

        with httpx.Client(base_url=daemon.http, headers=beta, timeout=30) as http:

            def fetch(tx_id: str) -> str:
                response = http.get(f"/v1/transactions/{tx_id}")
                assert response.status_code == 404, response.status_code
                return f"{response.status_code} {response.text}"

            http_other, http_unknown = _alternate(fetch, others, unknown)

        with connect(daemon.url, additional_headers=beta, max_size=2**24) as ws:
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}))
            ws.recv()
            numbers = iter(range(1, 10**9))

            def read(tx_id: str) -> str:
                number = next(numbers)
                uri = f"bustrail://transactions/{tx_id}"
                ws.send(
                    json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": number,
                            "method": "resources/read",
                            "params": {"uri": uri},
                        }
                    )
                )
                answer = json.loads(ws.recv())
                assert "error" in answer, answer
                return json.dumps(answer["error"], sort_keys=True)

            ws_other, ws_unknown = _alternate(read, others, unknown)
    return [
        _result(
            "isolation_http_404",
            "GET /v1/transactions/<id> as beta: acme's ids vs ids never issued",
            http_other,
            http_unknown,
        ),
        _result(
            "isolation_ws_not_found",
            "resources/read as beta: acme's ids vs ids never issued",
            ws_other,
            ws_unknown,
        ),
    ]


if __name__ == "__main__":
    print_results("bench_isolation", run())
