"""The alert rules, proven by promtool: they load, their unit tests pass, every alert
has a test where it fires and one where it does not (and each of those tests would
catch a rule that never fires, or always does), and every alert has a runbook section.

promtool is the Debian package ``prometheus`` (scripts/ensure-system-deps installs it);
without it these tests skip loudly, except under CI=true, where they fail.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.support import REPO, UNIT, require_program

DEPLOY = REPO / "deploy" / "prometheus"
RULES = DEPLOY / "bustrail-alerts.yml"
TESTS = DEPLOY / "bustrail-alerts.test.yml"
CONFIG = DEPLOY / "prometheus.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
ISSUE_ALERTS = {
    "BustrailBreakerOpen",
    "BustrailBreakerFlapping",
    "BustrailAuditSpoolGrowing",
    "BustrailChecksumMismatch",
    "BustrailFallbackOversize",
    "BustrailSilentFailureDebt",
}
RUNBOOK_PARTS = ("**What it means.**", "**Likely causes.**", "**How to check.**", "**How to fix.**")


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_program("promtool")


def run(*args: str | Path, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=UNIT, check=False
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> dict[str, dict[str, Any]]:
    rules = [rule for group in load(RULES)["groups"] for rule in group["rules"]]
    named = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert len(named) == len(rules), "every rule is an alert, each with its own name"
    return named


def cases(unit_tests: dict[str, Any], alertname: str, *, firing: bool) -> list[dict[str, Any]]:
    """The tests of ``unit_tests`` cut down to the checks of ``alertname`` that expect it
    to fire (``firing``) or not; tests without such a check are left out."""
    kept = []
    for test in unit_tests["tests"]:
        checks = [
            check
            for check in test.get("alert_rule_test") or []
            if check["alertname"] == alertname and bool(check.get("exp_alerts")) is firing
        ]
        if checks:
            kept.append({**copy.deepcopy(test), "alert_rule_test": checks})
    return kept


def test_the_rules_load(promtool: str) -> None:
    checked = run(promtool, "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_the_example_config_loads_with_its_rules(promtool: str) -> None:
    checked = run(promtool, "check", "config", CONFIG)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = load(CONFIG)
    assert config["rule_files"] == [RULES.name]
    # The rules (BustrailDaemonDown) and test_prometheus_live.py expect this job name.
    assert [job["job_name"] for job in config["scrape_configs"]] == ["bustrail"]


def test_the_unit_tests_pass(promtool: str) -> None:
    tested = run(promtool, "test", "rules", TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_the_issue_names_exists_with_severity_and_annotations() -> None:
    found = alerts()
    assert not ISSUE_ALERTS - set(found), ISSUE_ALERTS - set(found)
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        # GitHub's anchor for a one-word heading is the word in lower case.
        assert annotations["runbook_url"].endswith(f"docs/runbook.md#{name.lower()}"), name


def test_every_alert_has_a_runbook_section() -> None:
    text = RUNBOOK.read_text()
    sections = dict(
        (match[1], body)
        for match, body in zip(
            re.finditer(r"^## (\S+)$", text, re.M),
            re.split(r"^## \S+$", text, flags=re.M)[1:],
            strict=True,
        )
    )
    for name in alerts():
        assert name in sections, f"docs/runbook.md has no section '## {name}'"
        missing = [part for part in RUNBOOK_PARTS if part not in sections[name]]
        assert not missing, f"runbook section {name} lacks {missing}"


@pytest.mark.parametrize("alertname", sorted(alerts()))
def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not(
    alertname: str, promtool: str, tmp_path: Path
) -> None:
    unit_tests = load(TESTS)
    firing = cases(unit_tests, alertname, firing=True)
    quiet = cases(unit_tests, alertname, firing=False)
    assert firing, f"no promtool test expects {alertname} to fire"
    assert quiet, f"no promtool test expects {alertname} to stay quiet"

    # Each set must catch a broken rule: one that never fires, one that always does
    # (its `for` kept, so a quiet check made before the `for` elapses does not count).
    for expr, selected, broken in (
        ("vector(1) == 0", firing, "never fires"),
        ("vector(1)", quiet, "always fires"),
    ):
        rules = load(RULES)
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == alertname:
                    rule["expr"] = expr
        (tmp_path / RULES.name).write_text(yaml.safe_dump(rules))
        (tmp_path / TESTS.name).write_text(yaml.safe_dump({**unit_tests, "tests": selected}))
        # The selected tests pass against the real rules ...
        (tmp_path / "real").mkdir(exist_ok=True)
        (tmp_path / "real" / RULES.name).write_text(RULES.read_text())
        (tmp_path / "real" / TESTS.name).write_text((tmp_path / TESTS.name).read_text())
        real = run(promtool, "test", "rules", TESTS.name, cwd=tmp_path / "real")
        assert real.returncode == 0, real.stdout + real.stderr
        # ... and fail against the broken one.
        mutated = run(promtool, "test", "rules", TESTS.name, cwd=tmp_path)
        assert mutated.returncode != 0, (
            f"the promtool tests of {alertname} still pass when it {broken}:\n{mutated.stdout}"
        )
