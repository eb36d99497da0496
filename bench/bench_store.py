"""The claim-check store on a realistic 100 MB JSON payload, on SQLite and PostgreSQL.

For each backend the payload (JSON records generated as a stream of 1 MiB pieces, never
held whole in memory) is stored with zstd and read back, the checksum verified. Beside
it, in the same run, the baseline does the codec's work with no database: zstd-compress
plus SHA-256 of the same stream (written to a temporary file), then decompress plus
SHA-256 of that file. Results:

* ``store_put_<backend>`` / ``store_read_<backend>``: baseline seconds / store seconds
  (info: what the database costs on top of the codec);
* ``store_memory_<backend>``: resident memory growth during put + read, in units of
  64 MB (target 1.0, lower is better: ``met`` means it grew by less than 64 MB).

PostgreSQL runs in a fresh database on the server of ``BUSTRAIL_TEST_DATABASE_URL``,
created, migrated (``bus.schema.upgrade``) and dropped by the benchmark; it is skipped,
loudly, when that server does not answer.

    .venv/bin/python -m bench bench_store
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import zstandard

from bench.common import (
    BenchResult,
    PeakRSS,
    fresh_database,
    postgres_missing,
    print_results,
    scaled,
    stopwatch,
)
from bus.codec import Compression
from bus.db import Database
from bus.schema import upgrade
from bus.store import PayloadStore, StoreConfig, TransactionContext

__all__ = ["JsonPayload", "run"]

MB = 1_000_000
MIB = 1024 * 1024
# The child processes measuring each backend inherit BUSTRAIL_BENCH_SCALE: same payload.
PAYLOAD_BYTES = scaled(100 * MB, minimum=64 * 1024)
PIECE_BYTES = scaled(MIB, minimum=4096)  # scaled too, so a small payload still cycles
MEMORY_BUDGET_MB = 64

_WORDS = (
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "chi",
    "psi",
    "omega",
    "request",
    "response",
    "latency",
    "timeout",
    "retry",
    "success",
    "failure",
    "pending",
    "stored",
    "fetched",
    "expired",
    "session",
    "tenant",
    "tool",
    "payload",
    "chunk",
)
_TOOLS = (
    "search",
    "read_file",
    "generate",
    "query_db",
    "list_dir",
    "http_get",
    "summarize",
    "echo",
)
_LEVELS = ("debug", "info", "info", "info", "warning", "error", "info", "info")


class JsonPayload:
    """A JSON array of log-like tool-output records, exactly ``total`` bytes, streamed.

    Iterating yields pieces of about 1 MiB; the whole payload is never in memory. The
    pieces come from a pool of ``distinct`` different pieces built once, up front (so
    the timings measure the store, not this generator), and cycled: repeats are
    ``distinct`` MiB apart, far beyond zstd's window at level 3 (2 MiB), so zstd gains
    what it gains on fresh records (about 4x). The same bytes for the same seed.
    """

    def __init__(self, total: int = PAYLOAD_BYTES, *, seed: int = 0, distinct: int = 16) -> None:
        rng = random.Random(seed)
        messages = [" ".join(rng.choices(_WORDS, k=rng.randint(4, 14))) for _ in range(4096)]
        tags = [f'"{a}","{b}"' for a in _WORDS for b in _WORDS]
        self.total = total
        self.pool: list[bytes] = []
        n = 0
        for _ in range(distinct):
            parts: list[str] = []
            size = 0
            while size < PIECE_BYTES:
                r = rng.getrandbits(128)
                record = (
                    f',{{"id":{n},"ts":"2025-{(r & 7) + 1:02d}-{(r >> 3) % 28 + 1:02d}T'
                    f"{(r >> 8) % 24:02d}:{(r >> 13) % 60:02d}:{(r >> 19) % 60:02d}."
                    f'{(r >> 25) % 1000000:06d}Z","level":"{_LEVELS[(r >> 45) & 7]}",'
                    f'"tool":"{_TOOLS[(r >> 48) & 7]}",'
                    f'"session":"{(r >> 51) & (2**40 - 1):010x}",'
                    f'"latency_ms":{((r >> 91) & 0xFFFFF) / 512:.3f},'
                    f'"bytes":{(r >> 111) & 0x7FFFF},'
                    f'"message":"{messages[(r >> 32) & 4095]}",'
                    f'"tags":[{tags[((r >> 100) & 0x7FF) % len(tags)]}]}}'
                )
                parts.append(record)
                size += len(record)
                n += 1
            self.pool.append("".join(parts).encode())

    def __iter__(self) -> Iterator[bytes]:
        head = b'[{"id":"start"}'
        produced = len(head)
        yield head
        room = self.total - 1  # the closing bracket
        for i in itertools.count():
            piece = self.pool[i % len(self.pool)]
            if produced + len(piece) > room:
                # End on a record boundary, pad with JSON whitespace to the exact size.
                cut = piece.rfind(b',{"id":', 0, room - produced + 1)
                tail = piece[: max(cut, 0)]
                yield tail + b" " * (room - produced - len(tail)) + b"]"
                return
            produced += len(piece)
            yield piece


def _baseline(payload: JsonPayload, work: Path) -> tuple[float, float, str]:
    """zstd-compress + SHA-256 of the stream to a file, then decompress + SHA-256."""
    target = work / "baseline.zst"
    with stopwatch() as put_time:
        digest = hashlib.sha256()
        compressor = zstandard.ZstdCompressor(level=3).compressobj()
        with target.open("wb") as out:
            for piece in payload:
                digest.update(piece)
                out.write(compressor.compress(piece))
            out.write(compressor.flush())
        checksum = digest.hexdigest()
    with stopwatch() as read_time:
        digest = hashlib.sha256()
        with target.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as src:
            while piece := src.read(PIECE_BYTES):
                digest.update(piece)
        if digest.hexdigest() != checksum:
            raise AssertionError("baseline: decompressed bytes do not match")
    target.unlink()
    return put_time[0], read_time[0], checksum


def _measure(db: Database, payload: JsonPayload, expected: str) -> dict[str, float]:
    """Store the payload and read it back; times, sizes and memory growth."""
    store = PayloadStore(db, StoreConfig(compression=Compression.ZSTD, max_payload_bytes=128 * MIB))
    gc.collect()
    with PeakRSS() as rss:
        with stopwatch() as put_time:
            record = store.put(TransactionContext(tenant="bench", tool="bench"), iter(payload))
        with stopwatch() as read_time:
            digest = hashlib.sha256()
            read = 0
            for piece in store.read("bench", record.id):
                digest.update(piece)
                read += len(piece)
    if record.checksum != expected or digest.hexdigest() != expected or read != PAYLOAD_BYTES:
        raise AssertionError(f"{db.dialect_name}: the payload read back is not the one stored")
    if record.compression is not Compression.ZSTD:
        raise AssertionError(f"{db.dialect_name}: stored as {record.compression}, not zstd")
    return {
        "put": put_time[0],
        "read": read_time[0],
        "growth_mb": rss.growth / MB,
        "ratio": record.size / (record.stored_size or 1),
        "chunks": record.chunk_count,
        "chunk_mib": store.config.chunk_bytes / MIB,
    }


def _measure_sqlite(expected: str) -> dict[str, float]:
    payload = JsonPayload()
    with tempfile.TemporaryDirectory(prefix="bustrail-bench-") as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            upgrade(db)
            return _measure(db, payload, expected)
        finally:
            db.dispose()


def _measure_postgres(expected: str) -> dict[str, float]:
    payload = JsonPayload()
    with fresh_database() as db:
        return _measure(db, payload, expected)


def _in_child(backend: str, expected: str) -> dict[str, float]:
    """Measure one backend in a fresh process, so that neither the baseline nor the other
    backend has grown (or warmed) the heap its memory growth is measured against."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_store", "--measure", backend, expected],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    for line in done.stdout.splitlines():
        if line.startswith("MEASURED "):
            figures: dict[str, float] = json.loads(line.removeprefix("MEASURED "))
            return figures
    raise RuntimeError(f"measuring {backend} failed (exit {done.returncode}):\n{done.stderr}")


def run() -> list[BenchResult]:
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="bustrail-bench-") as tmp:
        base_put, base_read, checksum = _baseline(JsonPayload(), Path(tmp))
    mb = PAYLOAD_BYTES / MB
    print(
        f"baseline (zstd level 3 + sha256, no database): put {mb / base_put:.0f} MB/s, "
        f"read {mb / base_read:.0f} MB/s"
    )
    backends = ["sqlite"]
    missing = postgres_missing()
    if missing:
        print(f"SKIPPING postgresql: {missing}", file=sys.stderr)
    else:
        backends.append("postgresql")
    for backend in backends:
        m = _in_child(backend, checksum)
        print(
            f"{backend}: put {mb / m['put']:.0f} MB/s, read {mb / m['read']:.0f} MB/s, "
            f"memory growth {m['growth_mb']:.1f} MB, zstd ratio {m['ratio']:.1f}x, "
            f"{m['chunks']:.0f} chunks of {m['chunk_mib']:g} MiB"
        )
        results += [
            BenchResult(
                f"store_put_{backend}",
                base_put / m["put"],
                details={"MB/s": f"{mb / m['put']:.0f}", "baseline_MB/s": f"{mb / base_put:.0f}"},
            ),
            BenchResult(
                f"store_read_{backend}",
                base_read / m["read"],
                details={
                    "MB/s": f"{mb / m['read']:.0f}",
                    "baseline_MB/s": f"{mb / base_read:.0f}",
                },
            ),
            BenchResult(
                f"store_memory_{backend}",
                m["growth_mb"] / MEMORY_BUDGET_MB,
                target=1.0,
                lower_is_better=True,
                details={"growth_MB": f"{m['growth_mb']:.1f}", "budget_MB": str(MEMORY_BUDGET_MB)},
            ),
        ]
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure = {"sqlite": _measure_sqlite, "postgresql": _measure_postgres}[sys.argv[2]]
        print("MEASURED " + json.dumps(measure(sys.argv[3])))
    else:
        print_results("bench_store", run())
