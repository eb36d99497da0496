"""Previews of stored results, for agents: a bounded head and tail, and a notice.

An agent handed a claim check alone learns nothing about the result; handed the whole
result it may drown. A preview is the middle way: the first and last few KB, cut on
character boundaries, with a one-line notice saying it was cut, how big the whole is
and how to fetch it. A JSON list keeps valid JSON (its first items, then a count), and
so does a JSON object (its first keys). Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Preview", "PreviewPolicy", "build_preview"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's
_MAX_PARSE = 64 * 1024 * 1024  # larger JSON is previewed as text: parsing costs too much
# Room left for the notice that goes with a preview (about 400 characters: three copies
# of the transaction id, the size) and the "[... N bytes omitted ...]" marker.
NOTICE_ROOM = 512


@dataclass(frozen=True, slots=True)
class PreviewPolicy:
    head_bytes: int = 2048
    tail_bytes: int = 1024

    def resized(self, max_chars: int | None) -> PreviewPolicy:
        """Shrink to fit a client's cap on result size (notice included), never grow."""
        if max_chars is None:
            return self
        budget = max(0, max_chars - NOTICE_ROOM)
        if budget >= self.head_bytes + self.tail_bytes:
            return self
        # Shrink both in proportion: a head-only (or tail-only) policy stays so.
        head = budget * self.head_bytes // (self.head_bytes + self.tail_bytes)
        return PreviewPolicy(head_bytes=head, tail_bytes=budget - head)


@dataclass(frozen=True, slots=True)
class Preview:
    text: str
    truncated: bool
    shape: str  # "text", "json-list", "json-object", "binary", "none" (none asked for)


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
    """The first items of a list (or keys of an object) as JSON of at most ``budget``
    UTF-8 bytes, wrapper included; None when not even the first one fits (or the data
    is not JSON), so the caller shows a text head and tail instead."""
    if data.lstrip()[:1] == b"[":
        return _list_preview(data, budget)
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if isinstance(doc, list):
        encoded = _fitting((_dumps(item) for item in doc), budget, _list_wrapper(len(doc)))
        if not encoded:
            return None
        text = '{"items": [' + ", ".join(encoded) + "]" + _list_tail(len(encoded), len(doc))
        return Preview(text, len(encoded) < len(doc), "json-list")
    if isinstance(doc, dict):
        cut = False

        def members() -> Iterator[str]:
            nonlocal cut
            for key, value in doc.items():
                encoded = _dumps(value)
                if len(encoded) > budget // 4:
                    encoded = _dumps(f"<{type(value).__name__} of {len(encoded):,} bytes>")
                    cut = True
                yield f"{_dumps(key)}: {encoded}"

        shown = _fitting(members(), budget, _object_wrapper(len(doc)))
        if not shown:
            return None
        text = '{"keys": {' + ", ".join(shown) + "}" + _object_tail(len(shown), len(doc))
        # ``cut`` may count a member that did not fit; then fewer were shown anyway.
        return Preview(text, len(shown) < len(doc) or cut, "json-object")
    return None


def _list_preview(data: bytes, budget: int) -> Preview | None:
    """``_json_preview`` of a list, without building the list: it is checked and its
    items counted with every object in it reduced to its size (``object_pairs_hook=len``),
    and only the items shown are decoded. The same preview as from ``json.loads``, at
    ~2.5x the speed and the text's size in memory instead of ~5x (bench_large)."""
    try:
        text = data.decode(json.detect_encoding(data), "surrogatepass")  # as json.loads
        counted = json.loads(text, object_pairs_hook=len)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return None
    if not isinstance(counted, list):
        return None
    total = len(counted)
    del counted
    encoded = _fitting((_dumps(item) for item in _list_items(text)), budget, _list_wrapper(total))
    if not encoded:
        return None
    text = '{"items": [' + ", ".join(encoded) + "]" + _list_tail(len(encoded), total)
    return Preview(text, len(encoded) < total, "json-list")


def _list_items(text: str) -> Iterator[Any]:
    """The items of a JSON list already known to be valid, decoded one at a time."""
    decode = json.JSONDecoder().raw_decode
    i = _skip(text, _skip(text, 0) + 1)  # past "[" and the space after it
    if text[i] == "]":
        return
    while True:
        item, i = decode(text, i)
        yield item
        i = _skip(text, i)
        if text[i] != ",":
            return  # the closing "]"
        i = _skip(text, i + 1)


def _skip(text: str, i: int) -> int:
    """Where the JSON whitespace at ``i`` ends."""
    match = _WHITESPACE.match(text, i)
    return match.end() if match else i


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _list_tail(shown: int, total: int) -> str:
    return f', "shown": {shown}, "total_items": {total}}}'


def _object_tail(shown: int, total: int) -> str:
    return f', "shown": {shown}, "total_keys": {total}}}'


def _list_wrapper(total: int) -> int:
    return len('{"items": []') + len(_list_tail(total, total))


def _object_wrapper(total: int) -> int:
    return len('{"keys": {}') + len(_object_tail(total, total))


def _fitting(parts: Iterator[str], budget: int, wrapper: int) -> list[str]:
    """The leading ``parts`` that fit in ``budget`` bytes, joined by ", ", with
    ``wrapper`` bytes around them."""
    shown: list[str] = []
    used = wrapper
    for part in parts:
        # surrogatepass: a lone surrogate from a JSON escape costs its three bytes.
        size = len(part.encode("utf-8", "surrogatepass")) + (2 if shown else 0)
        if used + size > budget:
            break
        shown.append(part)
        used += size
    return shown


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
