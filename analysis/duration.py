"""Durations written the way people type them: ``90s``, ``15m``, ``24h``, ``7d``.

Used by ``bustrail analyze --since`` and by detector parameters given as text. Pure.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["DurationError", "format_duration", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_EXAMPLES = "like 90s, 15m, 24h or 7d"


class DurationError(ValueError):
    """Text that is not a duration; the message says what was expected."""


def parse_duration(text: str) -> timedelta:
    """``"15m"`` -> ``timedelta(minutes=15)``. A number and one unit (s, m, h, d, w),
    greater than zero; anything else raises DurationError naming the expected form."""
    cleaned = text.strip().lower()
    match = _DURATION.match(cleaned)
    if not match:
        if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
            raise DurationError(
                f"{text!r} has no unit: write a number followed by s, m, h or d ({_EXAMPLES})"
            )
        raise DurationError(
            f"{text!r} is not a duration: write a number followed by s, m, h or d ({_EXAMPLES})"
        )
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise DurationError(f"{text!r} is not a duration: it must be greater than zero")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise DurationError(f"{text!r} is too long a duration") from None


def format_duration(value: timedelta) -> str:
    """The shortest exact form: ``timedelta(hours=24)`` -> ``"1d"``, 90 s -> ``"90s"``."""
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
