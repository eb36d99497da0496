"""Previews of stored results, for agents: a bounded head and tail, and a notice.

An agent handed a claim check alone learns nothing about the result; handed the whole
result it may drown. A preview is the middle way: the first and last few KB, cut on
character boundaries, with a one-line notice saying it was cut, how big the whole is
and how to fetch it. A JSON list keeps valid JSON (its first items, then a count), and
so does a JSON object (its first keys). Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Preview", "PreviewPolicy", "build_preview"]

_MAX_PARSE = 64 * 1024 * 1024  # larger JSON is previewed as text: parsing costs too much


@dataclass(frozen=True, slots=True)
class PreviewPolicy:
    head_bytes: int = 2048
    tail_bytes: int = 1024

    def resized(self, max_chars: int | None) -> PreviewPolicy:
        """Shrink to fit a client's cap on result size (notice included), never grow."""
        if max_chars is None:
            return self
        budget = max(0, max_chars - 400)  # room for the notice
        if budget >= self.head_bytes + self.tail_bytes:
            return self
        head = budget * 2 // 3
        return PreviewPolicy(head_bytes=head, tail_bytes=budget - head)


@dataclass(frozen=True, slots=True)
class Preview:
    text: str
    truncated: bool
    shape: str  # "text", "json-list", "json-object", "binary"


def build_preview(data: bytes, mime_type: str | None, policy: PreviewPolicy) -> Preview:
    if policy.head_bytes <= 0 and policy.tail_bytes <= 0:
        return Preview("", truncated=bool(data), shape="none")
    mime = mime_type or ""
    is_text = mime.startswith("text/") or mime == "application/json" or not mime
    if not is_text or _looks_binary(data[:4096]):
        return Preview("", truncated=bool(data), shape="binary")
    if len(data) <= policy.head_bytes + policy.tail_bytes:
        return Preview(data.decode("utf-8", errors="replace"), truncated=False, shape="text")
    stripped = data.lstrip()[:1]
    if stripped in (b"[", b"{") and len(data) <= _MAX_PARSE:
        structured = _json_preview(data, policy.head_bytes + policy.tail_bytes)
        if structured is not None:
            return structured
    head = _cut(data[: policy.head_bytes], from_end=False)
    tail = _cut(data[len(data) - policy.tail_bytes :], from_end=True) if policy.tail_bytes else ""
    omitted = len(data) - policy.head_bytes - policy.tail_bytes
    text = f"{head}\n[... {omitted:,} bytes omitted ...]\n{tail}" if tail else head
    return Preview(text, truncated=True, shape="text")


def _json_preview(data: bytes, budget: int) -> Preview | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if isinstance(doc, list):
        items: list[Any] = []
        used = 2
        for item in doc:
            encoded = json.dumps(item, ensure_ascii=False)
            if used + len(encoded) + 1 > budget and items:
                break
            items.append(item)
            used += len(encoded) + 1
            if used > budget:
                break
        preview = {"items": items, "shown": len(items), "total_items": len(doc)}
        return Preview(json.dumps(preview, ensure_ascii=False), len(items) < len(doc), "json-list")
    if isinstance(doc, dict):
        keys: dict[str, Any] = {}
        used = 2
        for key, value in doc.items():
            encoded = json.dumps(value, ensure_ascii=False)
            if len(encoded) > budget // 4:
                value = f"<{type(value).__name__} of {len(encoded):,} bytes>"
                encoded = json.dumps(value)
            if used + len(key) + len(encoded) + 4 > budget and keys:
                break
            keys[key] = value
            used += len(key) + len(encoded) + 4
        preview = {"keys": keys, "shown": len(keys), "total_keys": len(doc)}
        return Preview(json.dumps(preview, ensure_ascii=False), True, "json-object")
    return None


def _cut(piece: bytes, *, from_end: bool) -> str:
    """Decode a slice cut at arbitrary bytes, dropping a split UTF-8 character."""
    for trim in range(4):
        part = piece[trim:] if from_end else piece[: len(piece) - trim]
        try:
            return part.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return piece.decode("utf-8", errors="replace")


def _looks_binary(sample: bytes) -> bool:
    return b"\x00" in sample
