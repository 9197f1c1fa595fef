"""configs/prometheus/: the scrape config and alerting rules pass promtool, and their unit
tests (rules_test.yml: offline, drift and outbox alerts firing and not firing) pass."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Set

import pytest
from prometheus import require_tool

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "prometheus"


@pytest.mark.parametrize("args", [
    ["check", "config", "prometheus.yml"],
    ["check", "rules", "edgewatch.rules.yml", "edgewatch-drift.rules.yml"],
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


def _alerts(name: str) -> Set[str]:
    return set(re.findall(r"^ *- alert: (\w+)$", (CONFIGS / name).read_text(), re.M))


def test_drift_rules_are_apart_and_not_loaded_by_default() -> None:
    """The central's Alertmanager feed already posts drift: the default rules must not repeat
    it (Alertmanager would get EdgewatchDriftFiring and edgewatch_data_drift for one drift)."""
    default = _alerts("edgewatch.rules.yml")
    drift = _alerts("edgewatch-drift.rules.yml")
    assert default == {"EdgewatchDeviceOffline", "EdgewatchOutboxBackingUp",
                       "EdgewatchNotificationsFailing", "EdgewatchDeviceOutboxBackingUp"}
    assert drift == {"EdgewatchDriftFiring", "EdgewatchDeviceDriftFiring"}
    config = (CONFIGS / "prometheus.yml").read_text()
    loaded = re.findall(r"^  - (\S+)$", config.split("rule_files:")[1].split("\n\n")[0], re.M)
    assert loaded == ["edgewatch.rules.yml"]
    assert "  # - edgewatch-drift.rules.yml" in config
    tests = (CONFIGS / "rules_test.yml").read_text()
    assert all(name in tests for name in default | drift), "every rule has a unit test"


def test_the_readme_promtool_commands_pass_as_written() -> None:
    """The README names the exact promtool commands; they run from the checkout and pass."""
    readme = (CONFIGS.parent.parent / "README.md").read_text(encoding="utf-8")
    tag = "<!-- not tested: here; tests/test_prometheus_rules.py runs this block as written -->"
    block = readme.split(tag + "\n```sh\n")[1].split("```")[0]
    assert block.count("promtool ") == 3
    tool = require_tool("promtool")
    done = subprocess.run(["bash", "-e", "-c", block.replace("promtool ", f"{tool} ")],
                          cwd=CONFIGS.parent.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") >= 4, done.stdout
