"""``bustrail bridge``: the daemon as a stdio MCP server, for agents that only launch
stdio servers. The bridge runs as the real command; the agent side is the official
``mcp`` SDK's stdio client, or raw lines on the bridge's stdin; the daemon is real."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from analysis.tcpproxy import TCPProxy
from tests.daemon.support import audit_rows, wait_until
from tests.helpers.daemon import ThreadDaemon, thread_daemon

BUSTRAIL = str(Path(sys.executable).with_name("bustrail"))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[ThreadDaemon]:
    with thread_daemon(tmp_path, bustrail_audit_flush_seconds=0.05) as running:
        yield running


def test_an_mcp_stdio_client_calls_tools_through_the_bridge(daemon: ThreadDaemon) -> None:
    async def agent() -> dict[str, Any]:
        params = StdioServerParameters(command=BUSTRAIL, args=["bridge", daemon.url])
        async with (
            stdio_client(params) as (read, write),
            ClientSession(read, write) as session,
        ):
            init = await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
            small = await session.call_tool("echo", {"text": "through the bridge"})
            big = await session.call_tool("generate", {"size": 3_000_000})
            return {"init": init, "tools": tools, "small": small, "big": big}

    got = asyncio.run(agent())
    assert got["init"].serverInfo.name == "bustrail"
    assert {"echo", "generate", "read_file"} <= got["tools"]
    assert [c.text for c in got["small"].content] == ["through the bridge"]

    # A result over the threshold reaches the agent as a claim check with a preview.
    kinds = [c.type for c in got["big"].content]
    assert "resource_link" in kinds and "text" in kinds, kinds
    link = next(c for c in got["big"].content if c.type == "resource_link")
    transaction_id = str(link.uri).rsplit("/", 1)[-1]

    daemon.runtime.audit.flush()
    db_url = daemon.runtime.settings.database_url.get_secret_value()
    (row,) = audit_rows(db_url, id=transaction_id)
    assert row["tool"] == "generate" and row["route"] == "store"
    assert row["size"] >= 3_000_000


class _Bridge:
    """``bustrail bridge`` as a subprocess fed raw lines; its output lines collected."""

    def __init__(self, url: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [BUSTRAIL, "bridge", url, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(json.loads(raw))  # every line the bridge writes is JSON

    def send(self, message: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        text = message if isinstance(message, str) else json.dumps(message)
        self.process.stdin.write(text.encode() + b"\n")
        self.process.stdin.flush()

    def answer(self, request_id: Any) -> dict[str, Any]:
        def arrived() -> bool:
            return any(line.get("id") == request_id for line in self.lines)

        wait_until(arrived, f"the answer to request {request_id!r}")
        return next(line for line in self.lines if line.get("id") == request_id)

    def close(self) -> tuple[int, str]:
        """End its input (the bridge then exits 0); its exit code and stderr."""
        try:
            _out, err = self.process.communicate(timeout=30)
        finally:
            self.process.kill()
            self._reader.join(10)
        return self.process.returncode, err.decode()


def _initialize(bridge: _Bridge) -> None:
    bridge.send(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-agent", "version": "1"},
            },
        }
    )
    assert bridge.answer(1)["result"]["serverInfo"]["name"] == "bustrail"
    bridge.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def _call(bridge: _Bridge, request_id: int, tool: str, arguments: dict[str, Any]) -> None:
    bridge.send(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
    )


def test_a_malformed_line_gets_the_daemons_parse_error_and_the_session_goes_on(
    daemon: ThreadDaemon,
) -> None:
    bridge = _Bridge(daemon.url)
    _initialize(bridge)
    bridge.send("{not json")
    wait_until(lambda: any(line.get("error") for line in bridge.lines), "a parse error")
    (refused,) = [line for line in bridge.lines if line.get("error")]
    assert refused["error"]["code"] == -32700 and refused["id"] is None
    _call(bridge, 2, "echo", {"text": "still here"})
    assert bridge.answer(2)["result"]["content"] == [{"type": "text", "text": "still here"}]
    code, stderr = bridge.close()
    assert code == 0, stderr


def test_a_lost_connection_fails_the_calls_in_flight_and_the_session_comes_back(
    daemon: ThreadDaemon,
) -> None:
    host, port = daemon.url.split("//")[1].split("/")[0].split(":")
    proxy = TCPProxy(host, int(port))
    try:
        bridge = _Bridge(f"ws://127.0.0.1:{proxy.port}/ws", "--log-level", "info")
        _initialize(bridge)
        _call(bridge, 2, "sleep", {"seconds": 3})
        wait_until(
            lambda: any(s.calls() for s in list(daemon.runtime.sessions)),
            "the call to be running in the daemon",
        )
        proxy.cut()
        lost = bridge.answer(2)
        assert lost["error"]["code"] == -32000
        assert (
            "connection to the bustrail daemon was lost during tools/call"
            in (lost["error"]["message"])
        )
        proxy.restore()

        # The agent does not initialize again: the bridge replayed its initialize.
        _call(bridge, 3, "echo", {"text": "after the outage"})
        assert bridge.answer(3)["result"]["content"] == [
            {"type": "text", "text": "after the outage"}
        ]
        # The agent saw one answer per request, and none to the replayed initialize.
        assert [line.get("id") for line in bridge.lines] == [1, 2, 3]
        code, stderr = bridge.close()
        assert code == 0, stderr
        assert "reconnected" in stderr
    finally:
        proxy.close()


def test_a_token_is_sent_and_a_refusal_is_one_clear_error(tmp_path: Path) -> None:
    with thread_daemon(
        tmp_path, bustrail_auth_disabled=False, bustrail_auth_tokens="agent-token=team-a"
    ) as daemon:
        bridge = _Bridge(daemon.url, "--token", "agent-token")
        _initialize(bridge)
        assert bridge.close()[0] == 0

        # A wrong token: the daemon closes the connection (1008); the bridge says so and
        # exits 1 on its own (the agent's input is still open), no retrying in a loop.
        refused = _Bridge(daemon.url, "--token", "wrong")
        refused.send({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.process.wait(30) == 1
        code, stderr = refused.close()
        assert code == 1
        assert "the daemon at" in stderr and "refused the connection" in stderr, stderr
        assert "token" in stderr, stderr


def test_no_daemon_at_the_url_is_said_after_the_wait(tmp_path: Path) -> None:
    done = subprocess.run(
        [BUSTRAIL, "bridge", "ws://127.0.0.1:9/ws", "--wait", "1"],
        input=b"",
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert b"cannot reach the bustrail daemon at ws://127.0.0.1:9/ws" in done.stderr
