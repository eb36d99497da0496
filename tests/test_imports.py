"""Importing never reads settings, and the layers depend on each other one way only.

* Every module of bus, daemon, dashboard and analysis imports cleanly in a process whose
  environment (and `.env`) holds nonsense for every setting: the seed's import-time
  crash must be impossible by construction (DESIGN.md, Settings).
* Every module of bus declares ``__all__``; bus imports no web framework and none of
  daemon, dashboard or analysis (checked on the source, so a lazy import counts too).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bus.settings import Settings

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bus", "daemon", "dashboard", "analysis")
WEB_FRAMEWORKS = {"starlette", "uvicorn", "websockets", "streamlit", "fastapi"}

GARBAGE = {
    "MESSAGE_BUS_COMPRESSION": "brotli",
    "DATABASE_URL": "garbage",
    "CIRCUIT_BREAKER_THRESHOLD": "-4",
    "MESSAGE_BUS_ENABLED": "maybe",
    "MESSAGE_BUS_TTL_HOURS": "forever",
    "MESSAGE_BUS_MAX_PAYLOAD_MB": "-1",
    "BUSTRAIL_AUTH_TOKENS": "no-equals-sign",
    "CIRCUIT_BREAKER_MINIMUM_CALLS": "500",
    "ENVIRONMENT": "moon",
    "OTEL_SDK_DISABLED": "perhaps",
    "OTEL_TRACES_EXPORTER": "nonsense",
    "OTEL_METRICS_EXPORTER": "nonsense",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "::garbage::",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "soon",
    "OTEL_RESOURCE_ATTRIBUTES": "=,=,,",
    "OTEL_SERVICE_NAME": "",
    "OTEL_TRACES_SAMPLER": "nonsense",
    "OTEL_TRACES_SAMPLER_ARG": "lots",
    "OTEL_PYTHON_LOG_LEVEL": "loud",
}

_CHILD = r"""
import importlib, json, pkgutil, sys, traceback
failures, imported = {}, []
def record(name):
    failures[name] = traceback.format_exc()
for package in sys.argv[1:]:
    try:
        root = importlib.import_module(package)
    except BaseException:
        record(package)
        continue
    imported.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=record):
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except BaseException:
            record(info.name)
print("RESULT " + json.dumps({"imported": imported, "failures": failures}))
"""


def _garbage_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    for name in Settings.model_fields:
        env[name.upper()] = "garbage-" + name
    env.update(GARBAGE)
    env["PYTHONPATH"] = str(REPO)
    return env


def test_every_module_imports_with_garbage_settings(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "\n".join(f"{k}={v}" for k, v in GARBAGE.items()) + "\nDATABASE_POOL_SIZE=lots\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *PACKAGES],
        cwd=tmp_path,
        env=_garbage_environment(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert not result["failures"], "\n".join(
        f"--- {name}\n{trace}" for name, trace in result["failures"].items()
    )
    expected = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if (path.parent / "__init__.py").exists()
    }
    assert expected <= set(result["imported"])
    assert "bus.settings" in result["imported"] and "bus.store" in result["imported"]


def _bus_modules() -> list[Path]:
    return sorted((REPO / "bus").rglob("*.py"))


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", _bus_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_bus_module_declares_all_and_imports_one_way(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and n is tree.body[0])]
    if path.name == "__init__.py" and not body:
        return  # a package with nothing in it but its docstring
    declared = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign | ast.AnnAssign)
        and any(
            isinstance(t, ast.Name) and t.id == "__all__"
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        )
    ]
    assert declared, f"{path.relative_to(REPO)} declares no __all__"

    roots = _imported_roots(tree)
    assert not roots & WEB_FRAMEWORKS, f"bus must not import {roots & WEB_FRAMEWORKS}"
    assert not roots & {"daemon", "dashboard", "analysis"}, "bus imports nothing above it"


def test_the_import_check_sees_lazy_imports() -> None:
    tree = ast.parse("def f():\n    import starlette.routing\n    from daemon import cli\n")
    assert _imported_roots(tree) == {"starlette", "daemon"}
