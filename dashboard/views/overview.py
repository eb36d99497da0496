"""Overview: what flowed through the bus in the chosen time range."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import streamlit as st

from dashboard import charts, queries, ui


@st.cache_data(ttl=ui.CACHE_SECONDS, show_spinner="Reading the audit trail…")
def load(url: str, start: datetime, end: datetime, bucket: int) -> queries.Overview:
    return queries.overview(ui.db_for(url), start, end, bucket)


def body(url: str) -> None:
    win = ui.window()
    data = load(url, win.start, win.end, win.bucket_seconds)
    totals = data.totals
    st.caption(
        f"{win.label}: {win.start:%Y-%m-%d %H:%M} to {win.end:%Y-%m-%d %H:%M} UTC · "
        f"read at {datetime.now():%H:%M:%S}"
    )
    if totals["transactions"] == 0:
        st.info(f"No transactions in the {win.label.lower()}. Pick a longer time range.")
        return

    failed_share = totals["failed"] / totals["transactions"]
    ratio = data.compression_ratio
    cols = st.columns(6)
    cols[0].metric("Transactions", ui.fmt_int(totals["transactions"]))
    cols[1].metric(
        "Failed",
        ui.fmt_int(totals["failed"]),
        f"{failed_share:.1%} of all",
        delta_color="off",
        delta_arrow="off",
        help="failed, rejected or corrupted",
    )
    cols[2].metric("Pending", ui.fmt_int(totals["pending"]))
    cols[3].metric("Bytes inline", ui.fmt_bytes(totals["inline_bytes"]))
    cols[4].metric("Bytes stored", ui.fmt_bytes(totals["stored_bytes"]))
    cols[5].metric(
        "Compression ratio",
        f"{ratio:.2f}{ui.TIMES}" if ratio else ui.NONE,
        help="Original bytes of stored payloads over their bytes at rest.",
    )

    left, right = st.columns(2)
    with left:
        st.subheader("Transactions per minute, by route")
        st.altair_chart(charts.volume(data.volume, data.bucket_seconds, "route"), width="stretch")
    with right:
        st.subheader("… and by status")
        st.altair_chart(charts.volume(data.volume, data.bucket_seconds, "status"), width="stretch")

    left, right = st.columns(2)
    with left:
        st.subheader("Bytes moved")
        st.altair_chart(
            charts.bytes_moved(
                totals["inline_bytes"], totals["stored_bytes"], totals["stored_at_rest_bytes"]
            ),
            width="stretch",
        )
    with right:
        st.subheader("Latency")
        if data.latency["n"].sum():
            st.altair_chart(charts.latency(data.latency), width="content")
        st.dataframe(
            data.latency.rename(index={"tool_ms": "tool (ms)", "store_ms": "store (ms)"}),
            column_config={
                p: st.column_config.NumberColumn(format="%.1f") for p in ("p50", "p95", "p99")
            },
        )
        if data.latency_capped:
            st.caption(
                f"Percentiles over the newest {queries.LATENCY_SAMPLE_CAP:,} transactions "
                "of the range (SQLite)."
            )

    left, middle, right = st.columns(3)
    with left:
        st.subheader("Error kinds")
        _ranked(data.errors, "error_kind", "No errors in this range.")
    with middle:
        st.subheader("Top tools")
        _ranked(data.tools, "tool", "No tools in this range.")
    with right:
        st.subheader("Tenants")
        _ranked(data.tenants, "tenant", "No tenants in this range.")


def _ranked(frame: pd.DataFrame, label: str, empty: str) -> None:
    if frame.empty:
        st.caption(empty)
        return
    st.altair_chart(charts.ranked_bars(frame, label, "transactions", "failed"), width="stretch")
    config = {}
    if "bytes" in frame:
        config["bytes"] = st.column_config.NumberColumn(format="%d")
    if "mean_tool_ms" in frame:
        config["mean_tool_ms"] = st.column_config.NumberColumn("mean tool ms", format="%.1f")
    st.dataframe(frame, hide_index=True, column_config=config)


def render() -> None:
    st.title("Overview")
    url, _ = ui.database()
    ui.require_data(url)
    ui.live(lambda: body(url))


render()
