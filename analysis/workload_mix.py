"""What the workload asks for: the faults it can inject and the calls it makes. Pure.

:data:`FAULTS` names each fault and the detector kind it must trip; :func:`parse_faults`
reads ``bustrail load --faults``. :func:`traffic_call` draws one call of realistic traffic
(mostly small results, some stored, a few of tens of MB) and :func:`fault_call` the call
that carries one fault; both take a seeded ``random.Random``, so a seed is a plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from analysis.workload_tools import FLAKY_HOST

__all__ = ["DEFAULT_FAULTS", "FAULTS", "Call", "fault_call", "parse_faults", "traffic_call"]

FAULTS: dict[str, str] = {
    "orphan": "orphaned_claim_check",
    "corrupt": "checksum_mismatch",
    "crash": "stuck_pending",
    "disconnect": "lost_response",
    "oversize": "fallback_oversize",
    "empty": "empty_success",
    "expiry": "cleanup_lag",
    "waste": "compression_waste",
    "outage": "breaker_flapping",
    "untraced": "missing_trace",
    "duplicate": "duplicate_delivery",
    "errors": "error_rate_regression",
    "slow": "latency_regression",
}
DEFAULT_FAULTS: dict[str, int] = {
    "orphan": 3,
    "corrupt": 2,
    "crash": 1,
    "disconnect": 2,
    "oversize": 2,
    "empty": 4,
    "expiry": 2,
    "waste": 1,
    "outage": 3,
    "untraced": 3,
    "duplicate": 2,
    "errors": 3,
    "slow": 3,
}
_KIND_TO_FAULT = {kind: name for name, kind in FAULTS.items()}


def parse_faults(spec: str) -> dict[str, int]:
    """``all`` (the defaults), ``none``, or ``name=count,...`` (names as in :data:`FAULTS`,
    short or as detector kinds; ``all,orphan=5`` changes one default). ValueError with
    one clear message otherwise."""
    counts = dict.fromkeys(FAULTS, 0)
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise ValueError("no faults given: write all, none, or name=count,...")
    for position, item in enumerate(items):
        if item in ("all", "none"):
            if position:
                raise ValueError(f"{item!r} must come first, as in all,orphan=5")
            if item == "all":
                counts.update(DEFAULT_FAULTS)
            continue
        given, sep, value = (part.strip() for part in item.partition("="))
        name = _KIND_TO_FAULT.get(given, given)
        if name not in FAULTS:
            raise ValueError(
                f"unknown fault {given!r}; known: {', '.join(FAULTS)} "
                "(or their detector kinds), all, none"
            )
        count = int(value) if sep and value.isdigit() else -1
        if count < 0:
            raise ValueError(f"fault {name!r}: expected {name}=COUNT (a whole number >= 0)")
        counts[name] = count
    return counts


@dataclass(frozen=True)
class Call:
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)
    fault: str | None = None  # the fault this call carries (a key of FAULTS)


_WORDS = ("order", "invoice", "the", "customer", "shipped", "late", "refund", "and", "status")


def prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_WORDS, k=words))


def traffic_call(rng: random.Random) -> Call:
    """One call of realistic traffic. Results: 55% small (bytes to 20 KB, inline), 30%
    medium (to 1 MB, stored above the 256 KiB threshold), 12% large (1-8 MB), 3% huge
    (8-40 MB); text, JSON and already-compressed binary alike."""
    seed = rng.randrange(1000)
    size = rng.choices(("small", "medium", "large", "huge"), (55, 30, 12, 3))[0]
    return _CLASSES[size](rng, seed)


def _small(r: random.Random, seed: int) -> Call:
    tool = r.choice(("run_query", "fetch_page", "fetch_logs", "render_chart", "summarize"))
    if tool == "run_query":
        return Call(tool, {"sql": "select * from orders", "rows": r.randint(1, 40), "seed": seed})
    if tool == "fetch_page":
        return Call(tool, {"url": f"https://shop.example/p/{seed}", "size": r.randint(300, 20_000)})
    if tool == "fetch_logs":
        service = r.choice(("api", "billing"))
        return Call(tool, {"service": service, "lines": r.randint(5, 150), "seed": seed})
    if tool == "render_chart":
        return Call(tool, {"width": r.randint(8, 64), "height": r.randint(8, 64), "seed": seed})
    return Call(tool, {"text": prose(r, r.randint(20, 400))})


def _medium(r: random.Random, seed: int) -> Call:
    tool = r.choice(("run_query", "fetch_page", "fetch_logs", "render_chart", "build_bundle"))
    if tool == "run_query":
        rows = r.randint(100, 5000)
        return Call(tool, {"sql": "select * from events", "rows": rows, "seed": seed})
    if tool == "fetch_page":
        size = r.randint(50_000, 900_000)
        return Call(tool, {"url": f"https://docs.example/{seed}", "size": size})
    if tool == "fetch_logs":
        return Call(tool, {"service": "worker", "lines": r.randint(500, 9000), "seed": seed})
    if tool == "render_chart":
        width, height = r.randint(128, 700), r.randint(128, 700)
        return Call(tool, {"width": width, "height": height, "seed": seed})
    manifest = r.randint(100_000, 700_000)  # a bundle mostly manifest: it compresses
    blob = manifest // r.randint(4, 10)
    return Call(tool, {"manifest_bytes": manifest, "blob_bytes": blob, "seed": seed})


def _large(r: random.Random, seed: int) -> Call:
    tool = r.choice(("run_query", "fetch_logs", "render_chart", "build_bundle", "summarize"))
    if tool == "run_query":
        rows = r.randint(5000, 40_000)
        return Call(tool, {"sql": "select * from ledger", "rows": rows, "seed": seed})
    if tool == "fetch_logs":
        return Call(tool, {"service": "gateway", "lines": r.randint(10_000, 60_000), "seed": seed})
    if tool == "render_chart":
        width, height = r.randint(1000, 2000), r.randint(1000, 2000)
        return Call(tool, {"width": width, "height": height, "seed": seed})
    if tool == "build_bundle":
        manifest = r.randint(1_000_000, 5_000_000)
        return Call(tool, {"manifest_bytes": manifest, "blob_bytes": manifest // 8, "seed": seed})
    # A long text argument: the client uploads it first (an `upload` transaction).
    return Call(tool, {"text": prose(r, r.randint(40_000, 300_000))})


def _huge(r: random.Random, seed: int) -> Call:
    if r.random() < 0.5:
        rows = r.randint(40_000, 150_000)
        return Call("run_query", {"sql": "select * from audit", "rows": rows, "seed": seed})
    lines = r.randint(100_000, 250_000)
    return Call("fetch_logs", {"service": "search", "lines": lines, "seed": seed})


_CLASSES = {"small": _small, "medium": _medium, "large": _large, "huge": _huge}


def fault_call(fault: str, number: int, rng: random.Random) -> Call:
    """The call that carries the ``number``-th fault of its kind, for the faults injected
    into the traffic (orphan, corrupt, empty, waste, duplicate)."""
    seed = rng.randrange(1000)
    if fault == "orphan":  # stored (over the threshold), then never fetched
        rows = rng.randint(2000, 6000)
        return Call(
            "run_query", {"sql": "select * from exports", "rows": rows, "seed": seed}, fault
        )
    if fault == "corrupt":  # stored, damaged, then fetched
        lines = rng.randint(8000, 30_000)
        return Call("fetch_logs", {"service": "billing", "lines": lines, "seed": seed}, fault)
    if fault == "empty":  # alternately an error text and nothing at all
        if number % 2:
            url = f"https://{FLAKY_HOST}/item/{seed}"
            return Call("fetch_page", {"url": url, "size": 5000}, fault)
        return Call("run_query", {"sql": "select * from orders where false", "rows": 0}, fault)
    if fault == "waste":
        # 0.6 MB of JSON then 7.5 MB of random bytes: the 4 MiB probe still compresses
        # (the JSON), the whole barely does (stored size over 90% of the size).
        arguments = {"manifest_bytes": 600_000, "blob_bytes": 7_500_000, "seed": seed}
        return Call("build_bundle", arguments, fault)
    if fault == "duplicate":  # a small call, sent twice under one request id
        return Call("fetch_page", {"url": f"https://shop.example/cart/{seed}", "size": 1500}, fault)
    raise ValueError(f"{fault!r} is not a fault carried by a traffic call")
