"""Small results through the daemon, against the bare ``websockets`` server.

A daemon (``bustrail serve`` in a subprocess, SQLite in a temporary directory, auth off;
audit, metrics and tracing on as by default) and the bare ``websockets`` asyncio server
(a subprocess, echoing each frame) are driven by the same client (``websockets``
asyncio, this process) with the same JSON-RPC ``tools/call`` text frame: ``echo`` of a
1 KiB text. Each figure is the median over interleaved rounds (which server goes first
alternates) of the round's ratio, daemon / bare; the servers' CPU time per call is
shown beside it (it is less sensitive to a noisy machine than wall time).

* ``small_1conn``: one connection, one call at a time (target 0.5);
* ``small_8conn_16inflight``: 8 connections with 16 calls in flight on each (target 0.5);
* ``small_conns_{8,64}``: how it grows: 8 and 64 connections, one call in flight on
  each (info; 1 connection is ``small_1conn``);
* ``inline_5mb``: the latency of a 5 MB inline result (the daemon's threshold and the
  client's declared cap raised to 16 MiB) against the bare server sending the same
  JSON text in the same JSON-RPC reply (info): ratio = bare latency / daemon latency.
  The daemon's tool returns JSON made before the call (``bench._tools``), so both
  sides time only the answering.

    .venv/bin/python -m bench bench_daemon
"""

from __future__ import annotations

import statistics
import sys

from bench._servers import (
    BareServer,
    Daemon,
    Throughput,
    call_frame,
    interleaved,
    latency,
    round_trips,
    stopping,
)
from bench.common import BenchResult, print_results, scaled

__all__ = ["run"]

TEXT = "x" * 1024
ROUNDS = scaled(7, minimum=2)  # 2: both orders
SECONDS = scaled(1.0, minimum=0.05)
TARGET = 0.5
INLINE_BYTES = scaled(5_000_000, minimum=16_384)
INLINE_REPEATS = scaled(5, minimum=1)
MIB = 1024 * 1024

# name, connections, calls in flight per connection, target
SMALL = (
    ("small_1conn", 1, 1, TARGET),
    ("small_8conn_16inflight", 8, 16, TARGET),
    ("small_conns_8", 8, 1, None),
    ("small_conns_64", 64, 1, None),
)


def _small(
    daemon: Daemon, bare: BareServer, connections: int, inflight: int
) -> tuple[list[Throughput], list[Throughput]]:
    def measure(server: Daemon | BareServer) -> Throughput:
        return round_trips(
            server.url,
            "echo",
            {"text": TEXT},
            connections=connections,
            inflight=inflight,
            seconds=SECONDS,
            pid=server.pid,
        )

    base: list[Throughput] = []
    subject: list[Throughput] = []
    for i in range(ROUNDS):
        pair = (lambda: base.append(measure(bare)), lambda: subject.append(measure(daemon)))
        for step in pair if i % 2 == 0 else pair[::-1]:
            step()
    return base, subject


def _small_result(
    name: str, target: float | None, base: list[Throughput], subject: list[Throughput]
) -> BenchResult:
    ratios = [s.per_second / b.per_second for b, s in zip(base, subject, strict=True)]
    return BenchResult(
        name,
        statistics.median(ratios),
        target=target,
        details={
            "calls/s": f"{statistics.median(s.per_second for s in subject):,.0f}",
            "bare_calls/s": f"{statistics.median(b.per_second for b in base):,.0f}",
            "cpu_us/call": f"{statistics.median(s.cpu_us for s in subject):.0f}",
            "bare_cpu_us/call": f"{statistics.median(b.cpu_us for b in base):.0f}",
            "rounds": " ".join(f"{r:.2f}" for r in ratios),
        },
    )


def run() -> list[BenchResult]:
    results: list[BenchResult] = []
    daemon = Daemon(
        "--tools",
        "bench._tools",
        message_bus_threshold_bytes=16 * MIB,
        websocket_max_message_mb=32,
    )
    bare: BareServer | None = None
    with stopping(daemon):
        bare = BareServer(blobs=[INLINE_BYTES])
        with stopping(bare):
            for name, connections, inflight, target in SMALL:
                base, subject = _small(daemon, bare, connections, inflight)
                results.append(_small_result(name, target, base, subject))
                print(f"  .. {name}: {results[-1].ratio:.3f}", file=sys.stderr)  # progress

            prepare = call_frame("prepare_json", {"size": INLINE_BYTES})
            latency(daemon.url, prepare, 1)
            frame = call_frame("cached_json", {"size": INLINE_BYTES})
            bare_s, daemon_s = interleaved(
                ROUNDS,
                lambda: latency(bare.url, frame, INLINE_REPEATS),  # type: ignore[union-attr]
                lambda: latency(daemon.url, frame, INLINE_REPEATS),
            )
    ratios = [b / d for b, d in zip(bare_s, daemon_s, strict=True)]
    results.append(
        BenchResult(
            "inline_5mb",
            statistics.median(ratios),
            details={
                "daemon_ms": f"{statistics.median(daemon_s) * 1000:.1f}",
                "bare_ms": f"{statistics.median(bare_s) * 1000:.1f}",
                "rounds": " ".join(f"{r:.2f}" for r in ratios),
            },
        )
    )
    return results


if __name__ == "__main__":
    print_results("bench_daemon", run())
