"""Large results end to end through the daemon, against the sum of their unavoidable parts.

A daemon (``bustrail serve`` in a subprocess, SQLite in a temporary directory, zstd, all
else as by default) is asked for ``generate(size)``, a realistic JSON result; it stores it
(the claim check) and the client fetches it back over HTTP, checking its SHA-256 against
the one announced: that is the end-to-end time. Beside it, in the same run and in this
process, the baseline does only what cannot be avoided, each part alone:

1. generate the same JSON (``generate_json(size).encode()``, as the tool does);
2. SHA-256 and zstd (level 3, 1 MiB pieces) of it, cut into 8 MiB chunks;
3. write the chunks with plain ``sqlite3`` inserts into a chunks-like table (same file
   settings as the daemon's: WAL, ``synchronous=NORMAL``, one commit per chunk);
4. read them back, decompress and check the SHA-256.

``large_<N>mb`` = baseline seconds / end-to-end seconds, the median of interleaved
rounds (target 0.7 at 100 MB; 1 and 10 MB show how it grows).

Memory: the daemon's resident memory is sampled from outside (``/proc``; the exact
high-water mark where the kernel lets us reset it) during the whole call and fetch.

* ``large_daemon_memory``: growth while the daemon stores and serves a 100 MB result
  its tool had already made (``bench._tools.cached_json``): what the daemon itself adds
  (target: under 64 MB, as ``growth_MB / 64``, lower is better);
* ``large_daemon_memory_generate``: the same with ``generate``, whose result is made in
  the call: the tool's own ~100 MB ``str`` and its list of parts, then the ~100 MB of
  bytes it becomes, are in it (info).

    .venv/bin/python -m bench bench_large
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import zstandard

from bench._servers import INITIALIZE, Daemon, RssProbe, call_frame, connect
from bench.common import SCALE, BenchResult, print_results, scaled
from daemon.tools import generate_json

__all__ = ["run"]

MB = 1_000_000
MIB = 1024 * 1024
CHUNK = scaled(8 * MIB, minimum=64 * 1024)  # the daemon's chunk size (see _daemon)
PIECE = scaled(MIB, minimum=4096)
THRESHOLD = scaled(MIB, minimum=1024)  # the daemon's default; scaled, see _daemon
TARGET = 0.7
MEMORY_BUDGET_MB = 64
# (bytes, rounds) as named (large_1mb ...); run as scaled(bytes), scaled(rounds).
SIZES = ((1 * MB, 5), (10 * MB, 5), (100 * MB, 5))
MEASURED = 100 * MB


# --------------------------------------------------------------------------- baseline
def _compress(data: bytes) -> tuple[str, list[bytes]]:
    digest = hashlib.sha256()
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    out = bytearray()
    chunks: list[bytes] = []
    view = memoryview(data)
    for start in range(0, len(view), PIECE):
        piece = view[start : start + PIECE]
        digest.update(piece)
        out += compressor.compress(piece)
        while len(out) >= CHUNK:
            chunks.append(bytes(out[:CHUNK]))
            del out[:CHUNK]
    out += compressor.flush()
    if out:
        chunks.append(bytes(out))
    return digest.hexdigest(), chunks


def _write(db: sqlite3.Connection, tx_id: bytes, chunks: list[bytes]) -> None:
    for seq, chunk in enumerate(chunks):
        with db:
            db.execute("INSERT INTO chunks VALUES (?, ?, ?)", (tx_id, seq, chunk))


def _read(db: sqlite3.Connection, tx_id: bytes, checksum: str) -> int:
    digest = hashlib.sha256()
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    size = 0
    rows = db.execute("SELECT data FROM chunks WHERE transaction_id = ? ORDER BY seq", (tx_id,))
    for (chunk,) in rows:
        view = memoryview(chunk)
        for start in range(0, len(view), PIECE):
            out = decompressor.decompress(view[start : start + PIECE])
            digest.update(out)
            size += len(out)
    if digest.hexdigest() != checksum:
        raise AssertionError("baseline: the bytes read back do not match")
    return size


def baseline(size: int, work: Path) -> dict[str, float]:
    """Seconds of each unavoidable part, done alone."""
    path = work / f"baseline-{time.time_ns()}.db"
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE chunks (transaction_id BLOB, seq INTEGER, data BLOB, "
            "PRIMARY KEY (transaction_id, seq))"
        )
        tx_id = time.time_ns().to_bytes(16, "big")
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        data = generate_json(size).encode()
        t1 = time.perf_counter()
        checksum, chunks = _compress(data)
        del data
        t2 = time.perf_counter()
        _write(db, tx_id, chunks)
        del chunks
        t3 = time.perf_counter()
        _read(db, tx_id, checksum)
        t4 = time.perf_counter()
        times.update(generate=t1 - t0, compress=t2 - t1, write=t3 - t2, read=t4 - t3)
        times["total"] = t4 - t0
        return times
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


# --------------------------------------------------------------------------- end to end
async def _end_to_end(daemon: Daemon, tool: str, size: int) -> dict[str, float]:
    async with connect(daemon.url) as ws:
        await ws.send(INITIALIZE)
        await ws.recv()
        t0 = time.perf_counter()
        await ws.send(call_frame(tool, {"size": size}))
        reply: dict[str, Any] = json.loads(await ws.recv())
        t1 = time.perf_counter()
        meta = (reply.get("result") or {}).get("_meta", {}).get("bustrail", {})
        if meta.get("route") != "store":
            raise RuntimeError(f"{tool}({size}) was not stored: {json.dumps(reply)[:300]}")
        digest = hashlib.sha256()
        received = 0
        async with (
            httpx.AsyncClient(base_url=daemon.http, timeout=300) as http,
            http.stream("GET", f"/v1/transactions/{meta['transaction_id']}") as response,
        ):
            if response.status_code != 200:
                raise RuntimeError(f"GET: HTTP {response.status_code}")
            announced = response.headers.get("x-bustrail-checksum")
            async for piece in response.aiter_raw(PIECE):
                digest.update(piece)
                received += len(piece)
        t2 = time.perf_counter()
    if f"sha256:{digest.hexdigest()}" != meta["checksum"] or announced != meta["checksum"]:
        raise RuntimeError("the bytes fetched do not match the checksum announced")
    if received != meta["size"]:
        raise RuntimeError(f"fetched {received} bytes, the claim check says {meta['size']}")
    return {"call": t1 - t0, "fetch": t2 - t1, "total": t2 - t0}


def end_to_end(daemon: Daemon, tool: str, size: int) -> tuple[dict[str, float], float]:
    """Seconds (call, fetch, total) and the daemon's memory growth in MB meanwhile."""
    with RssProbe(daemon.pid) as probe:
        times = asyncio.run(_end_to_end(daemon, tool, size))
    return times, probe.growth / MB


def _call(daemon: Daemon, tool: str, arguments: dict[str, Any]) -> None:
    async def call() -> None:
        async with connect(daemon.url) as ws:
            await ws.send(INITIALIZE)
            await ws.recv()
            await ws.send(call_frame(tool, arguments))
            reply = await ws.recv()
            if '"isError":false' not in reply:
                raise RuntimeError(f"{tool} failed: {reply[:300]}")

    asyncio.run(call())


# --------------------------------------------------------------------------- run
def _daemon() -> Daemon:
    """At scale 1 the daemon's defaults (1 MiB threshold, 8 MiB chunks); scaled, both
    shrink with the sizes, so the small results are still stored, in several chunks."""
    if SCALE == 1:
        return Daemon("--tools", "bench._tools")
    return Daemon(
        "--tools",
        "bench._tools",
        message_bus_threshold_bytes=THRESHOLD,
        message_bus_chunk_bytes=CHUNK,
    )


def _scaling(daemon: Daemon, work: Path, nominal: int, rounds: int) -> tuple[BenchResult, float]:
    """Interleaved rounds of baseline and end to end; the result and the median growth."""
    size = scaled(nominal, minimum=4096)
    rounds = scaled(rounds, minimum=2)  # 2: both orders
    base: list[dict[str, float]] = []
    e2e: list[dict[str, float]] = []
    growth: list[float] = []
    for i in range(rounds):
        for step in ("baseline", "e2e") if i % 2 == 0 else ("e2e", "baseline"):
            if step == "baseline":
                base.append(baseline(size, work))
            else:
                times, grew = end_to_end(daemon, "generate", size)
                e2e.append(times)
                growth.append(grew)
    ratios = [b["total"] / e["total"] for b, e in zip(base, e2e, strict=True)]

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    parts = ("generate", "compress", "write", "read")
    result = BenchResult(
        f"large_{nominal / MB:.0f}mb",
        statistics.median(ratios),
        target=TARGET if nominal == MEASURED else None,
        details={
            "e2e_s": f"{med(e2e, 'total'):.2f}",
            "call_s": f"{med(e2e, 'call'):.2f}",
            "fetch_s": f"{med(e2e, 'fetch'):.2f}",
            "baseline_s": f"{med(base, 'total'):.2f}",
            "generate/compress/write/read_s": "/".join(f"{med(base, k):.2f}" for k in parts),
            "daemon_growth_MB": f"{statistics.median(growth):.0f}",
            "rounds": " ".join(f"{r:.2f}" for r in ratios),
        },
    )
    return result, statistics.median(growth)


def run() -> list[BenchResult]:
    results: list[BenchResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="bustrail-bench-large-") as tmp,
        _daemon() as daemon,
    ):
        # First, on the fresh daemon (no heap grown by earlier calls to hide in): what
        # storing and serving a result costs the daemon once its tool has made it.
        measured = scaled(MEASURED, minimum=4096)
        _call(daemon, "prepare_json", {"size": measured})
        growth_cached = max(end_to_end(daemon, "cached_json", measured)[1] for _ in range(2))
        for size, rounds in SIZES:
            result, growth_generate = _scaling(daemon, Path(tmp), size, rounds)
            results.append(result)
            print(f"  .. {result.name}: {result.ratio:.3f}", file=sys.stderr)  # progress

    results.append(
        BenchResult(
            "large_daemon_memory",
            growth_cached / MEMORY_BUDGET_MB,
            target=1.0,
            lower_is_better=True,
            details={
                "growth_MB": f"{growth_cached:.1f}",
                "budget_MB": str(MEMORY_BUDGET_MB),
                "what": "store+fetch of a 100 MB result its tool made before the call",
            },
        )
    )
    results.append(
        BenchResult(
            "large_daemon_memory_generate",
            growth_generate / MEMORY_BUDGET_MB,
            lower_is_better=True,
            details={
                "growth_MB": f"{growth_generate:.1f}",
                "what": "with generate: the tool's own str, its parts and bytes included",
            },
        )
    )
    return results


if __name__ == "__main__":
    print_results("bench_large", run())
