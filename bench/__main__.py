"""`make bench`: run every benchmark module (bench/bench_*.py) and print its results.

Each module has ``run() -> list[BenchResult]`` (and may be run alone:
``python -m bench.bench_store``). ``python -m bench NAME ...`` runs only those.
``BUSTRAIL_BENCH_SCALE=0.01 python -m bench`` is a smoke run: every module and code
path at a hundredth of the sizes, rows and rounds, in ~20 s; its figures are
marked and not comparable (``bench.common.scaled``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench
from bench.common import BenchResult, print_results, scale_note


def main(argv: list[str]) -> int:
    names = sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")
    )
    if argv:
        names = [n for n in names if n in argv or n.removeprefix("bench_") in argv]
    note = scale_note()
    if note:
        print(f"== {note}")
    everything: list[BenchResult] = []
    started = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        t0 = time.perf_counter()
        results = module.run()
        print_results(f"{name} ({time.perf_counter() - t0:.0f}s)", results)
        everything.extend(results)
    print(f"\n== summary ({time.perf_counter() - started:.0f}s)" + (f"  [{note}]" if note else ""))
    for r in everything:
        print(r.line())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
