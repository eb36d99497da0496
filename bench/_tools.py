"""Tools the benchmarks load into a daemon (``bustrail serve --tools bench._tools``).

``cached_json`` returns realistic JSON (the built-in ``generate``'s) that was made
before the call, by ``prepare_json``: a call then costs only what the daemon does with
a result (route, store or inline message, audit), not the making of it. That is how
the daemon's own memory growth is told apart from the tool's result, which a tool
returning 100 MB necessarily holds.
"""

from __future__ import annotations

from daemon.tools import ToolResult, generate_json, tool

__all__ = ["cached_json", "prepare_json"]

_CACHE: dict[tuple[int, int], bytes] = {}


@tool
def prepare_json(size: int, seed: int = 0) -> str:
    """Make (once) the JSON ``cached_json`` returns; answer its length."""
    key = (size, seed)
    if key not in _CACHE:
        _CACHE[key] = generate_json(size, seed).encode()
    return str(len(_CACHE[key]))


@tool
async def cached_json(size: int, seed: int = 0) -> ToolResult:
    """The JSON ``prepare_json`` made (the same object every time: no copy)."""
    data = _CACHE.get((size, seed))
    if data is None:
        data = _CACHE[(size, seed)] = generate_json(size, seed).encode()
    return ToolResult(data, "application/json")
