"""Helpers for the gateway tests: the FastMCP test server as an upstream, daemons that
front it (in this process, or ``bustrail serve --upstream`` in a subprocess), calls.

Nothing is faked: the upstream is a real stdio MCP server written with the official SDK,
the daemon is the real one, calls go over a real WebSocket and downloads over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bus.settings import load_settings
from bus.telemetry import Telemetry
from daemon.client import CallResult, Client
from daemon.gateway import UpstreamSpec
from tests.helpers.daemon import ThreadDaemon

UPSTREAM_SERVER = Path(__file__).with_name("upstream_server.py")


def upstream_spec(name: str = "up") -> UpstreamSpec:
    """The FastMCP test server as upstream ``name``."""
    return UpstreamSpec(name=name, command=sys.executable, args=(str(UPSTREAM_SERVER), name))


def upstream_command(name: str = "up") -> str:
    """The same, as the COMMAND of ``--upstream NAME=COMMAND`` (shell quoting)."""
    return shlex.join([sys.executable, str(UPSTREAM_SERVER), name])


@contextlib.contextmanager
def gateway_daemon(
    tmp_path: Path,
    upstreams: list[UpstreamSpec],
    *,
    telemetry: Telemetry | None = None,
    **overrides: Any,
) -> Iterator[ThreadDaemon]:
    """A daemon in this process fronting ``upstreams``; ``overrides`` are settings."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'bustrail.db'}",
        "bustrail_spool_dir": tmp_path / "spool",
        "bustrail_auth_disabled": True,
        "bustrail_files_root": tmp_path,
    }
    values.update(overrides)
    kwargs: dict[str, Any] = {"upstreams": upstreams}
    if telemetry is not None:
        kwargs["telemetry"] = telemetry
    daemon = ThreadDaemon(load_settings(_env_file=None, **values), **kwargs)
    try:
        yield daemon
    finally:
        daemon.stop()


def call(
    url: str,
    tool: str,
    arguments: dict[str, Any] | None = None,
    *,
    meta: dict[str, Any] | None = None,
    **connect: Any,
) -> CallResult:
    """One tools/call on a fresh connection."""

    async def run() -> CallResult:
        async with await Client.connect(url, **connect) as client:
            return await client.call(tool, arguments or {}, meta=meta)

    return asyncio.run(run())


def fetch(url: str, transaction_id: str) -> bytes:
    """A stored result over HTTP (GET /v1/transactions/ID), its SHA-256 verified."""

    async def run() -> bytes:
        async with await Client.connect(url) as client:
            data = await client.fetch(transaction_id)
            assert isinstance(data, bytes)
            return data

    return asyncio.run(run())


def tool_names(url: str) -> set[str]:
    async def run() -> set[str]:
        async with await Client.connect(url) as client:
            return {t["name"] for t in await client.list_tools()}

    return asyncio.run(run())


def texts(result: CallResult) -> list[str]:
    return [c["text"] for c in result.content if c.get("type") == "text"]


def readyz(http: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{http}/readyz", timeout=30)
    return response.status_code, response.json()


def metric(http: str, name: str, **labels: str) -> float | None:
    """One sample from a real /metrics scrape (None when absent)."""
    text = httpx.get(f"{http}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
