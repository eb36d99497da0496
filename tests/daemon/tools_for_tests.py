"""Tools the tests load with ``--tools tests.daemon.tools_for_tests`` (``tool_modules``)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from daemon.tools import tool


@tool
def digest(data: bytes) -> dict[str, object]:
    """The SHA-256 and length of the bytes received."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}


@tool(name="boom")
def explode(message: str) -> str:
    """Raise a plain exception (not a ToolError)."""
    raise RuntimeError(message)


_arrived: dict[str, int] = {}
_all_here: dict[str, asyncio.Event] = {}


@tool
async def rendezvous(key: str, count: int) -> int:
    """Return once ``count`` calls with this key are running at the same time: calls
    run one after another would never get there (the tool timeout ends them)."""
    _arrived[key] = _arrived.get(key, 0) + 1
    everyone = _all_here.setdefault(key, asyncio.Event())
    if _arrived[key] >= count:
        everyone.set()
    await everyone.wait()
    return _arrived[key]


@tool
async def wait_for_file(path: str) -> str:
    """Return once ``path`` exists: a call the test ends when it chooses."""
    while not Path(path).exists():
        await asyncio.sleep(0.02)
    return f"found {path}"
