"""What every page shares: the database, the time range, the empty-database notice,
caching, and number formatting. Streamlit lives here and in the pages, not in
:mod:`dashboard.queries`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import streamlit as st

from bus.db import Database, mask_url
from bus.errors import BustrailError, SettingsError
from bus.settings import Settings, load_settings
from dashboard import queries

__all__ = [
    "CACHE_SECONDS",
    "NONE",
    "RANGES",
    "TIMES",
    "Window",
    "database",
    "db_for",
    "fmt_bytes",
    "fmt_int",
    "fmt_ms",
    "fmt_seconds",
    "live",
    "require_data",
    "settings",
    "sidebar",
    "window",
]

CACHE_SECONDS = 10
AUTO_REFRESH_SECONDS = 15
# label -> (span, bucket): buckets sized so a chart has at most a few hundred of them
RANGES: dict[str, tuple[timedelta, int]] = {
    "Last 15 minutes": (timedelta(minutes=15), 60),
    "Last hour": (timedelta(hours=1), 60),
    "Last 6 hours": (timedelta(hours=6), 300),
    "Last 24 hours": (timedelta(hours=24), 900),
    "Last 7 days": (timedelta(days=7), 3600),
    "Last 30 days": (timedelta(days=30), 4 * 3600),
}
DEFAULT_RANGE = "Last 24 hours"
# Typography kept out of string literals (the linter flags look-alike characters).
NONE = "\u2013"  # en dash: no value
TIMES = "\u00d7"  # multiplication sign: a ratio
NO_DATA = (
    "**No data yet.** Run `make demo` (or `bustrail load` against a running daemon) to "
    "fill the audit trail, then come back."
)


def settings() -> Settings:
    """The settings, read from the environment and `.env`; a bad one stops the page."""
    try:
        return load_settings()
    except SettingsError as exc:
        st.error(f"bustrail's settings are not valid:\n\n{exc}")
        st.stop()
        raise  # unreachable: st.stop() raises


@st.cache_resource(show_spinner=False)
def db_for(url: str) -> Database:
    """One Database (engine and pool) per URL for the whole server process."""
    return Database(url, pool_size=2)


def database() -> tuple[str, Database]:
    """DATABASE_URL and its (cached) Database."""
    url = settings().database_url.get_secret_value()
    return url, db_for(url)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def _state(url: str) -> queries.DatabaseState:
    return queries.database_state(url)


def require_data(url: str, *, transactions: bool = True) -> None:
    """Stop the page with a friendly notice when there is nothing to show."""
    try:
        state = _state(url)
    except BustrailError as exc:
        st.error(f"Cannot read the database {mask_url(url)}: {exc}")
        st.stop()
    if state == "ok" or (state == "empty" and not transactions):
        return
    where = f"`{mask_url(url)}`"
    detail = {
        "missing": f"The database file {where} does not exist yet.",
        "no_schema": f"The database {where} has no bustrail tables yet.",
        "empty": f"The database {where} has no transactions yet.",
    }[state]
    if state == "empty" and not url.startswith("sqlite"):
        detail += (
            " If daemons do write here, this role may be one that row-level security "
            "limits to a single tenant: the dashboard reads every tenant, so connect it "
            "as the role that ran `bustrail db upgrade`."
        )
    st.info(f"{NO_DATA}\n\n{detail}", icon=":material/hourglass_empty:")
    st.stop()


@dataclass(frozen=True)
class Window:
    label: str
    start: datetime
    end: datetime
    bucket_seconds: int


def window() -> Window:
    """The time range picked in the sidebar. Its end is now rounded up to the cache
    period, so reruns within it ask the same question and hit the cache."""
    label = st.session_state.get("range", DEFAULT_RANGE)
    span, bucket = RANGES.get(label, RANGES[DEFAULT_RANGE])
    now = datetime.now(UTC).timestamp()
    end = datetime.fromtimestamp(math.ceil(now / CACHE_SECONDS) * CACHE_SECONDS, UTC)
    return Window(label, end - span, end, bucket)


def sidebar() -> None:
    """The controls every page shares (drawn once, by the app, before the page)."""
    with st.sidebar:
        st.selectbox("Time range", list(RANGES), index=3, key="range")
        st.toggle(
            f"Auto-refresh every {AUTO_REFRESH_SECONDS} s",
            key="auto_refresh",
            help="Re-read the charts while the page is open.",
        )


def live(body: Callable[[], None]) -> None:
    """Run ``body`` as a fragment that reruns itself while auto-refresh is on."""
    every = AUTO_REFRESH_SECONDS if st.session_state.get("auto_refresh") else None
    st.fragment(body, run_every=every)()


# -- formatting --------------------------------------------------------------------------
def fmt_int(value: Any) -> str:
    return f"{int(value):,}"


def fmt_bytes(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NONE
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"  # unreachable


def fmt_ms(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NONE
    return f"{float(value):,.1f} ms"


def fmt_seconds(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
