"""``bustrail bridge``: a stdio MCP server that is a bustrail daemon, for agents that only
launch stdio servers.

Most agent harnesses start their MCP servers as subprocesses and speak newline-delimited
JSON-RPC over stdin and stdout. The bridge is such a subprocess: each line it reads is
sent to the daemon's ``/ws`` as one text frame, verbatim, and each frame the daemon sends
back is written as one line. The daemon does all the protocol work (it answers a
malformed line with ``-32700``, like any frame); the agent gets claim checks, previews,
audit records and traces without knowing it talks to a daemon.

The bridge keeps the agent's session across a lost connection (the daemon restarted,
the network dropped): calls in flight at that moment are answered with a clear error
(they may or may not have run), the bridge reconnects with backoff and replays the
agent's ``initialize`` and ``notifications/initialized``, and the agent goes on without
noticing more than those errors. Requests that arrive while it is away wait for the
connection (up to ``--wait`` seconds), then get an error.

    claude mcp add bustrail -- bustrail bridge ws://127.0.0.1:8765/ws --token TOKEN
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from typing import Any, BinaryIO

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

__all__ = ["CONNECTION_LOST", "Bridge"]

log = logging.getLogger(__name__)

CONNECTION_LOST = -32000  # JSON-RPC "server error": the daemon could not be reached
POLICY_VIOLATION = 1008  # the daemon's close code for a bad token or origin
_REPLAY_ID = "bustrail-bridge-initialize"


class Bridge:
    """Relay stdin lines to one WebSocket and frames back to stdout, reconnecting."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        wait_seconds: float = 30.0,
        max_backoff: float = 10.0,
        stdin: BinaryIO | None = None,
        stdout: BinaryIO | None = None,
    ) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.wait_seconds = wait_seconds
        self.max_backoff = max_backoff
        self._stdin = stdin or sys.stdin.buffer
        self._stdout = stdout or sys.stdout.buffer
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._in_flight: dict[Any, str] = {}  # request id -> method, sent and unanswered
        self._initialize: str | None = None  # the agent's, replayed after a reconnect
        self._initialized: str | None = None
        self._closing = False
        self.reconnects = 0
        self.refused: str | None = None  # why the daemon refused us, once it has

    # -- the two directions ---------------------------------------------------------------
    async def run(self) -> int:
        """Relay until stdin ends (0), or 1 when the daemon cannot be reached at first
        (within ``wait_seconds``: the agent may start before the daemon does)."""
        deadline = asyncio.get_running_loop().time() + self.wait_seconds
        while True:
            try:
                await self._connect(replay=False)
                break
            except websockets.InvalidStatus as exc:  # 401, 404: waiting will not help
                log.error("bridge: the daemon at %s refused the connection: %s", self.url, exc)
                return 1
            except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    log.error("bridge: cannot reach the bustrail daemon at %s: %s", self.url, exc)
                    return 1
            await asyncio.sleep(0.5)
        agent = asyncio.create_task(self._from_agent(), name="bridge-from-agent")
        daemon = asyncio.create_task(self._from_daemon(), name="bridge-from-daemon")
        try:
            # The agent ending its input ends the bridge; so does a daemon that refuses it.
            done, _ = await asyncio.wait({agent, daemon}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("bridge: stopped by an unexpected error", exc_info=task.exception())
                    return 1
        finally:
            self._closing = True
            for task in (agent, daemon):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._ws is not None:
                await self._ws.close()
        return 1 if self.refused else 0

    async def _from_agent(self) -> None:
        # stdin may be a pipe, a file or a terminal: a thread of its own reads it (a
        # daemon thread, so a refused bridge can exit while it waits for a line).
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[bytes] = asyncio.Queue()

        def read() -> None:
            # os.read on the descriptor, not the buffered file: a daemon thread blocked in
            # a buffered read aborts the interpreter at exit.
            fd = self._stdin.fileno()
            buffer = bytearray()
            scanned = 0  # no newline before here: a long line is scanned once (linear)
            while chunk := os.read(fd, 1 << 16):
                buffer += chunk
                while (end := buffer.find(b"\n", scanned)) >= 0:
                    loop.call_soon_threadsafe(lines.put_nowait, bytes(buffer[: end + 1]))
                    del buffer[: end + 1]
                    scanned = 0
                scanned = len(buffer)
            if buffer.strip():  # a last line without its newline
                loop.call_soon_threadsafe(lines.put_nowait, bytes(buffer))
            loop.call_soon_threadsafe(lines.put_nowait, b"")

        threading.Thread(target=read, name="bridge-stdin", daemon=True).start()
        while raw := await lines.get():
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                await self._send(line)

    async def _send(self, line: str) -> None:
        request_id, method = _request_of(line)
        if method == "initialize":
            self._initialize = line
        elif method == "notifications/initialized":
            self._initialized = line
        if request_id is not None:
            self._in_flight[request_id] = method or ""
        for _ in range(2):  # once more if the connection drops under this very send
            try:
                await asyncio.wait_for(self._connected.wait(), self.wait_seconds)
            except TimeoutError:
                break
            assert self._ws is not None
            try:
                await self._ws.send(line)
                return
            except websockets.ConnectionClosed:
                self._connected.clear()
        if request_id is not None and self._in_flight.pop(request_id, None) is not None:
            self._answer_lost(request_id, f"not sent: no connection for {self.wait_seconds:g}s")

    async def _from_daemon(self) -> None:
        while True:
            assert self._ws is not None
            ws = self._ws
            try:
                async for frame in ws:
                    text = frame if isinstance(frame, str) else frame.decode()
                    self._deliver(text)
            except websockets.ConnectionClosed:
                pass
            if self._closing:
                return
            self._connected.clear()
            code, reason = ws.close_code, ws.close_reason or ""
            if code == POLICY_VIOLATION:
                # Refused (a bad token, an origin not allowed): a new connection would be
                # refused the same way.
                self.refused = reason or "policy violation"
                log.error("bridge: the daemon at %s refused the connection: %s", self.url,
                          self.refused)  # fmt: skip
                self._fail_in_flight(f"the bustrail daemon refused the connection: {self.refused}")
                return
            # 1006: no close frame at all (a reset, a dead peer); anything else says why.
            why = f" (close code {code}{', ' + reason if reason else ''})"
            why = "" if code in (None, 1006) else why
            self._fail_in_flight(
                f"the connection to the bustrail daemon was lost{why} during {{method}}; "
                "it may or may not have run (a call's audit record says which)"
            )
            await self._reconnect()

    def _deliver(self, text: str) -> None:
        request_id = _response_id(text)
        if request_id == _REPLAY_ID:
            return  # the answer to a replayed initialize: the agent has had its own
        if request_id is not None:
            self._in_flight.pop(request_id, None)
        # JSON escapes newlines inside strings: any left are whitespace, and one message
        # must stay one line.
        self._write(text.replace("\n", "").replace("\r", "") if "\n" in text else text)

    def _write(self, text: str) -> None:
        self._stdout.write(text.encode() + b"\n")
        self._stdout.flush()

    # -- losing and finding the daemon ------------------------------------------------------
    def _fail_in_flight(self, template: str) -> None:
        """Answer every request still waiting with an error; ``{method}`` names it."""
        lost, self._in_flight = self._in_flight, {}
        for request_id, method in lost.items():
            self._answer_lost(request_id, template.format(method=method or "the call"))
        if not self.refused:
            log.warning(
                "bridge: lost the connection to %s (%d call(s) in flight failed); reconnecting",
                self.url,
                len(lost),
            )

    def _answer_lost(self, request_id: Any, why: str) -> None:
        error = {"code": CONNECTION_LOST, "message": why, "data": {"bustrail": "bridge"}}
        self._write(json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}))

    async def _reconnect(self) -> None:
        backoff = 0.2
        while not self._closing:
            try:
                await self._connect(replay=True)
                self.reconnects += 1
                log.warning("bridge: reconnected to %s", self.url)
                return
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed,
                    TimeoutError) as exc:  # fmt: skip
                log.info("bridge: %s unreachable (%s); retrying in %.1fs", self.url, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _connect(self, *, replay: bool) -> None:
        ws = await websockets.connect(
            self.url,
            additional_headers=self.headers,
            subprotocols=[Subprotocol("mcp")],
            max_size=None,  # the daemon sizes what it sends to the 1 MiB default cap
            open_timeout=10,
        )
        if replay and self._initialize is not None:
            # A new connection is a new MCP session: initialize it as the agent did.
            message = json.loads(self._initialize)
            message["id"] = _REPLAY_ID
            await ws.send(json.dumps(message))
            while _response_id(str(await asyncio.wait_for(ws.recv(), 10))) != _REPLAY_ID:
                pass  # nothing else can come before the answer on a fresh connection
            if self._initialized is not None:
                await ws.send(self._initialized)
        self._ws = ws
        self._connected.set()


def _request_of(line: str) -> tuple[Any, str | None]:
    """(id, method) of a request line; (None, method) for a notification; (None, None)
    for anything else, which the daemon answers or refuses itself."""
    try:
        message = json.loads(line)
    except ValueError:
        return None, None
    if not isinstance(message, dict):
        return None, None
    method = message.get("method")
    method = method if isinstance(method, str) else None
    request_id = message.get("id")
    if method is None or isinstance(request_id, dict | list | bool):
        return None, method
    return request_id, method


def _response_id(text: str) -> Any:
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if isinstance(message, dict) and "method" not in message:
        return message.get("id")
    return None
