"""Circuit breaker: its state over time, its outages, and what they cost."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import streamlit as st

from dashboard import charts, queries, timeline, ui


@st.cache_data(ttl=ui.CACHE_SECONDS, show_spinner="Reading breaker events…")
def load(url: str, start: datetime, end: datetime) -> queries.BreakerData:
    return queries.breaker(ui.db_for(url), start, end)


def body(url: str) -> None:
    win = ui.window()
    data = load(url, win.start, win.end)
    segments = timeline.breaker_segments(data.events, data.state_before, data.start, data.end)
    spent = timeline.time_in_state(segments)
    outages = data.outages
    st.caption(f"{win.label}: {win.start:%Y-%m-%d %H:%M} to {win.end:%Y-%m-%d %H:%M} UTC")
    if data.events.empty and data.state_before.empty:
        st.info(
            "No breaker has changed state yet: every store call has gone through. "
            "Transitions appear here when the store fails."
        )
        return

    trips = int((data.events["to_state"] == "open").sum()) if len(data.events) else 0
    cols = st.columns(5)
    cols[0].metric("Trips", ui.fmt_int(trips), help="Transitions into open in this range.")
    cols[1].metric("Outages", ui.fmt_int(len(outages)))
    cols[2].metric("Time open", ui.fmt_seconds(spent["open"]))
    cols[3].metric("Time half-open", ui.fmt_seconds(spent["half_open"]))
    cols[4].metric(
        "Fallback oversize",
        ui.fmt_int(outages["fallback_oversize"].sum() if len(outages) else 0),
        help="Results that could be neither stored nor sent inline during outages.",
    )

    st.subheader("State timeline")
    if segments.empty:
        st.caption("No breaker state to draw in this range.")
    else:
        trips_at = data.events[data.events["to_state"] == "open"].assign(
            breaker=lambda e: [
                timeline.label(b, d) for b, d in zip(e["breaker"], e["daemon_id"], strict=True)
            ]
        )
        st.altair_chart(charts.breaker_timeline(segments, trips_at), width="stretch")

    st.subheader("Outages")
    if outages.empty:
        st.caption("No outage in this range.")
    else:
        st.altair_chart(charts.fallbacks_per_outage(outages), width="stretch")
        end = pd.Timestamp(data.end)
        table = outages.assign(
            duration_seconds=(outages["ended_at"].fillna(end) - outages["started_at"])
            .dt.total_seconds()
            .round(1),
            ongoing=outages["ended_at"].isna(),
        )
        st.dataframe(
            table[
                [
                    "breaker",
                    "daemon_id",
                    "started_at",
                    "ended_at",
                    "duration_seconds",
                    "ongoing",
                    "opened",
                    "reason",
                    "fallbacks",
                    "fallback_delivered",
                    "fallback_oversize",
                ]
            ],
            hide_index=True,
            column_config={
                "opened": st.column_config.NumberColumn(
                    "times opened", help="Failed probes re-open the breaker."
                ),
            },
        )

    with st.expander(f"Transitions ({len(data.events):,})"):
        st.dataframe(data.events, hide_index=True)


def render() -> None:
    st.title("Circuit breaker")
    url, _ = ui.database()
    ui.require_data(url, transactions=False)
    ui.live(lambda: body(url))


render()
