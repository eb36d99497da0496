"""One analysis pass over the database: its window, its parameters and its reads.

A :class:`Scan` is what every detector gets: the open connection (one read-only,
repeatable-read transaction on PostgreSQL, so all detectors see the same snapshot), the
window, the baseline window, the parameters, and :meth:`Scan.frame` to run a named
query of ``analysis/sql`` with all of them bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy.engine import Connection

from analysis.findings import Hit, Params
from analysis.queries import canonical_id, read_frame

__all__ = ["Scan", "hits_by_tool"]


@dataclass(frozen=True)
class Scan:
    conn: Connection
    dialect: str
    since: datetime
    now: datetime
    baseline_start: datetime
    baseline_end: datetime
    params: Params

    def bindings(self) -> dict[str, Any]:
        """Every value a detector query may name (cut-offs computed here, not in SQL)."""
        p = self.params
        return {
            "since": self.since,
            "now": self.now,
            "baseline_start": self.baseline_start,
            "baseline_end": self.baseline_end,
            "orphan_before": self.now - p.orphan_grace,
            "stuck_before": self.now - p.stuck_after,
            "lost_before": self.now - p.lost_after,
            "cleanup_before": self.now - p.cleanup_grace,
            "waste_ratio": float(p.waste_ratio),
        }

    def frame(self, name: str, **extra: Any) -> pd.DataFrame:
        return read_frame(self.conn, name, self.dialect, {**self.bindings(), **extra})


def hits_by_tool(rows: pd.DataFrame) -> list[Hit]:
    """Rows of (id, tenant, tool), one Hit per tool (transactions without a tool form
    their own group)."""
    if rows.empty:
        return []
    frame = pd.DataFrame(
        {
            "id": rows["id"].map(canonical_id).astype(object),
            "tenant": rows["tenant"].astype(object),
            "tool": rows["tool"].astype(object).where(rows["tool"].notna(), None),
        }
    )
    hits = []
    for tool, group in frame.groupby("tool", dropna=False, sort=True):
        name = None if pd.isna(tool) else str(tool)
        hits.append(
            Hit(
                subject=name,
                transaction_ids=sorted(set(group["id"])),
                tenants=sorted(set(group["tenant"])),
            )
        )
    return hits
