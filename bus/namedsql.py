"""Named SQL: queries live in ``.sql`` files, and Python refers to them by name.

A file holds blocks, each opened by a line ``-- name: NAME``. A block named
``NAME@postgresql`` or ``NAME@sqlite`` is that dialect's variant of ``NAME`` and is
preferred over a plain ``NAME`` on that dialect. Whole-line comments inside a block stay
in the file but not in the SQL (a ``:word`` in one would read as a parameter).

The analysis (``analysis/sql``) and the dashboard (``dashboard/sql``) each keep a
:class:`NamedSQL` over their own folder.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

__all__ = ["DIALECTS", "NamedSQL", "parse_blocks"]

DIALECTS = ("postgresql", "sqlite")
_HEADER = re.compile(r"^--\s*name:\s*([a-z0-9_]+(?:@(?:postgresql|sqlite))?)\s*$")


def parse_blocks(text: str, source: str = "<sql>") -> dict[str, str]:
    """``{name: sql}`` for every ``-- name: NAME`` block in ``text``; ValueError for a
    header that is malformed or repeated, or a block with no SQL."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        match = _HEADER.match(stripped)
        if match:
            name = match[1]
            if name in blocks:
                raise ValueError(f"{source}:{number}: query {name!r} is defined twice")
            current = blocks[name] = []
        elif re.match(r"^--\s*name\s*:", stripped):
            raise ValueError(f"{source}:{number}: malformed query header {stripped!r}")
        elif current is not None:
            current.append(line)
    result = {}
    for name, lines in blocks.items():
        code = [line for line in lines if not line.strip().startswith("--")]
        sql = "\n".join(code).strip().rstrip(";").strip()
        if not sql:
            raise ValueError(f"{source}: query {name!r} is empty")
        result[name] = sql
    return result


class NamedSQL:
    """The named queries of every ``*.sql`` file in one folder, read once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @functools.cached_property
    def blocks(self) -> dict[str, str]:
        """Every block of every file; ValueError when a name is in two files."""
        found: dict[str, str] = {}
        for path in sorted(self.directory.glob("*.sql")):
            for name, sql in parse_blocks(path.read_text(encoding="utf-8"), path.name).items():
                if name in found:
                    raise ValueError(f"{path.name}: query {name!r} is defined in another file too")
                found[name] = sql
        return found

    def query(self, name: str, dialect: str) -> str:
        """The SQL of ``name`` for ``dialect`` (``postgresql`` or ``sqlite``)."""
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}: expected one of {DIALECTS}")
        for key in (f"{name}@{dialect}", name):
            if key in self.blocks:
                return self.blocks[key]
        raise KeyError(f"no query named {name!r} for {dialect} in {self.directory}")
