"""Fixtures for the daemon tests: a real daemon on an ephemeral port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.daemon import ThreadDaemon, thread_daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[ThreadDaemon]:
    """The daemon with its defaults (embedded SQLite, auth off), in this process."""
    with thread_daemon(tmp_path) as running:
        yield running
