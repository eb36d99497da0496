"""The official MCP Python SDK's WebSocket client (``mcp`` 1.x; 2.x dropped it) talks to
the daemon: initialize, list tools, call one, read a stored result as a resource."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.tools import generate_json
from tests.helpers.daemon import ThreadDaemon, thread_daemon

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
def sdk_websocket() -> Any:
    """The SDK's WebSocket client module; skips loudly without it, except in CI
    (``CI=true``), where its absence fails the test (as a missing PostgreSQL does)."""
    try:
        return importlib.import_module("mcp.client.websocket")
    except ImportError as exc:
        message = f"the MCP SDK's WebSocket client is not importable (mcp<2 ships it): {exc}"
        if IN_CI:
            pytest.fail(f"CI=true requires it: {message}", pytrace=False)
        pytest.skip(f"SKIPPING: {message}")


pytestmark = pytest.mark.filterwarnings(
    "ignore:The WebSocket client transport is deprecated:DeprecationWarning"
)


@pytest.fixture
def mcp_daemon(tmp_path: Path) -> Iterator[ThreadDaemon]:
    """Auth on (the SDK's client sends no headers: the token goes in the query string);
    a 64 KiB threshold so a 200 KB result is stored yet fits one resources/read."""
    with thread_daemon(
        tmp_path,
        bustrail_auth_disabled=False,
        bustrail_auth_tokens="sdk-token=sdk",
        message_bus_threshold_bytes=64 * 1024,
    ) as daemon:
        yield daemon


def test_the_official_mcp_client_works_end_to_end(
    sdk_websocket: Any, mcp_daemon: ThreadDaemon
) -> None:
    from mcp import ClientSession, McpError, types

    url = f"{mcp_daemon.url}?token=sdk-token"

    async def scenario() -> dict[str, Any]:
        async with (
            sdk_websocket.websocket_client(url) as (read, write),
            ClientSession(read, write) as session,
        ):
            init = await session.initialize()
            tools = await session.list_tools()
            small = await session.call_tool("echo", {"text": "hello from the SDK"})
            failed = await session.call_tool("fail", {"message": "on purpose"})
            stored = await session.call_tool("generate", {"size": 200_000, "seed": 4})
            links = [c for c in stored.content if isinstance(c, types.ResourceLink)]
            assert len(links) == 1, stored.content
            read_back = await session.read_resource(links[0].uri)
            too_big = await session.call_tool("generate", {"size": 3_000_000})
            big_link = next(c for c in too_big.content if isinstance(c, types.ResourceLink))
            with pytest.raises(McpError) as refused:  # too large for one message
                await session.read_resource(big_link.uri)
            after = await session.call_tool("echo", {"text": "still connected"})
            return {
                "init": init,
                "tools": tools,
                "small": small,
                "failed": failed,
                "stored": stored,
                "read_back": read_back,
                "refused": refused.value,
                "after": after,
            }

    out = asyncio.run(scenario())
    assert out["init"].serverInfo.name == "bustrail"
    names = {tool.name for tool in out["tools"].tools}
    assert {"echo", "generate", "sleep", "fail", "read_file"} <= names
    assert out["small"].isError is False
    assert out["small"].content[0].text == "hello from the SDK"
    assert out["failed"].isError is True and out["failed"].content[0].text == "on purpose"
    meta = (out["stored"].meta or {})["bustrail"]
    assert meta["route"] == "store"
    (contents,) = out["read_back"].contents
    assert contents.text == generate_json(200_000, 4)
    assert out["refused"].error.code == -32001
    assert "GET /v1/transactions/" in out["refused"].error.message
    assert out["after"].content[0].text == "still connected"
