"""Durations as `--since` takes them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from analysis.duration import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        (" 10M ", timedelta(minutes=10)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("15", "has no unit"),
        ("5x", "is not a duration"),
        ("-3h", "is not a duration"),
        ("0s", "greater than zero"),
        ("", "is not a duration"),
        ("1h30m", "is not a duration"),
        ("99999999999d", "too long"),
    ],
)
def test_bad_durations_say_what_is_expected(text: str, why: str) -> None:
    with pytest.raises(DurationError, match=why) as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=7), "1w"),
        (timedelta(hours=24), "1d"),
        (timedelta(hours=36), "36h"),
        (timedelta(minutes=15), "15m"),
        (timedelta(seconds=90), "90s"),
        (timedelta(seconds=1.5), "1.5s"),
    ],
)
def test_format_duration_round_trips(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value
