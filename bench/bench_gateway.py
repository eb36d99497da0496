"""Gateway mode: a 1 KB tool call through the daemon, against calling the upstream directly.

The upstream is a tiny stdio MCP server written with the ``mcp`` SDK's ``FastMCP`` (one
tool, ``kilo``, returning 1 KiB of text), from a temporary file. Both sides call it
sequentially, one call at a time, for the same time, in interleaved rounds:

* direct: the ``mcp`` SDK's ``ClientSession`` over its own ``stdio_client``, in this
  process, as an application using the server without bustrail would;
* gateway: ``bustrail serve --upstream up="<python> <file>"`` (a subprocess; SQLite, auth
  off, audit, metrics and tracing as by default) spawns the same server; the client is
  the ``websockets`` asyncio client the other benchmarks use, sending the JSON-RPC
  ``tools/call`` frame and awaiting the reply. Each call crosses a WebSocket, the daemon
  (route, audit, trace, metrics) and then the same stdio hop.

``gateway_1kb`` = gateway calls/s / direct calls/s, the median of the rounds' ratios.
Target 0.5: bustrail's hop plus its bookkeeping may at most double the time of a call
to a local stdio server, the cheapest upstream there is (a real one, doing real work,
makes the share smaller).

    .venv/bin/python -m bench bench_gateway
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._servers import Daemon, Throughput, round_trips
from bench.common import BenchResult, print_results, scaled

__all__ = ["run"]

ROUNDS = scaled(3, minimum=2)  # 2: both orders
SECONDS = scaled(2.0, minimum=0.1)
WARM_UP_CALLS = scaled(20, minimum=2)
TARGET = 0.5
UPSTREAM = '''\
from mcp.server.fastmcp import FastMCP

server = FastMCP("bench-upstream", log_level="WARNING")
TEXT = "x" * 1024


@server.tool()
def kilo() -> str:
    """1 KiB of text."""
    return TEXT


if __name__ == "__main__":
    server.run()
'''


async def _direct(script: Path, seconds: float) -> Throughput:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=[str(script)])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for _ in range(WARM_UP_CALLS):
            await session.call_tool("kilo", {})
        calls = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            result = await session.call_tool("kilo", {})
            if result.isError:
                raise RuntimeError(f"direct call failed: {result.content}")
            calls += 1
        elapsed = time.perf_counter() - started
    return Throughput(calls / elapsed, float("nan"))


def direct(script: Path) -> Throughput:
    return asyncio.run(_direct(script, SECONDS))


def run() -> list[BenchResult]:
    with tempfile.TemporaryDirectory(prefix="bustrail-bench-gateway-") as tmp:
        script = Path(tmp) / "upstream.py"
        script.write_text(UPSTREAM)
        with Daemon("--upstream", f"up={sys.executable} {script}") as daemon:
            base: list[Throughput] = []
            subject: list[Throughput] = []
            for i in range(ROUNDS):
                steps = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
                for step in steps:
                    if step == "direct":
                        base.append(direct(script))
                    else:
                        subject.append(
                            round_trips(daemon.url, "kilo", {}, seconds=SECONDS, pid=daemon.pid)
                        )
    ratios = [s.per_second / b.per_second for b, s in zip(base, subject, strict=True)]
    return [
        BenchResult(
            "gateway_1kb",
            statistics.median(ratios),
            target=TARGET,
            details={
                "gateway_calls/s": f"{statistics.median(s.per_second for s in subject):,.0f}",
                "direct_calls/s": f"{statistics.median(b.per_second for b in base):,.0f}",
                "daemon_cpu_us/call": f"{statistics.median(s.cpu_us for s in subject):.0f}",
                "rounds": " ".join(f"{r:.2f}" for r in ratios),
            },
        )
    ]


if __name__ == "__main__":
    print_results("bench_gateway", run())
