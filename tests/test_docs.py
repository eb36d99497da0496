"""The documentation matches the code: settings, commands, alerts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bus.settings import Settings
from bus.settings_doc import env_example, reference_markdown
from daemon.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_generated_from_the_settings() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == reference_markdown(), (
        "docs/configuration.md is stale: run `bustrail config reference > docs/configuration.md`"
    )


def test_env_example_names_every_setting() -> None:
    committed = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert committed == env_example(), "run `bustrail config example > .env.example`"
    for name in Settings.model_fields:
        assert re.search(rf"^#? ?{name.upper()}=", committed, re.M), name


def _readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("### Command line", 1)[1].split("```", 2)[1]
    commands = []
    for line in block.splitlines():
        for part in re.split(r"\s{2,}", line.strip()):
            words = part.split()
            if not words or words[0] != "bustrail":
                continue
            command = [words[1]]
            if (
                len(words) > 2
                and re.fullmatch(r"[a-z]+", words[2])
                and words[1] in {"db", "config", "debt"}
            ):
                command.append(words[2])
            commands.append(command)
            # `debt list | show ID | ack ID` names three subcommands
            for extra in re.findall(r"\|\s*([a-z]+)", part):
                commands.append([words[1], extra])
    return commands


def test_readme_lists_the_design_commands() -> None:
    names = {" ".join(c) for c in _readme_commands()}
    for expected in (
        "serve",
        "call",
        "fetch",
        "db upgrade",
        "cleanup",
        "config show",
        "health",
        "analyze",
        "debt list",
        "debt show",
        "debt ack",
        "load",
        "demo",
        "dashboard",
    ):
        assert expected in names, expected


@pytest.mark.parametrize("command", _readme_commands(), ids=" ".join)
def test_every_readme_command_exists_and_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_every_alert_has_a_runbook_section() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/bustrail-alerts.yml").read_text())
    runbook = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#+\s+(\S+)", runbook, re.M))
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        assert alert in headings, f"{alert} has no section in docs/runbook.md"


def _sql_blocks(path: Path) -> list[tuple[str, str]]:
    """(where, statement) of every ```sql block of a page, split at ``;``; statements
    with a placeholder (``<id>``) are left out."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"```sql\n(.*?)```", text, re.S):
        line = text.count("\n", 0, match.start()) + 1
        for statement in match[1].split(";"):
            statement = "\n".join(
                s for s in statement.splitlines() if not s.strip().startswith("--")
            ).strip()
            if statement and "<" not in statement.replace("<=", "").replace("< ", ""):
                found.append((f"{path.name}:{line}", statement))
    return found


@pytest.mark.postgres
@pytest.mark.parametrize("page", ["README.md", "docs/runbook.md"])
def test_the_sql_the_docs_show_runs_on_the_schema(page: str, pg_url: str) -> None:
    """Every query a reader is told to run is valid against the current schema (a renamed
    column would otherwise leave an SRE with an error in the middle of an incident)."""
    import sqlalchemy as sa

    from bus.db import Database

    statements = _sql_blocks(ROOT / page)
    assert statements, f"no SQL found in {page}"
    db = Database(pg_url)
    try:
        for where, statement in statements:
            with db.begin() as conn:
                try:
                    conn.execute(sa.text(statement))
                except sa.exc.DBAPIError as exc:
                    pytest.fail(f"{where}: {statement}\n-> {exc.orig}")
    finally:
        db.dispose()
