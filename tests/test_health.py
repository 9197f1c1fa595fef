"""Device health readings and the device_health checks.

vcgencmd only runs on a Raspberry Pi (it talks to the VideoCore firmware through /dev/vchiq), so
its output is fed through a fake ``run``. Thermal zones and the Jetson GPU load file are real
files in a fake sysfs tree under tmp_path. psutil readings are the real ones of this machine.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import psutil
import pytest

from agent.alerts import AlertManager
from agent.health import (
    HEALTH_FEATURES,
    HealthLimits,
    HealthReader,
    decode_throttled,
    health_checks,
    parse_throttled,
    read_health,
)
from agent.records import AlertTransition, Observation


class FakeVcgencmd:
    """A stand-in for subprocess.run that answers like ``vcgencmd get_throttled``."""

    def __init__(self, stdout: str, returncode: int = 0) -> None:
        self.stdout = stdout
        self.returncode = returncode
        self.calls: List[List[str]] = []

    def __call__(self, argv: List[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        assert argv[1:] == ["get_throttled"]
        return subprocess.CompletedProcess(argv, self.returncode, stdout=self.stdout, stderr="")


def missing_binary(argv: List[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    raise FileNotFoundError(2, "No such file or directory", argv[0])


@pytest.mark.parametrize(
    ("output", "now", "since_boot"),
    [
        ("throttled=0x0\n", set(), set()),
        # 0x50005: under-voltage + throttled now, and both have occurred since boot.
        ("throttled=0x50005\n", {"under_voltage", "throttled"}, {"under_voltage", "throttled"}),
        ("throttled=0x50000\n", set(), {"under_voltage", "throttled"}),
        ("throttled=0x80008\n", {"soft_temp_limit"}, {"soft_temp_limit"}),
        ("throttled=0x2\n", {"arm_freq_capped"}, set()),
    ],
)
def test_vcgencmd_throttled_is_decoded(tmp_path: Path, output: str, now: Set[str],
                                       since_boot: Set[str]) -> None:
    run = FakeVcgencmd(output)
    h = HealthReader(thermal_root=str(tmp_path), gpu_load_path=str(tmp_path / "no"), run=run)
    t = h.read_health()["throttled"]
    assert t["raw"] == output.strip().split("=")[1]
    assert {k for k, v in t["now"].items() if v} == now
    assert {k for k, v in t["since_boot"].items() if v} == since_boot
    assert run.calls[0][0] == "vcgencmd"


@pytest.mark.parametrize(
    "bad", ["", 'error=1 error_msg="Command not registered"', "throttled=zz"]
)
def test_unparseable_vcgencmd_output_gives_none(bad: str) -> None:
    assert parse_throttled(bad) is None


def test_vcgencmd_failure_or_absence_gives_none_and_is_not_retried(tmp_path: Path) -> None:
    failing = FakeVcgencmd("", returncode=255)  # e.g. no /dev/vchiq permission
    assert HealthReader(run=failing, thermal_root=str(tmp_path)).read_health()["throttled"] is None

    calls: List[List[str]] = []

    def absent(argv: List[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return missing_binary(argv)

    reader = HealthReader(run=absent, thermal_root=str(tmp_path))
    assert reader.read_health()["throttled"] is None
    assert reader.read_health()["throttled"] is None
    assert len(calls) == 1


def make_zone(root: Path, n: int, kind: str, millideg: int) -> None:
    zone = root / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(f"{millideg}\n")


def test_thermal_zones_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine may or may not expose hwmon sensors; the fallback is what is tested here.
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {})
    root = tmp_path / "thermal"
    make_zone(root, 0, "cpu-thermal", 61234)
    make_zone(root, 1, "GPU-therm", 48500)
    make_zone(root, 2, "PMIC-Die", 100000000)  # a broken zone reporting 100000 °C: ignored
    make_zone(root, 3, "cpu-thermal", 59000)  # duplicate type keeps both
    (root / "cooling_device0").mkdir()
    h = read_health(thermal_root=str(root), run=missing_binary)
    assert h["temperatures"] == {"cpu-thermal": 61.2, "GPU-therm": 48.5, "cpu-thermal#2": 59.0}
    assert h["max_temp_c"] == 61.2


def test_no_temperature_source_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {})
    h = read_health(thermal_root=str(tmp_path / "absent"), run=missing_binary)
    assert h["temperatures"] is None and h["max_temp_c"] is None


def test_jetson_gpu_load_per_mille(tmp_path: Path) -> None:
    load = tmp_path / "gpu.0" / "load"
    load.parent.mkdir()
    load.write_text("734\n")
    h = read_health(gpu_load_path=str(load), thermal_root=str(tmp_path), run=missing_binary)
    assert h["gpu_percent"] == pytest.approx(73.4)
    # The first existing candidate wins.
    h = read_health(gpu_load_path=[str(tmp_path / "nope"), str(load)], run=missing_binary)
    assert h["gpu_percent"] == pytest.approx(73.4)
    assert read_health(gpu_load_path=str(tmp_path / "nope"), run=missing_binary)["gpu_percent"] \
        is None


def test_real_psutil_values_are_sane(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "edgewatch.db"  # not created yet: its nearest directory counts
    reader = HealthReader(str(db), run=missing_binary)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # burn a little CPU so the process counter moves
        sum(range(10_000))
    h = reader.read_health()
    assert h["cpu_percent"] is not None and 0.0 <= h["cpu_percent"] <= 100.0
    assert len(h["load"]) == 3 and all(x >= 0 for x in h["load"])
    assert 0.0 < h["memory"]["percent"] < 100.0
    assert h["memory"]["available_mb"] > 10
    assert h["disk"]["path"] == str(tmp_path)
    assert h["disk"]["free_mb"] > 0 and 0.0 < h["disk"]["percent"] <= 100.0
    assert 5.0 < h["process"]["rss_mb"] < 4096
    assert h["process"]["cpu_percent"] > 0.0
    assert h["throttled"] is None  # not a Pi


HEALTHY = {
    "max_temp_c": 55.0,
    "temperatures": {"cpu-thermal": 55.0},
    "throttled": decode_throttled(0x50000),  # happened since boot, not now: no alert
    "disk": {"path": "/var/lib/edgewatch", "free_mb": 5000.0, "percent": 50.0},
    "memory": {"percent": 40.0, "available_mb": 1200.0},
}


def checks(**overrides: Any) -> Dict[str, Observation]:
    """The breached checks of one reading, by feature."""
    return {o.feature: o for o in health_checks({**HEALTHY, **overrides}, now=NOW) if o.breach}


NOW = 1_000.0


def test_healthy_reading_observes_every_check_clear() -> None:
    obs = health_checks(HEALTHY, now=NOW, for_s=30.0)
    assert sorted(o.feature for o in obs) == sorted(HEALTH_FEATURES)
    assert all(o.clear and not o.breach and o.kind == "device_health" for o in obs)
    assert all(o.for_s == o.clear_for_s == 30.0 and o.window.start == NOW for o in obs)
    assert health_checks({}, now=NOW) == []  # every sensor absent: nothing to observe


@pytest.mark.parametrize(
    ("temp", "severity"), [(80.0, None), (80.5, "warning"), (86.0, "critical")]
)
def test_temperature_check(temp: float, severity: Optional[str]) -> None:
    obs = checks(max_temp_c=temp, temperatures={"cpu-thermal": temp}).get("temperature")
    if severity is None:
        assert obs is None
    else:
        assert obs is not None
        assert obs.severity == severity
        assert obs.kind == "device_health" and obs.metric == "max_temp_c"
        assert obs.value == temp and obs.threshold == 80.0
        assert "cpu-thermal" in obs.summary


@pytest.mark.parametrize(
    ("bits", "severity"), [(0x50005, "critical"), (0x4, "warning"), (0x8, "warning")]
)
def test_throttling_check(bits: int, severity: str) -> None:
    obs = checks(throttled=decode_throttled(bits))["throttling"]
    assert obs.severity == severity
    assert obs.value == float(bits & 0xF)
    assert hex(bits) in obs.summary


@pytest.mark.parametrize(
    ("disk", "metric", "severity"),
    [
        ({"free_mb": 499.0, "percent": 80.0}, "disk_free_mb", "warning"),
        ({"free_mb": 100.0, "percent": 99.0}, "disk_free_mb", "critical"),
        ({"free_mb": 2000.0, "percent": 95.5}, "disk_percent", "warning"),
        ({"free_mb": 500.0, "percent": 95.0}, None, None),
    ],
)
def test_disk_check(disk: Dict[str, float], metric: Optional[str],
                    severity: Optional[str]) -> None:
    obs = checks(disk={"path": "/data", **disk}).get("disk")
    if metric is None:
        assert obs is None
    else:
        assert obs is not None
        assert obs.metric == metric and obs.severity == severity
        assert "/data" in obs.summary


def test_memory_check_and_custom_limits() -> None:
    assert "memory" not in checks(memory={"percent": 90.0, "available_mb": 100.0})
    obs = checks(memory={"percent": 93.0, "available_mb": 70.0})["memory"]
    assert obs.value == 93.0 and obs.threshold == 90.0
    # Limits as a mapping (a config section) or as any object with the same attribute names.
    hot = {**HEALTHY, "max_temp_c": 70.0}

    def temperature(limits: Any) -> Observation:
        return next(o for o in health_checks(hot, limits, now=NOW) if o.feature == "temperature")

    assert temperature({"temp_c": 65.0, "temp_critical_c": 75.0}).threshold == 65.0
    assert not temperature(HealthLimits(temp_c=75.0, temp_critical_c=90.0)).breach
    with pytest.raises(ValueError, match="unknown health limit"):
        health_checks(hot, {"temperature": 70}, now=NOW)
    with pytest.raises(ValueError, match="temp_critical_c"):
        HealthLimits(temp_c=90.0, temp_critical_c=80.0)


def test_health_alert_fires_then_resolves_once_healthy_for_for_s() -> None:
    """95 °C fires; ten minutes at 40 °C later the alert has resolved."""
    sent: List[AlertTransition] = []
    alerts = AlertManager(device="d", camera="c", model={}, emit=sent.append)
    hot = {**HEALTHY, "max_temp_c": 95.0, "temperatures": {"cpu-thermal": 95.0}}
    cool = {**HEALTHY, "max_temp_c": 40.0, "temperatures": {"cpu-thermal": 40.0}}
    for t in range(0, 120, 30):
        alerts.update(health_checks(hot, now=t, for_s=60.0), now=t)
    assert [(r.transition, r.feature, r.severity) for r in sent] == [
        ("firing", "temperature", "critical")]
    for t in range(120, 720 + 1, 30):
        alerts.update(health_checks(cool, now=t, for_s=60.0), now=t)
    assert [r.transition for r in sent] == ["firing", "resolved"]
    assert sent[-1].ends_at == 180 and alerts.open_alerts() == []
