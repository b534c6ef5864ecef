"""The Prometheus rules under deploy/prometheus: promtool finds them valid, every alert has a
unit test where it fires and one where it stays quiet, and those tests pass.

Runs promtool (installed by ``./dev test``: ``promtool_ready``), no server: about a second.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promtool import promtool

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
SEVERITIES = {"critical", "warning", "info"}


def _rules() -> list[dict[str, Any]]:
    return [rule for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=PROMETHEUS / "tests")


def test_promtool_check_rules_finds_every_rule_file_valid() -> None:
    assert RULES, "no rule files under deploy/prometheus/rules"
    checked = _promtool("check", "rules", *RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    checked = _promtool("test", "rules", *UNIT_TESTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in _alerts()}
    assert names, "no alerts found"
    assert not names - firing, f"alerts without a test where they fire: {names - firing}"
    assert not names - quiet, f"alerts without a test where they stay quiet: {names - quiet}"


@pytest.mark.parametrize("alert", _alerts(), ids=lambda alert: str(alert["alert"]))
def test_an_alert_waits_has_a_severity_and_says_what_to_do(alert: dict[str, Any]) -> None:
    assert alert.get("for"), "an alert without `for:` pages on one bad scrape"
    assert alert.get("labels", {}).get("severity") in SEVERITIES
    annotations = alert.get("annotations", {})
    assert annotations.get("summary"), "no summary annotation"
    assert len(annotations.get("description", "")) > 80, "the description must say what to do"
