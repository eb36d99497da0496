"""Breaker flapping episodes, from transitions alone (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from analysis.trends import Episode, flapping_episodes

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
UNTIL = T0 + timedelta(hours=5)


def cycle(*minutes: float) -> list[tuple[datetime, str]]:
    """An open at each minute, half_open half a minute later."""
    out = []
    for m in minutes:
        out += [(T0 + m * MIN, "open"), (T0 + (m + 0.5) * MIN, "half_open")]
    return out


def episodes(transitions: list[tuple[datetime, str]], opens: int = 3) -> list[Episode]:
    return flapping_episodes(transitions, min_opens=opens, window=10 * MIN, until=UNTIL)


def test_three_opens_within_the_window_flap_until_the_breaker_leaves_open() -> None:
    assert episodes(cycle(0, 4, 9)) == [Episode(T0, T0 + 9.5 * MIN, 3)]


def test_opens_spread_wider_than_the_window_do_not() -> None:
    assert episodes(cycle(0, 6, 12, 18)) == []
    assert episodes(cycle(0, 4, 9), opens=4) == []


def test_an_episode_grows_while_opens_keep_coming_and_a_pause_splits_it() -> None:
    found = episodes(cycle(0, 4, 8, 12, 16, 60, 61, 62))
    assert found == [
        Episode(T0, T0 + 16.5 * MIN, 5),
        Episode(T0 + 60 * MIN, T0 + 62.5 * MIN, 3),
    ]


def test_a_breaker_still_open_flaps_until_the_end_of_the_window() -> None:
    transitions = [*cycle(0, 2), (T0 + 4 * MIN, "open")]
    assert episodes(transitions) == [Episode(T0, UNTIL, 3)]


def test_order_of_the_input_does_not_matter() -> None:
    assert episodes(list(reversed(cycle(0, 4, 9)))) == [Episode(T0, T0 + 9.5 * MIN, 3)]
