"""Tools the fault-injecting workload calls (`bustrail serve --tools analysis.workload_tools`).

They stand in for what real tool daemons serve (account lookups, searches fanning out
to shards, table exports, web pages, logs, charts, bundles) and fail the way real tools
do: a tool that swallows an exception and "succeeds" with ``Error: ...`` text, a query
driver that returns nothing, an upstream that gets slow. What each returns depends only
on its arguments, so a seeded workload is reproducible; the workload, not the tool,
decides when a fault happens.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random

from daemon.tools import ToolError, generate_json, tool

__all__ = [
    "build_bundle",
    "fetch_logs",
    "fetch_page",
    "lookup_account",
    "render_chart",
    "run_query",
    "search_orders",
    "snapshot",
    "summarize",
]

UNKNOWN_ACCOUNT_PREFIX = "acct-x"  # accounts that do not exist: the lookup raises
FLAKY_HOST = "flaky.example"  # pages from here come back as "Error: ..." text
_PLANS = ("free", "team", "business", "enterprise")
_SERVICES = ("api", "billing", "search", "worker", "gateway")
_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
_SHARD_MS = 2.0


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@tool
def lookup_account(account: str) -> dict[str, object]:
    """An account's plan and balance; unknown accounts raise (the tool reports a failure)."""
    if account.startswith(UNKNOWN_ACCOUNT_PREFIX):
        raise ToolError(f"account {account!r} not found")
    rng = _rng("account", account)
    return {
        "account": account,
        "plan": rng.choice(_PLANS),
        "balance": round(rng.uniform(0, 50_000), 2),
        "seats": rng.randint(1, 500),
        "active": True,
    }


@tool
async def search_orders(query: str, shards: int = 4) -> dict[str, object]:
    """Search orders across ``shards`` shards (each adds a little latency)."""
    if not 1 <= shards <= 1000:
        raise ToolError("shards must be 1-1000")
    await asyncio.sleep(shards * _SHARD_MS / 1000)
    rng = _rng("search", query)
    hits = [
        {"order": f"ord-{rng.getrandbits(40):010x}", "score": round(rng.random(), 4)}
        for _ in range(rng.randint(3, 25))
    ]
    return {"query": query, "shards": shards, "hits": hits}


@tool
def run_query(sql: str, rows: int, seed: int = 0) -> str:
    """Rows of a query as JSON text of about ``rows`` x 200 bytes.

    A query matching nothing returns an empty string: the silent kind of "success" a
    thin database wrapper produces."""
    if rows < 0:
        raise ToolError("rows must be >= 0")
    if rows == 0:
        return ""
    return generate_json(rows * 200, seed=seed)


@tool
async def fetch_page(url: str, size: int, latency_ms: int = 0, seed: int = 0) -> str:
    """A web page of about ``size`` bytes after ``latency_ms`` of upstream latency.

    Pages from the flaky host come back as ``Error: ...`` text instead of raising: the
    wrapper swallowed the upstream's failure."""
    if size < 0 or latency_ms < 0:
        raise ToolError("size and latency_ms must be >= 0")
    if latency_ms:
        await asyncio.sleep(latency_ms / 1000)
    if FLAKY_HOST in url:
        return f"Error: upstream {url} answered HTTP 503 Service Unavailable"
    rng = _rng("page", url, seed)
    words = ("order", "invoice", "customer", "region", "status", "shipment", "payment")
    parts = [f"<html><head><title>{url}</title></head><body>"]
    total = len(parts[0])
    while total < size:
        line = "<p>" + " ".join(rng.choices(words, k=12)) + "</p>\n"
        parts.append(line)
        total += len(line)
    parts.append("</body></html>")
    return "".join(parts)


@tool
def fetch_logs(service: str, lines: int, seed: int = 0) -> str:
    """The last ``lines`` log lines of a service (text, compresses well)."""
    if lines < 0:
        raise ToolError("lines must be >= 0")
    rng = _rng("logs", service, seed)
    out = []
    for i in range(lines):
        level = rng.choice(_LEVELS)
        out.append(
            f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z {level} "
            f"{service} req={rng.getrandbits(32):08x} dur_ms={rng.randint(1, 900)} "
            f"path=/v1/{rng.choice(_SERVICES)}/{rng.randint(1, 99)}\n"
        )
    return "".join(out)


@tool
def render_chart(width: int, height: int, seed: int = 0) -> bytes:
    """A rendered chart: ``width`` x ``height`` bytes of already-compressed image data."""
    if width < 0 or height < 0:
        raise ToolError("width and height must be >= 0")
    return b"\x89PNG\r\n\x1a\n" + random.Random(seed).randbytes(width * height)


@tool
def build_bundle(manifest_bytes: int, blob_bytes: int, seed: int = 0) -> bytes:
    """A bundle: a JSON manifest followed by an already-compressed binary blob.

    The manifest compresses well and the blob not at all, so a bundle whose blob lies
    past the store's 4 MiB compression probe is stored compressed for nothing."""
    if manifest_bytes < 0 or blob_bytes < 0:
        raise ToolError("manifest_bytes and blob_bytes must be >= 0")
    manifest = generate_json(manifest_bytes, seed=seed).encode()
    return manifest + b"\n" + random.Random(seed).randbytes(blob_bytes)


@tool
async def snapshot(size: int, settle_ms: int = 0, seed: int = 0) -> bytes:
    """A disk snapshot of ``size`` bytes, taken after ``settle_ms`` of quiescing."""
    if size < 0 or settle_ms < 0:
        raise ToolError("size and settle_ms must be >= 0")
    if settle_ms:
        await asyncio.sleep(settle_ms / 1000)
    return random.Random(seed).randbytes(size)


@tool
def summarize(text: str) -> dict[str, object]:
    """Word and line counts of a (possibly uploaded) text."""
    words = text.split()
    common: dict[str, int] = {}
    for word in words[:50_000]:
        common[word] = common.get(word, 0) + 1
    top = sorted(common.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return {
        "characters": len(text),
        "lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0),
        "words": len(words),
        "top": json.loads(json.dumps(top)),
    }
