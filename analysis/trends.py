"""The detectors that compare over time: error-rate and latency regressions per tool
(current window against a baseline window) and breaker flapping.

The databases do the counting (GROUP BY tool, and the p95 with ``percentile_cont`` on
PostgreSQL); only per-tool figures, then the transactions of the tools flagged, reach
pandas. :func:`flapping_episodes` is pure and tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from analysis.findings import Hit
from analysis.scan import Scan, hits_by_tool

__all__ = [
    "Episode",
    "breaker_flapping",
    "error_rate_regressions",
    "flapping_episodes",
    "latency_regressions",
]

_ERROR_RATE_STEP = 0.1  # flag at >= max(2 x baseline, baseline + 0.1)
_LATENCY_FACTOR = 2.0  # flag at p95 > 2 x baseline p95 ...
_LATENCY_MARGIN_MS = 100.0  # ... and > baseline p95 + 100 ms


# -- error rate ----------------------------------------------------------------------------
def error_rate_regressions(scan: Scan) -> list[Hit]:
    counts = scan.frame("call_errors_by_tool")
    min_calls = scan.params.min_calls
    flagged: dict[str, dict[str, Any]] = {}
    for row in counts.itertuples(index=False):
        current_calls, baseline_calls = int(row.current_calls or 0), int(row.baseline_calls or 0)
        if current_calls < min_calls or baseline_calls < min_calls:
            continue
        current = int(row.current_errors or 0) / current_calls
        baseline = int(row.baseline_errors or 0) / baseline_calls
        if current > 0 and current >= max(2 * baseline, baseline + _ERROR_RATE_STEP):
            flagged[str(row.tool)] = {
                "current_rate": round(current, 4),
                "baseline_rate": round(baseline, 4),
                "current_calls": current_calls,
                "baseline_calls": baseline_calls,
                "current_errors": int(row.current_errors or 0),
                "baseline_errors": int(row.baseline_errors or 0),
            }
    if not flagged:
        return []
    hits = hits_by_tool(scan.frame("call_errors", tools=sorted(flagged)))
    for hit in hits:
        facts = flagged[str(hit.subject)]
        hit.details = facts
        hit.note = (
            f"Now {facts['current_rate']:.0%} of {facts['current_calls']} calls fail, "
            f"against {facts['baseline_rate']:.0%} of {facts['baseline_calls']} in the "
            "baseline window."
        )
    return hits


# -- latency ---------------------------------------------------------------------------------
def _latency_figures(scan: Scan) -> pd.DataFrame:
    """tool, current_calls, current_p95, baseline_calls, baseline_p95."""
    rows = scan.frame("latency_by_tool")
    if scan.dialect == "postgresql" or rows.empty:
        return rows
    # SQLite: the p95 of the rows already filtered (linear, as percentile_cont).
    rows = rows.astype({"tool_ms": float, "is_current": int})
    stats = rows.groupby(["tool", "is_current"])["tool_ms"].agg(
        calls="count", p95=lambda s: s.quantile(0.95)
    )
    out = []
    for tool in sorted(set(rows["tool"])):
        cur = stats.loc[(tool, 1)] if (tool, 1) in stats.index else None
        base = stats.loc[(tool, 0)] if (tool, 0) in stats.index else None
        out.append(
            {
                "tool": tool,
                "current_calls": 0 if cur is None else int(cur["calls"]),
                "current_p95": None if cur is None else float(cur["p95"]),
                "baseline_calls": 0 if base is None else int(base["calls"]),
                "baseline_p95": None if base is None else float(base["p95"]),
            }
        )
    return pd.DataFrame(out)


def latency_regressions(scan: Scan) -> list[Hit]:
    min_calls = scan.params.min_calls
    hits = []
    for row in _latency_figures(scan).itertuples(index=False):
        current_calls, baseline_calls = int(row.current_calls or 0), int(row.baseline_calls or 0)
        if current_calls < min_calls or baseline_calls < min_calls:
            continue
        current, baseline = float(row.current_p95), float(row.baseline_p95)
        if not (current > _LATENCY_FACTOR * baseline and current > baseline + _LATENCY_MARGIN_MS):
            continue
        # A call is one of the slow ones by the test the p95 passed, margin included:
        # with a baseline of a few ms, twice the baseline is within ordinary jitter
        # (scheduling, a busy host), and a call that merely jittered is no finding.
        slower_than = max(_LATENCY_FACTOR * baseline, baseline + _LATENCY_MARGIN_MS)
        found = hits_by_tool(scan.frame("slow_calls", tool=str(row.tool), slower_than=slower_than))
        hit = found[0] if found else Hit(subject=str(row.tool), transaction_ids=[])
        hit.details = {
            "current_p95_ms": round(current, 3),
            "baseline_p95_ms": round(baseline, 3),
            "current_calls": current_calls,
            "baseline_calls": baseline_calls,
            "slower_than_ms": round(slower_than, 3),
        }
        hit.note = (
            f"p95 is now {current:,.0f} ms over {current_calls} calls, against "
            f"{baseline:,.0f} ms over {baseline_calls} in the baseline window."
        )
        hits.append(hit)
    return hits


# -- breaker flapping ------------------------------------------------------------------------
@dataclass(frozen=True)
class Episode:
    """A stretch in which a breaker opened at least ``min_opens`` times within the window:
    from its first such open until it next left ``open`` after the last one."""

    start: datetime
    end: datetime
    opens: int


def flapping_episodes(
    transitions: list[tuple[datetime, str]],
    *,
    min_opens: int,
    window: timedelta,
    until: datetime,
) -> list[Episode]:
    """Episodes of one breaker from its transitions (time, to_state), in time order.

    An open is flapping when it is one of ``min_opens`` opens that fit in ``window``;
    flapping opens no more than ``window`` apart form one episode."""
    transitions = sorted(transitions)
    opens = [at for at, state in transitions if state == "open"]
    flapping = [False] * len(opens)
    last = 0
    for first in range(len(opens)):
        last = max(last, first)
        while last + 1 < len(opens) and opens[last + 1] - opens[first] <= window:
            last += 1
        if last - first + 1 >= min_opens:
            for i in range(first, last + 1):
                flapping[i] = True
    groups: list[list[datetime]] = []
    for at, is_flapping in zip(opens, flapping, strict=True):
        if not is_flapping:
            continue
        if groups and at - groups[-1][-1] <= window:
            groups[-1].append(at)
        else:
            groups.append([at])
    episodes = []
    for group in groups:
        left = next((at for at, state in transitions if at > group[-1] and state != "open"), until)
        episodes.append(Episode(start=group[0], end=left, opens=len(group)))
    return episodes


def breaker_flapping(scan: Scan) -> list[Hit]:
    events = scan.frame("breaker_transitions")
    if events.empty:
        return []
    events = events.assign(
        at=pd.to_datetime(events["at"], utc=True),
        daemon_id=events["daemon_id"].astype(object).where(events["daemon_id"].notna(), None),
    )
    by_breaker: dict[str, list[tuple[str | None, Episode]]] = {}
    for (breaker, daemon), group in events.groupby(["breaker", "daemon_id"], dropna=False):
        transitions = [
            (ts.to_pydatetime(), str(state))
            for ts, state in zip(group["at"], group["to_state"], strict=True)
        ]
        found = flapping_episodes(
            transitions,
            min_opens=scan.params.flap_opens,
            window=scan.params.flap_window,
            until=scan.now,
        )
        daemon_id = None if pd.isna(daemon) else str(daemon)
        by_breaker.setdefault(str(breaker), []).extend((daemon_id, e) for e in found)
    hits = []
    for breaker, episodes in sorted(by_breaker.items()):
        if not episodes:
            continue
        ids: set[str] = set()
        tenants: set[str] = set()
        for daemon, episode in episodes:
            # Only the fallbacks of the daemon whose breaker flapped.
            fallbacks = scan.frame(
                "fallbacks_between", start=episode.start, end=episode.end, daemon_id=daemon
            )
            for hit in hits_by_tool(fallbacks):
                ids.update(hit.transaction_ids)
                tenants.update(hit.tenants)
        opens = sum(e.opens for _d, e in episodes)
        hits.append(
            Hit(
                subject=breaker,
                transaction_ids=sorted(ids),
                tenants=sorted(tenants),
                count=opens,
                details={
                    "breaker": breaker,
                    "opens": opens,
                    "episodes": [
                        {
                            "daemon_id": daemon,
                            "start": e.start.isoformat(),
                            "end": e.end.isoformat(),
                            "opens": e.opens,
                        }
                        for daemon, e in episodes
                    ],
                },
                note=(
                    f"Breaker {breaker!r} opened {opens} times in {len(episodes)} flapping "
                    f"episode(s); {len(ids)} result(s) fell back to the WebSocket meanwhile."
                ),
            )
        )
    return hits
