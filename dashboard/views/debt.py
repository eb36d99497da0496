"""Silent failures / debt: what the detectors found, what is still open, and whether
the debt is burning down."""

from __future__ import annotations

import getpass
from typing import Any

import pandas as pd
import streamlit as st

from bus.errors import BustrailError
from dashboard import charts, queries, ui

# Streamlit badges, not emoji: a browser without an emoji font shows those as boxes.
SEVERITY_BADGE = {"critical": "red", "error": "orange", "warning": "yellow", "info": "blue"}


@st.cache_data(ttl=ui.CACHE_SECONDS, show_spinner="Reading the debt ledger…")
def load(url: str) -> queries.Debt:
    return queries.debt(ui.db_for(url))


@st.cache_data(ttl=ui.CACHE_SECONDS, show_spinner=False)
def load_samples(url: str, ids: tuple[str, ...]) -> pd.DataFrame:
    return queries.transactions_by_ids(ui.db_for(url), ids)


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "dashboard"


def summary(data: queries.Debt) -> None:
    runs = data.runs
    cols = st.columns(4)
    cols[0].metric("Open findings", ui.fmt_int(data.totals["open"]))
    cols[1].metric("Acknowledged", ui.fmt_int(data.totals["acknowledged"]))
    cols[2].metric("Open regressions", ui.fmt_int(data.totals["regressions"]))
    if len(runs):
        last = runs.iloc[-1]
        delta = int(last["open_count"] - runs.iloc[-2]["open_count"]) if len(runs) > 1 else None
        cols[3].metric(
            "Open after last run",
            ui.fmt_int(last["open_count"]),
            delta,
            delta_color="inverse",
            help=f"Open and acknowledged findings after run {last['id']} "
            f"({last['started_at']:%Y-%m-%d %H:%M} UTC), against the run before it.",
        )
    else:
        cols[3].metric("Open after last run", ui.NONE)

    left, right = st.columns(2)
    with left:
        st.subheader("Open debt by kind")
        if data.by_kind.empty:
            st.caption("Nothing open.")
        else:
            st.altair_chart(charts.debt_by_kind(data.by_kind), width="stretch")
    with right:
        st.subheader("Burn-down")
        if runs.empty:
            st.caption("No analysis run recorded yet: `bustrail analyze --record`.")
        else:
            st.altair_chart(charts.burn_down(runs), width="stretch")
            st.caption("▲ red: a run that reopened findings (regressions).")


def findings_table(findings: pd.DataFrame) -> pd.DataFrame:
    statuses = st.multiselect(
        "Show findings that are",
        ["open", "acknowledged", "resolved"],
        default=["open", "acknowledged"],
        key="finding_statuses",
    )
    shown = findings[findings["status"].isin(statuses)]
    st.dataframe(
        shown[
            [
                "id",
                "severity",
                "kind",
                "status",
                "title",
                "occurrences",
                "regression",
                "reopened_count",
                "last_seen_at",
                "acknowledged_by",
            ]
        ],
        hide_index=True,
        column_config={
            "regression": st.column_config.CheckboxColumn("regression"),
            "reopened_count": st.column_config.NumberColumn("reopened"),
            "last_seen_at": st.column_config.DatetimeColumn(
                "last seen (UTC)", format="YYYY-MM-DD HH:mm"
            ),
        },
    )
    return shown


def finding_detail(url: str, finding: dict[str, Any]) -> None:
    color = SEVERITY_BADGE.get(finding["severity"], "gray")
    mark = f":{color}-badge[{finding['severity']}]"
    regression = " · :red-badge[:material/replay: regression]" if finding["regression"] else ""
    st.subheader(f"{mark} #{finding['id']} {finding['title']}")
    st.markdown(
        f"`{finding['kind']}` · {finding['severity']} · **{finding['status']}**{regression} · "
        f"{finding['occurrences']:,} occurrence(s) · first seen "
        f"{finding['first_seen_at']:%Y-%m-%d %H:%M}, last seen "
        f"{finding['last_seen_at']:%Y-%m-%d %H:%M} UTC"
    )
    left, right = st.columns(2)
    left.markdown(f"**What happened**\n\n{finding['explanation']}")
    right.markdown(f"**Remedy**\n\n{finding['remedy']}")
    if finding["status"] == "acknowledged":
        st.caption(
            f"Acknowledged by {finding['acknowledged_by']} at "
            f"{finding['acknowledged_at']:%Y-%m-%d %H:%M} UTC"
        )

    samples = load_samples(url, tuple(finding["sample_transaction_ids"]))
    st.markdown(f"**Transactions involved** ({len(samples)} sample(s))")
    if samples.empty:
        st.caption("No sample transaction is still in the database.")
    else:
        st.dataframe(
            samples.assign(open=samples["id"].map(lambda i: f"./transactions?id={i}")),
            hide_index=True,
            column_config={"open": st.column_config.LinkColumn("details", display_text="open")},
        )

    if finding["status"] == "open":
        who, button = st.columns([3, 1], vertical_alignment="bottom")
        by = who.text_input("Acknowledged by", value=_default_user(), key="ack_by")
        if button.button("Acknowledge", key="ack", type="primary"):
            _acknowledge(url, int(finding["id"]), by.strip() or _default_user())


def _acknowledge(url: str, finding_id: int, by: str) -> None:
    try:
        queries.acknowledge(ui.db_for(url), finding_id, by)
    except BustrailError as exc:
        st.error(f"Could not acknowledge #{finding_id}: {exc}")
        return
    load.clear()
    st.toast(f"#{finding_id} acknowledged by {by}")
    st.rerun()


def render() -> None:
    st.title("Silent failures / debt")
    url, _ = ui.database()
    ui.require_data(url, transactions=False)
    data = load(url)
    if data.findings.empty and data.runs.empty:
        st.info(
            "No findings yet. Run `bustrail analyze --record` to look for silent failures "
            "in the audit trail and record them here."
        )
        return
    summary(data)
    st.subheader("Findings")
    shown = findings_table(data.findings)
    if shown.empty:
        return
    records = {int(r["id"]): r for r in shown.to_dict("records")}
    chosen = st.selectbox(
        "Drill into",
        list(records),
        key="finding_id",
        format_func=lambda i: (
            f"#{i} [{records[i]['severity']}] {records[i]['kind']}: {records[i]['title']}"
        ),
    )
    if chosen is not None:
        finding_detail(url, records[chosen])


render()
