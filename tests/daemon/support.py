"""Helpers for the daemon tests: raw WebSocket clients, audit queries, metrics.

Nothing here fakes the daemon: every helper talks to a real server over a real socket
or reads the real database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import sqlalchemy as sa
import websockets
from prometheus_client.parser import text_string_to_metric_families

from bus.db import Database, as_utc
from bus.records import TRANSACTION_COLUMNS, archive, transactions

__all__ = [
    "ONE_MIB",
    "TOOLS_FOR_TESTS",
    "RawClient",
    "audit_rows",
    "calls_in_flight",
    "chunk_count",
    "database_url",
    "raw_client",
    "refused_counts",
    "wait_until",
]

ONE_MIB = 1024 * 1024
TOOLS_FOR_TESTS = "tests.daemon.tools_for_tests"  # for tool_modules= / --tools
_ids = itertools.count(1_000_000)


class RawClient:
    """A bare ``websockets`` connection speaking JSON-RPC by hand (no bustrail client)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def receive(self, timeout: float = 60) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(frame, str), "the daemon sends text frames"
        message = json.loads(frame)
        assert isinstance(message, dict)
        return message

    async def request(
        self, method: str, params: Any = None, *, request_id: Any = None
    ) -> dict[str, Any]:
        """Send one request; return the response with its id (other frames are skipped)."""
        request_id = next(_ids) if request_id is None else request_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        while True:
            response = await self.receive()
            if response.get("id") == request_id:
                return response

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.request("tools/call", {"name": tool, "arguments": arguments})


@contextlib.asynccontextmanager
async def raw_client(
    url: str,
    *,
    token: str | None = None,
    max_size: int | None = ONE_MIB,
    initialize: dict[str, Any] | None = None,
    **connect_kwargs: Any,
) -> AsyncIterator[RawClient]:
    """A raw client with the ``websockets`` default cap (1 MiB) unless told otherwise.

    ``initialize``: the params of an ``initialize`` request to send first (None: none,
    so the daemon assumes the 1 MiB default).
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with websockets.connect(
        url, additional_headers=headers, max_size=max_size, open_timeout=10, **connect_kwargs
    ) as ws:
        client = RawClient(ws)
        if initialize is not None:
            response = await client.request("initialize", initialize)
            assert "result" in response, response
        yield client


def database_url(daemon: Any) -> str:
    """The database URL a (thread) daemon runs on."""
    return str(daemon.runtime.settings.database_url.get_secret_value())


def audit_rows(db_url: str, **equal: Any) -> list[dict[str, Any]]:
    """Transaction rows (live and archived) whose columns equal ``equal``, oldest first.

    Read as the schema owner, so row-level security does not hide any tenant.
    """
    db = Database(db_url)
    try:
        rows: list[dict[str, Any]] = []
        with db.begin() as conn:
            for table in (transactions, archive):
                query = sa.select(*(table.c[name] for name in TRANSACTION_COLUMNS))
                for name, value in equal.items():
                    if name == "id" and isinstance(value, str):
                        value = uuid.UUID(value)
                    query = query.where(table.c[name] == value)
                for row in conn.execute(query).mappings():
                    values = dict(row)
                    for key in ("created_at", "stored_at", "delivered_at", "first_fetched_at"):
                        values[key] = as_utc(values[key])
                    values["archived"] = table is archive
                    rows.append(values)
        return sorted(rows, key=lambda r: r["created_at"])
    finally:
        db.dispose()


def chunk_count(db_url: str, transaction_id: str | uuid.UUID) -> int:
    from bus.store import chunks

    db = Database(db_url)
    try:
        with db.begin() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(chunks)
                    .where(chunks.c.transaction_id == uuid.UUID(str(transaction_id)))
                ).scalar_one()
            )
    finally:
        db.dispose()


def refused_counts(http_base: str) -> dict[str, float]:
    """``bustrail_refused_frames_total`` by code, scraped from the daemon's /metrics."""
    response = httpx.get(f"{http_base}/metrics", timeout=10)
    response.raise_for_status()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != "bustrail_refused_frames":
            continue
        for sample in family.samples:
            if sample.name == "bustrail_refused_frames_total":
                counts[sample.labels["code"]] = sample.value
    return counts


def calls_in_flight(http_base: str) -> float:
    """``bustrail_tool_calls_in_flight`` from the daemon's /metrics."""
    response = httpx.get(f"{http_base}/metrics", timeout=10)
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "bustrail_tool_calls_in_flight":
                return sample.value
    raise AssertionError("no bustrail_tool_calls_in_flight in /metrics")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``condition`` until it holds (a bounded wait for a background effect)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
