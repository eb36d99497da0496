"""Altair charts, one function per picture; each takes a small, aggregated DataFrame."""

from __future__ import annotations

import altair as alt
import pandas as pd

__all__ = [
    "breaker_timeline",
    "burn_down",
    "bytes_moved",
    "debt_by_kind",
    "fallbacks_per_outage",
    "latency",
    "lifecycle",
    "ranked_bars",
    "volume",
]

# One colour per status everywhere: good outcomes cool, bad ones warm.
STATUS_COLORS = {
    "delivered": "#2e9d5b",
    "fetched": "#2f7ed8",
    "stored": "#6cb6e8",
    "expired": "#a0a7b4",
    "pending": "#f2b632",
    "failed": "#d64541",
    "rejected": "#8e1b1b",
    "corrupted": "#8e44ad",
}
ROUTE_COLORS = {"inline": "#2e9d5b", "store": "#2f7ed8", "fallback": "#f28e2b"}
STATE_COLORS = {"closed": "#2e9d5b", "half_open": "#f2b632", "open": "#d64541"}
SEVERITY_COLORS = {
    "info": "#6cb6e8",
    "warning": "#f2b632",
    "error": "#e8743b",
    "critical": "#d64541",
}


def _scale(colors: dict[str, str]) -> alt.Scale:
    return alt.Scale(domain=list(colors), range=list(colors.values()))


def _utc_wall_clock(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Vega-Lite draws time in the browser's zone; the pages speak UTC. Naive UTC
    timestamps are drawn as they are, so the axes read UTC wherever the reader is."""
    frame = frame.copy()
    for column in columns:
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.tz_localize(None)
    return frame


def volume(frame: pd.DataFrame, bucket_seconds: int, by: str) -> alt.Chart:
    """Transactions per minute over time, stacked by ``by`` (route or status)."""
    colors = ROUTE_COLORS if by == "route" else STATUS_COLORS
    data = (
        _utc_wall_clock(frame, "bucket")
        .groupby(["bucket", by], as_index=False)["transactions"]
        .sum()
    )
    data["per_minute"] = data["transactions"] / (bucket_seconds / 60)
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("bucket:T", title="UTC"),
            y=alt.Y("per_minute:Q", title="transactions / minute", stack="zero"),
            color=alt.Color(f"{by}:N", scale=_scale(colors), title=by),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format="%Y-%m-%d %H:%M"),
                alt.Tooltip(f"{by}:N"),
                alt.Tooltip("transactions:Q", format=","),
                alt.Tooltip("per_minute:Q", format=",.2f", title="per minute"),
            ],
        )
        .properties(height=240)
    )


def bytes_moved(inline: int, stored: int, at_rest: int) -> alt.Chart:
    data = pd.DataFrame(
        {
            "what": ["inline (WebSocket)", "stored (original)", "stored (at rest)"],
            "bytes": [inline, stored, at_rest],
            "mb": [inline / 2**20, stored / 2**20, at_rest / 2**20],
        }
    )
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            y=alt.Y("what:N", title=None, sort=None),
            x=alt.X("mb:Q", title="MB"),
            color=alt.Color(
                "what:N",
                legend=None,
                scale=alt.Scale(range=["#2e9d5b", "#2f7ed8", "#6cb6e8"]),
            ),
            tooltip=[alt.Tooltip("what:N"), alt.Tooltip("bytes:Q", format=",")],
        )
        .properties(height=140)
    )


def latency(frame: pd.DataFrame) -> alt.Chart:
    """p50/p95/p99 bars for tool and store latency (``frame`` from queries.overview)."""
    data = (
        frame.drop(columns=["n"])
        .reset_index()
        .melt(id_vars="latency", var_name="percentile", value_name="ms")
        .dropna()
    )
    data["latency"] = data["latency"].map({"tool_ms": "tool", "store_ms": "store"})
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("percentile:N", title=None, sort=["p50", "p95", "p99"]),
            y=alt.Y("ms:Q", title="milliseconds"),
            color=alt.Color(
                "percentile:N",
                sort=["p50", "p95", "p99"],
                scale=alt.Scale(range=["#6cb6e8", "#f2b632", "#d64541"]),
            ),
            column=alt.Column("latency:N", title=None),
            tooltip=[
                alt.Tooltip("latency:N"),
                alt.Tooltip("percentile:N"),
                alt.Tooltip("ms:Q", format=",.1f"),
            ],
        )
        .properties(height=200, width=140)
    )


def ranked_bars(frame: pd.DataFrame, label: str, value: str, failed: str | None) -> alt.Chart:
    """Horizontal bars, largest first; failures drawn over the total when given."""
    base = alt.Chart(frame).encode(
        y=alt.Y(f"{label}:N", sort="-x", title=None),
        tooltip=[alt.Tooltip(f"{label}:N")]
        + [alt.Tooltip(f"{c}:Q", format=",") for c in (value, failed) if c],
    )
    chart = base.mark_bar(color="#2f7ed8").encode(x=alt.X(f"{value}:Q", title=value))
    if failed:
        chart = chart + base.mark_bar(color="#d64541").encode(x=alt.X(f"{failed}:Q"))
    return chart.properties(height=alt.Step(22))


def breaker_timeline(segments: pd.DataFrame, trips: pd.DataFrame) -> alt.LayerChart:
    """Each breaker's state over time, one lane per breaker, with a red tick at every
    trip (outages are short next to a day: the ticks keep them visible)."""
    data = _utc_wall_clock(segments, "start", "end").assign(duration=segments["seconds"].round(1))
    lanes = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("start:T", title="UTC"),
            x2="end:T",
            y=alt.Y("breaker:N", title=None),
            color=alt.Color("state:N", scale=_scale(STATE_COLORS), title="state"),
            tooltip=[
                alt.Tooltip("breaker:N"),
                alt.Tooltip("state:N"),
                alt.Tooltip("start:T", format="%Y-%m-%d %H:%M:%S"),
                alt.Tooltip("end:T", format="%Y-%m-%d %H:%M:%S"),
                alt.Tooltip("duration:Q", title="seconds", format=",.1f"),
            ],
        )
    )
    marks = (
        alt.Chart(_utc_wall_clock(trips, "at"))
        .mark_tick(color=STATE_COLORS["open"], thickness=3, size=34)
        .encode(
            x="at:T",
            y=alt.Y("breaker:N"),
            tooltip=[
                alt.Tooltip("breaker:N"),
                alt.Tooltip("at:T", title="tripped at", format="%Y-%m-%d %H:%M:%S"),
                alt.Tooltip("reason:N"),
            ],
        )
    )
    return (lanes + marks).properties(height=alt.Step(44))


def fallbacks_per_outage(outages: pd.DataFrame) -> alt.Chart:
    data = outages.assign(
        outage=outages["started_at"].dt.strftime("%m-%d %H:%M:%S")
        + " · "
        + outages["breaker"].astype(str),
        other=outages["fallbacks"] - outages["fallback_delivered"] - outages["fallback_oversize"],
    ).melt(
        id_vars=["outage"],
        value_vars=["fallback_delivered", "fallback_oversize", "other"],
        var_name="outcome",
        value_name="transactions",
    )
    data["outcome"] = data["outcome"].map(
        {
            "fallback_delivered": "delivered inline",
            "fallback_oversize": "failed: fallback_oversize",
            "other": "failed: other",
        }
    )
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("outage:N", title="outage started (UTC)"),
            y=alt.Y("transactions:Q", title="fallbacks", stack="zero"),
            color=alt.Color(
                "outcome:N",
                scale=alt.Scale(
                    domain=["delivered inline", "failed: fallback_oversize", "failed: other"],
                    range=["#2e9d5b", "#d64541", "#a0a7b4"],
                ),
            ),
            tooltip=["outage:N", "outcome:N", alt.Tooltip("transactions:Q", format=",")],
        )
        .properties(height=220)
    )


def debt_by_kind(frame: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("kind:N", title=None, sort="-x"),
            x=alt.X(
                "sum(findings):Q",
                title="open findings (acknowledged included)",
                axis=alt.Axis(tickMinStep=1, format="d"),
            ),
            color=alt.Color("severity:N", scale=_scale(SEVERITY_COLORS)),
            tooltip=[
                "kind:N",
                "severity:N",
                "status:N",
                alt.Tooltip("findings:Q", format=","),
                alt.Tooltip("occurrences:Q", format=","),
            ],
        )
        .properties(height=alt.Step(28))
    )


def burn_down(runs: pd.DataFrame) -> alt.LayerChart:
    """Open debt after each analysis run; runs that reopened findings marked red."""
    base = alt.Chart(_utc_wall_clock(runs, "started_at")).encode(
        x=alt.X("started_at:T", title="analysis run (UTC)")
    )
    tooltip = [
        alt.Tooltip("id:Q", title="run"),
        alt.Tooltip("started_at:T", format="%Y-%m-%d %H:%M"),
        alt.Tooltip("open_count:Q", title="open"),
        alt.Tooltip("new_count:Q", title="new"),
        alt.Tooltip("resolved_count:Q", title="resolved"),
        alt.Tooltip("reopened_count:Q", title="reopened (regressions)"),
    ]
    line = base.mark_line(point=True, color="#2f7ed8").encode(
        y=alt.Y("open_count:Q", title="open findings", axis=alt.Axis(tickMinStep=1)),
        tooltip=tooltip,
    )
    regressions = (
        base.transform_filter(alt.datum.reopened_count > 0)
        .mark_point(shape="triangle-up", size=160, filled=True, color="#d64541")
        .encode(y="open_count:Q", tooltip=tooltip)
    )
    return (line + regressions).properties(height=240)


def lifecycle(steps: pd.DataFrame) -> alt.LayerChart:
    """A transaction's steps, one row each, placed by time since it was created (on a
    symmetric-log axis: milliseconds to store and two days to expire both show)."""
    data = steps.assign(
        label=steps["after_seconds"].map(_after),
        at=steps["at"].dt.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3],
    )
    base = alt.Chart(data).encode(
        x=alt.X(
            "after_seconds:Q",
            title="seconds after created (symlog)",
            scale=alt.Scale(type="symlog", constant=0.01),
        ),
        y=alt.Y("step:N", sort=None, title=None),
        tooltip=[
            alt.Tooltip("step:N"),
            alt.Tooltip("at:N", title="at (UTC)"),
            alt.Tooltip("after_seconds:Q", title="seconds after created", format=",.3f"),
        ],
    )
    rule = base.mark_rule(color="#a0a7b4").encode(x2=alt.datum(0))
    dots = base.mark_point(size=140, filled=True, color="#2f7ed8")
    labels = base.mark_text(align="left", dx=9).encode(text="label:N")
    return (rule + dots + labels).properties(height=alt.Step(30))


def _after(seconds: float) -> str:
    if seconds < 1:
        return f"+{seconds * 1000:,.0f} ms"
    if seconds < 120:
        return f"+{seconds:,.1f} s"
    if seconds < 7200:
        return f"+{seconds / 60:,.1f} min"
    return f"+{seconds / 3600:,.1f} h"
