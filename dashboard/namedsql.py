"""Named SQL blocks: the dashboard's queries live in ``dashboard/sql/*.sql``.

A file holds blocks, each opened by a line ``-- name --``. A block named
``name@postgresql`` or ``name@sqlite`` is that dialect's variant of ``name`` and is
preferred over a plain ``name`` on that dialect. Whole-line comments inside a block are
dropped. Python refers to queries by name only.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

__all__ = ["parse_blocks", "queries", "query"]

_SQL_DIR = Path(__file__).resolve().parent / "sql"
_HEADER = re.compile(r"^--\s*([a-z0-9_]+(?:@(?:postgresql|sqlite))?)\s*--\s*$")


def parse_blocks(text: str, source: str = "<sql>") -> dict[str, str]:
    """``{name: sql}`` for every ``-- name --`` block in ``text``."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _HEADER.match(line.strip())
        if match:
            name = match[1]
            if name in blocks:
                raise ValueError(f"{source}: query {name!r} is defined twice")
            current = blocks[name] = []
        elif current is not None and not line.lstrip().startswith("--"):
            # Comment lines are dropped: a ":name" in one would read as a parameter.
            current.append(line)
    return {name: "\n".join(lines).strip().rstrip(";") for name, lines in blocks.items()}


@functools.cache
def queries() -> dict[str, str]:
    """Every block of every file in ``dashboard/sql``."""
    found: dict[str, str] = {}
    for path in sorted(_SQL_DIR.glob("*.sql")):
        for name, sql in parse_blocks(path.read_text(encoding="utf-8"), path.name).items():
            if name in found:
                raise ValueError(f"{path.name}: query {name!r} is defined in another file too")
            found[name] = sql
    return found


def query(name: str, dialect: str) -> str:
    """The SQL of ``name`` for ``dialect`` (``postgresql`` or ``sqlite``)."""
    known = queries()
    for key in (f"{name}@{dialect}", name):
        if key in known:
            return known[key]
    raise KeyError(f"no query named {name!r} for {dialect} in {_SQL_DIR}")
