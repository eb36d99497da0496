"""A look at a successful result for signs that it is not one. Pure: no I/O.

Tools fail silently in two common ways: they "succeed" with nothing, or they succeed
with an error message as their result ("Error: rate limited", a traceback, a JSON
``{"error": ...}``). The daemon cannot refuse such a result, but it can say so in the
audit record (``error_kind`` on a delivered or stored transaction), where the
``empty_success`` detector finds it.
"""

from __future__ import annotations

import json
import re

__all__ = ["EMPTY_RESULT", "ERROR_TEXT", "suspicious_result"]

EMPTY_RESULT = "empty_result"
ERROR_TEXT = "error_text"

_HEAD = 2048
_ERROR_START = re.compile(
    rb"^\s*(error|exception|traceback \(most recent call last\)|fatal|failed|failure)\b[:\s]",
    re.IGNORECASE,
)


def suspicious_result(payload: bytes) -> str | None:
    """``empty_result``, ``error_text`` or None for a result that looks genuine."""
    head = payload[:_HEAD]
    if not head.strip() or head.strip() in (b"null", b"{}", b"[]", b'""'):
        return EMPTY_RESULT
    if _ERROR_START.match(head):
        return ERROR_TEXT
    stripped = head.lstrip()
    if stripped.startswith(b"{") and len(payload) <= _HEAD:
        try:
            doc = json.loads(payload)
        except ValueError:
            return None
        if isinstance(doc, dict) and set(doc) & {"error", "errors", "exception"} and len(doc) <= 3:
            return ERROR_TEXT
    return None
