"""A stdio MCP server written with the official ``mcp`` SDK (FastMCP), for the gateway
tests: the kind of server people already run, knowing nothing of bustrail.

Run as ``python upstream_server.py [NAME]``. Its results are deterministic, so a test can
compute the bytes it expects (``json_rows``, ``text_of``) by importing this module.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio
from mcp.server.fastmcp import Context, FastMCP, Image

NAME = sys.argv[1] if len(sys.argv) > 1 and __name__ == "__main__" else "upstream-test"
STARTED = "upstream test server started"

mcp = FastMCP(NAME)


def text_of(size: int) -> str:
    """``size`` bytes of UTF-8 text: numbered lines, some of them not ASCII."""
    line = 0
    parts: list[str] = []
    total = 0
    while total < size:
        piece = f"line {line:08d}: the quick brown fox — jumps over the lazy dog ✓\n"
        parts.append(piece)
        total += len(piece.encode())
        line += 1
    return "".join(parts).encode()[:size].decode("utf-8", errors="ignore")


def json_rows(size: int) -> str:
    """A JSON list of records of at least ``size`` bytes (as ``json.dumps`` writes it)."""
    rows = []
    total = 0
    i = 0
    while total < size:
        row = f'{{"id": {i}, "name": "row-{i}", "tags": ["a", "b", "ü"], "score": {i % 97 / 7!r}}}'
        rows.append(row)
        total += len(row) + 2
        i += 1
    return "[" + ", ".join(rows) + "]"


@mcp.tool(structured_output=False)
def text(size: int) -> str:
    """``size`` bytes of text."""
    return text_of(size)


@mcp.tool(structured_output=False)
def rows(size: int) -> str:
    """A JSON list of about ``size`` bytes."""
    return json_rows(size)


@mcp.tool(structured_output=False)
def sleepy(seconds: float, pid_file: str) -> str:
    """Write this server's pid to ``pid_file``, then sleep."""
    with open(pid_file + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pid_file + ".part", pid_file)
    time.sleep(seconds)
    return "slept"


@mcp.tool(structured_output=False)
async def waits(seconds: float, marker: str) -> str:
    """Touch ``marker.started``, wait; touch ``marker.cancelled`` if cancelled meanwhile."""
    Path(marker + ".started").touch()
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        Path(marker + ".cancelled").touch()
        raise
    return "waited"


def added() -> str:
    """A tool that ``grow`` adds."""
    return "added"


@mcp.tool(structured_output=False)
async def grow(ctx: Context) -> str:  # type: ignore[type-arg]
    """Add the tool ``added`` and say the tools changed (``notifications/tools/list_changed``)."""
    mcp.add_tool(added, structured_output=False)
    await ctx.session.send_tool_list_changed()
    return "grown"


@mcp.tool(structured_output=False)
async def shrink(ctx: Context) -> str:  # type: ignore[type-arg]
    """Remove the tool ``added`` and say the tools changed."""
    mcp.remove_tool("added")
    await ctx.session.send_tool_list_changed()
    return "shrunk"


@mcp.tool(structured_output=False)
def die() -> str:
    """Exit the whole server at once, mid-call."""
    os._exit(3)


@mcp.tool(structured_output=False)
def empty() -> str:
    """A success with nothing in it."""
    return ""


@mcp.tool(structured_output=False)
def error_text() -> str:
    """A failure dressed up as a success."""
    return "Error: rate limited by the backend, try again later"


@mcp.tool(structured_output=False)
def boom(message: str) -> str:
    """Raise: FastMCP turns it into an isError result."""
    raise ValueError(message)


@mcp.tool(structured_output=False)
def whoami() -> str:
    """The name this server was started with."""
    return NAME


@mcp.tool()
def echo(text: str) -> str:
    """``text`` back (named like a bustrail built-in, as many servers' tools are)."""
    return text


def png_bytes(size: int) -> bytes:
    """``size`` bytes that start like a PNG (nobody decodes them)."""
    return (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (size // 256 + 1))[:size]


@mcp.tool()
def picture(size: int) -> Image:
    """An image of ``size`` bytes."""
    return Image(data=png_bytes(size), format="png")


@mcp.tool(structured_output=False)
def shout(line: str) -> str:
    """Write ``line`` to stderr."""
    print(line, file=sys.stderr, flush=True)
    return "ok"


if __name__ == "__main__":
    print(f"{STARTED}: {NAME} pid {os.getpid()}", file=sys.stderr, flush=True)
    mcp.run()
