"""A stdio transport for the official ``mcp`` ClientSession, fit for large results.

The SDK's own ``stdio_client`` (mcp 1.x) splits its buffer anew for every 64 KB chunk
it reads, which is quadratic in the length of one message: a 24 MB tool result took
21 s to arrive, of which the upstream needed 1.2 s to produce it (measured here). This
transport keeps the SDK's protocol and shutdown sequence (close stdin, wait, then
terminate) but finds newlines in a growing ``bytearray`` (linear) and parses each large
message in a worker thread, so the daemon's event loop keeps serving other clients.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any, TextIO

import anyio
import anyio.to_thread
from anyio.abc import Process
from mcp import StdioServerParameters
from mcp import types as mcp_types
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage

__all__ = ["stdio_transport"]

_READ = 1 << 20
_PARSE_IN_THREAD = 256 * 1024  # smaller messages are parsed inline: a thread hop costs more
_TERMINATE_AFTER = 2.0


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(mcp_types.JSONRPCMessage.model_validate_json(line))
    except Exception as exc:  # the session receives it and logs it, as the SDK does
        return exc


@contextlib.asynccontextmanager
async def stdio_transport(
    server: StdioServerParameters, errlog: TextIO
) -> AsyncIterator[tuple[Any, Any]]:
    """Spawn the server; yield (read_stream, write_stream) for ``ClientSession``."""
    env = {**get_default_environment(), **(server.env or {})}
    try:
        process = await anyio.open_process(
            [server.command, *server.args],
            env=env,
            stderr=errlog,
            cwd=server.cwd,
            start_new_session=True,
        )
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # uvloop leaves the name out
            raise type(exc)(exc.errno, exc.strerror, server.command) from exc
        raise
    # Made once the process runs: a command that cannot start leaves no stream unclosed.
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def stdout_reader() -> None:
        assert process.stdout is not None
        buffer = bytearray()
        async with read_writer:
            with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
                while True:
                    chunk = await process.stdout.receive(_READ)
                    start = len(buffer)
                    buffer += chunk
                    while (end := buffer.find(b"\n", start)) != -1:
                        line = bytes(buffer[:end])
                        del buffer[: end + 1]
                        start = 0
                        if not line.strip():
                            continue
                        if len(line) > _PARSE_IN_THREAD:
                            message = await anyio.to_thread.run_sync(_parse, line)
                        else:
                            message = _parse(line)
                        await read_writer.send(message)

    async def stdin_writer() -> None:
        assert process.stdin is not None
        async with write_reader:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                async for session_message in write_reader:
                    data = session_message.message.model_dump_json(by_alias=True, exclude_none=True)
                    await process.stdin.send(data.encode() + b"\n")

    async with anyio.create_task_group() as tg, process:
        tg.start_soon(stdout_reader)
        tg.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            await _shutdown(process)
            for stream in (read_stream, write_stream, read_writer, write_reader):
                await stream.aclose()
            tg.cancel_scope.cancel()


async def _shutdown(process: Process) -> None:
    """The MCP stdio shutdown: close stdin, wait, then SIGTERM and SIGKILL the group."""
    if process.stdin is not None:
        with contextlib.suppress(Exception):
            await process.stdin.aclose()
    with anyio.move_on_after(_TERMINATE_AFTER) as scope:
        await process.wait()
    if not scope.cancelled_caught:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with anyio.move_on_after(_TERMINATE_AFTER) as scope:
            await process.wait()
        if not scope.cancelled_caught:
            return
