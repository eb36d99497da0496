"""Transactions: find transactions, and follow one through its lifecycle."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from bus.models import Route, Status
from dashboard import charts, queries, timeline, ui

LIMIT = 200


@st.cache_data(ttl=ui.CACHE_SECONDS, show_spinner=False)
def load_choices(url: str, start: datetime, end: datetime) -> dict[str, list[str]]:
    return queries.filter_choices(ui.db_for(url), start, end)


@st.cache_data(ttl=ui.CACHE_SECONDS, show_spinner="Searching…")
def load_search(url: str, search: queries.TransactionFilter) -> pd.DataFrame:
    return queries.search_transactions(ui.db_for(url), search, limit=LIMIT)


@st.cache_data(ttl=ui.CACHE_SECONDS, show_spinner=False)
def load_one(url: str, transaction_id: uuid.UUID) -> dict[str, Any] | None:
    return queries.find_transaction(ui.db_for(url), transaction_id)


def search_form(url: str) -> tuple[queries.TransactionFilter, uuid.UUID | None]:
    win = ui.window()
    choices = load_choices(url, win.start, win.end)
    left, right = st.columns(2)
    typed_id = left.text_input(
        "Transaction id",
        value=st.query_params.get("id", ""),
        key="tx_id",
        placeholder="0190… or bustrail://transactions/0190…",
    )
    trace_id = right.text_input("Trace id", key="trace_id", placeholder="32 hex digits")
    cols = st.columns(4)
    tools = cols[0].multiselect("Tool", choices["tool"], key="tools")
    tenants = cols[1].multiselect("Tenant", choices["tenant"], key="tenants")
    statuses = cols[2].multiselect("Status", [s.value for s in Status], key="statuses")
    routes = cols[3].multiselect("Route", [r.value for r in Route], key="routes")
    transaction_id = queries.parse_transaction_id(typed_id) if typed_id.strip() else None
    if typed_id.strip() and transaction_id is None:
        st.warning(f"`{typed_id.strip()}` is not a transaction id (a UUIDv7).")
    search = queries.TransactionFilter(
        start=win.start,
        end=win.end,
        transaction_id=transaction_id,
        trace_id=trace_id.strip() or None,
        tools=tuple(tools),
        tenants=tuple(tenants),
        statuses=tuple(statuses),
        routes=tuple(routes),
    )
    return search, transaction_id


def results(rows: pd.DataFrame, search: queries.TransactionFilter) -> None:
    scope = (
        "by id"
        if search.transaction_id
        else "by trace id"
        if search.trace_id
        else ui.window().label.lower()
    )
    shown = f"newest {LIMIT}" if len(rows) >= LIMIT else f"{len(rows):,}"
    st.caption(f"{shown} matching transaction(s), {scope}")
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "created_at": st.column_config.DatetimeColumn(
                "created (UTC)", format="YYYY-MM-DD HH:mm:ss"
            ),
            "size": st.column_config.NumberColumn(format="%d"),
            "stored_size": st.column_config.NumberColumn(format="%d"),
            "tool_ms": st.column_config.NumberColumn(format="%.1f"),
        },
    )


def detail(url: str, transaction_id: uuid.UUID) -> None:
    row = load_one(url, transaction_id)
    if row is None:
        st.warning(f"No transaction {transaction_id} in this database.")
        return
    st.subheader(f"Transaction `{transaction_id}`")
    cols = st.columns(5)
    cols[0].metric("Status", str(row["status"]))
    cols[1].metric("Route", str(row["route"]))
    cols[2].metric("Size", ui.fmt_bytes(row["size"]), help=f"{row['size']:,} bytes")
    stored = row["stored_size"]
    cols[3].metric(
        "Stored size",
        ui.fmt_bytes(stored) if stored is not None else ui.NONE,
        f"{row['size'] / stored:.2f}{ui.TIMES} {row['compression']}" if stored else None,
        delta_color="off",
        delta_arrow="off",
    )
    cols[4].metric("Fetches", ui.fmt_int(row["fetch_count"]))

    steps = timeline.lifecycle(row)
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Lifecycle**")
        st.altair_chart(charts.lifecycle(steps), width="stretch")
    with right:
        st.dataframe(
            steps.assign(at=steps["at"].dt.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]),
            hide_index=True,
            column_config={
                "at": "at (UTC)",
                "after_seconds": st.column_config.NumberColumn("after created (s)", format="%.3f"),
            },
        )

    trace_id = row.get("trace_id")
    template = ui.settings().bustrail_trace_url_template
    if trace_id and template:
        st.markdown(f"**Trace:** [{trace_id}]({template.format(trace_id=trace_id)}) ↗")
    elif trace_id:
        st.markdown(
            f"**Trace:** `{trace_id}` (set BUSTRAIL_TRACE_URL_TEMPLATE, e.g. "
            "`http://jaeger:16686/trace/{trace_id}`, to link it)"
        )
    if row.get("error_kind") or row.get("error"):
        st.error(f"**{row.get('error_kind') or 'error'}**: {row.get('error') or ''}")

    fields = {
        "tenant": row["tenant"],
        "tool": row["tool"],
        "direction": row["direction"],
        "session / request": f"{row['session_id'] or ui.NONE} / {row['request_id'] or ui.NONE}",
        # The daemon that recorded it: the "@ daemon" of the breaker page's timelines.
        "daemon": row["daemon_id"],
        "mime type": row["mime_type"],
        "checksum (SHA-256)": row["checksum"],
        "compression": row["compression"],
        "chunks": row["chunk_count"],
        "tool ms": ui.fmt_ms(row["tool_ms"]),
        "store ms": ui.fmt_ms(row["store_ms"]),
        "span id": row["span_id"],
        "archived": "yes" if row.get("archived_at") else "no",
    }
    st.dataframe(
        pd.DataFrame(
            {
                "field": list(fields),
                "value": [ui.NONE if v is None else str(v) for v in fields.values()],
            }
        ),
        hide_index=True,
        height=35 * (len(fields) + 1) + 3,  # every field, no scrolling
    )


def render() -> None:
    st.title("Transactions")
    url, _ = ui.database()
    ui.require_data(url)
    search, typed_id = search_form(url)
    rows = load_search(url, search)
    results(rows, search)
    options = list(rows["id"])
    if typed_id is not None and str(typed_id) not in options:
        options.insert(0, str(typed_id))
    if not options:
        return
    labels = dict(zip(rows["id"], rows["tool"].fillna("") + " · " + rows["status"], strict=True))
    chosen = st.selectbox(
        "Details of",
        options,
        key="detail_id",
        format_func=lambda tid: f"{tid}  ({labels.get(tid, '')})",
    )
    if chosen:
        detail(url, uuid.UUID(chosen))


render()
