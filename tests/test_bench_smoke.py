"""The benchmarks still run: ``python -m bench`` at a hundredth of its scale.

Nothing else runs ``bench/``, so an API change could break it unnoticed until the next
``make bench``. This runs every module (``BUSTRAIL_BENCH_SCALE=0.01``: every code path,
both backends, the servers each starts) on the test PostgreSQL server, and checks that
each produced its ``BENCH`` lines with a usable figure. It never checks a figure against
its target: at this scale they mean nothing, and a test is no place for timing.
"""

from __future__ import annotations

import math
import os
import pkgutil
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
SCALE = "0.01"
TIMEOUT = 240  # seconds; the run takes ~30 s on 2 cores, and pytest's own limit is 300
_SECTION = re.compile(r"^== (bench_\w+) \(\d+s\)")
_BENCH = re.compile(
    r"^BENCH (?P<name>\S+) ratio=(?P<ratio>\S+) target=(?P<target>\S+) "
    r"(?P<verdict>met|missed|info) scale=(?P<scale>\S+)$"
)


def _bench_modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules([str(ROOT / "bench")]) if m.name.startswith("bench_")
    )


def _run_bench(env: dict[str, str]) -> tuple[int, str, str]:
    """``python -m bench`` in its own process group, so a timeout also stops the daemons
    and servers it started."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"python -m bench took over {TIMEOUT}s\n{out[-3000:]}\n{err[-3000:]}")
    return process.returncode, out, err


def _results_by_module(out: str) -> dict[str, list[re.Match[str]]]:
    """Each module's section (``== bench_x (Ns)``) and the BENCH lines under it."""
    sections: dict[str, list[re.Match[str]]] = {}
    current: str | None = None
    for line in out.splitlines():
        if line.startswith("== summary"):
            break
        if header := _SECTION.match(line):
            current = header[1]
            sections[current] = []
        elif line.startswith("BENCH ") and current is not None:
            match = _BENCH.match(line)
            assert match, f"unparsable result line: {line!r}"
            sections[current].append(match)
    return sections


@pytest.mark.slow
@pytest.mark.postgres
def test_every_benchmark_runs_at_smoke_scale(pg_server: PostgresServer) -> None:
    env = dict(os.environ)
    env.update(BUSTRAIL_BENCH_SCALE=SCALE, BUSTRAIL_TEST_DATABASE_URL=pg_server.url)
    code, out, err = _run_bench(env)
    context = f"\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}"
    assert code == 0, f"python -m bench exited {code}{context}"
    assert "SKIPPING" not in err, f"a benchmark skipped part of its work{context}"
    assert f"scale {SCALE}" in out.splitlines()[0], "a smoke run must say so first"

    sections = _results_by_module(out)
    modules = _bench_modules()
    assert sorted(sections) == modules, context
    for module in modules:
        assert sections[module], f"{module} produced no BENCH line{context}"
        for result in sections[module]:
            ratio = float(result["ratio"])
            assert math.isfinite(ratio), f"{module}: {result[0]}"
            # A memory growth may be nil at this scale (freed heap reused); a time ratio not.
            assert ratio > 0 or ("memory" in result["name"] and ratio == 0), result[0]
            assert result["scale"] == SCALE, result[0]

    summary = out.split("\n== summary", 1)[1].splitlines()[1:]
    per_module = [r[0] for module in modules for r in sections[module]]
    assert [line for line in summary if line.startswith("BENCH ")] == per_module
