"""configs/prometheus/: the scrape config and alerting rules pass promtool, and their unit
tests (rules_test.yml: offline, drift and outbox alerts firing and not firing) pass."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus import require_tool

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "prometheus"


@pytest.mark.parametrize("args", [
    ["check", "config", "prometheus.yml"],
    ["check", "rules", "edgewatch.rules.yml"],
    ["test", "rules", "rules_test.yml"],
], ids=["check-config", "check-rules", "test-rules"])
def test_promtool_accepts_the_example_config_and_rules(args) -> None:
    done = subprocess.run([require_tool("promtool"), *args], cwd=CONFIGS, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_a_broken_expectation_fails_the_rule_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against a rule that waits longer do."""
    rules = (CONFIGS / "edgewatch.rules.yml").read_text()
    assert rules.count("for: 5m") >= 1
    (tmp_path / "edgewatch.rules.yml").write_text(rules.replace("for: 5m", "for: 30m"))
    (tmp_path / "rules_test.yml").write_text((CONFIGS / "rules_test.yml").read_text())
    done = subprocess.run([require_tool("promtool"), "test", "rules", "rules_test.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "EdgewatchDeviceOffline" in done.stdout + done.stderr
