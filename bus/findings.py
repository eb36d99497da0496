"""Reading the debt ledger's open findings: the one query the daemon itself needs.

The ledger is written by ``analysis.ledger`` (``bustrail analyze --record``); the daemon
only reports it, as the ``bustrail_findings_open{kind}`` gauge. The query lives here so
the daemon reads it without importing ``analysis`` (dependencies point to ``bus``).
"""

from __future__ import annotations

import sqlalchemy as sa

from bus.db import Database
from bus.models import Finding, FindingStatus

__all__ = ["UNRESOLVED", "open_findings_by_kind"]

findings: sa.Table = Finding.__table__  # type: ignore[attr-defined]

# Open debt: acknowledged findings count too (someone owns them; they are not fixed).
UNRESOLVED = (FindingStatus.OPEN, FindingStatus.ACKNOWLEDGED)


def open_findings_by_kind(db: Database) -> dict[str, int]:
    """kind -> findings not resolved (open or acknowledged); kinds with none are absent."""
    query = (
        sa.select(findings.c.kind, sa.func.count())
        .where(findings.c.status.in_(UNRESOLVED))
        .group_by(findings.c.kind)
    )
    with db.connect() as conn:
        return {str(kind): int(count) for kind, count in conn.execute(query)}
