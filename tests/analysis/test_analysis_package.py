"""The analysis package's public names, and the layering rule it lives by."""

from __future__ import annotations

import ast
from pathlib import Path

import analysis

ROOT = Path(__file__).resolve().parents[2]


def test_every_public_name_is_exported() -> None:
    assert sorted(analysis.__all__) == sorted(set(analysis.__all__))
    for name in analysis.__all__:
        assert hasattr(analysis, name), name


def test_bus_and_the_daemon_do_not_import_analysis() -> None:
    offenders = []
    for folder in ("bus", "daemon"):
        for path in (ROOT / folder).glob("*.py"):
            if path.name == "cli.py":
                continue  # the one front door
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n == "analysis" or n.startswith("analysis.") for n in names):
                    offenders.append(f"{folder}/{path.name}")
    assert offenders == []
