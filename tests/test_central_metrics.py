"""The central's /metrics against a real Mosquitto, on SQLite and PostgreSQL: values, format."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import central_helpers
import pytest
from broker import free_port
from central_helpers import CentralDb, heartbeat
from helpers import make_alert, wait
from prometheus_client.parser import text_string_to_metric_families

from agent.central import Central
from agent.central.records import BadMessage, Heartbeat, parse
from agent.cli import main
from agent.errors import ConfigError
from agent.records import KINDS

central_factory = central_helpers.central_factory
central_db = central_helpers.central_db

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(port: int) -> str:
    """The text of ``/metrics`` on the central's port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def samples(text: str) -> Samples:
    """Every sample parsed by prometheus_client's own parser: (name, labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def heartbeat3(device: str, seq: int, *, fps: Any, worst: Any, depth: int = 0,
               oldest: Any = None) -> Dict[str, Any]:
    """A schema-3 heartbeat: the flat ``summary`` block and the outbox."""
    hb = heartbeat(device, seq)
    hb.update(schema=3, camera={"name": "cam0", "fps": fps, "dropped": 0},
              drift_scores={"brightness": worst} if worst is not None else {},
              outbox={"depth": depth, "oldest_age_s": oldest, "dropped": 0},
              summary={"fps": fps, "brightness": 120.0, "top_score": 0.9, "worst_drift": worst,
                       "worst_drift_feature": "brightness" if worst is not None else None,
                       "monitoring": "active", "problems": {k: False for k in KINDS}})
    return hb


def _publish_fleet(broker: Any, listeners: Any, central: Central) -> None:
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/cam-new/heartbeat",
                json.dumps(heartbeat3("cam-new", 1, fps=12.5, worst=1.7, depth=3, oldest=4.0)))
    pub.publish("edgewatch/v1/cam-warm/heartbeat",
                json.dumps(heartbeat3("cam-warm", 1, fps=None, worst=None)))
    pub.publish("edgewatch/v1/cam-old/heartbeat", json.dumps(heartbeat("cam-old", 1)))
    pub.publish("edgewatch/v1/cam-gone/status", b"offline", retain=False)
    pub.publish("edgewatch/v1/cam-new/alerts", json.dumps(make_alert(1, device="cam-new")))
    critical = {**make_alert(1, device="cam-new", fingerprint="11bb22cc33dd44ee",
                             alert_id="b0001"), "kind": "camera_fault", "severity": "critical"}
    pub.publish("edgewatch/v1/cam-new/alerts", json.dumps(critical))
    pub.publish("edgewatch/v1/cam-old/alerts", b"{broken")
    wait(lambda: central.status()["messages"] >= 7, what="all messages handled")


def test_fleet_metrics_from_the_database(broker, listeners, central_factory,
                                         central_db: CentralDb) -> None:
    central = central_factory(broker, db=central_db.target, metrics_port=0)
    _publish_fleet(broker, listeners, central)
    port = central.metrics_port
    assert port
    got = samples(scrape(port))

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("edgewatch_fleet_devices", state="online") == 3
    assert value("edgewatch_fleet_devices", state="offline") == 1
    assert value("edgewatch_fleet_device_online", device="cam-new") == 1
    assert value("edgewatch_fleet_device_online", device="cam-gone") == 0
    assert 0 <= value("edgewatch_fleet_heartbeat_age_seconds", device="cam-new") < 30
    assert ("edgewatch_fleet_heartbeat_age_seconds", (("device", "cam-gone"),)) not in got
    assert value("edgewatch_fleet_fps", device="cam-new") == 12.5
    assert value("edgewatch_fleet_fps", device="cam-old") == 14.5  # schema 1: camera's fps
    assert ("edgewatch_fleet_fps", (("device", "cam-warm"),)) not in got  # none measured yet
    assert value("edgewatch_fleet_drift_score_max", device="cam-new") == 1.7
    assert value("edgewatch_fleet_drift_score_max", device="cam-warm") == 0
    assert value("edgewatch_fleet_outbox_depth", device="cam-new") == 3
    assert value("edgewatch_fleet_outbox_oldest_age_seconds", device="cam-new") == 4
    assert value("edgewatch_fleet_outbox_oldest_age_seconds", device="cam-warm") == 0  # empty
    assert ("edgewatch_fleet_outbox_depth", (("device", "cam-old"),)) not in got  # not sent
    assert value("edgewatch_fleet_alerts", device="cam-new", kind="data_drift",
                 severity="warning") == 1
    assert value("edgewatch_fleet_alerts", device="cam-new", kind="camera_fault",
                 severity="critical") == 1
    assert value("edgewatch_fleet_alerts", device="cam-old", kind="data_drift",
                 severity="") == 0  # every device has a series per kind
    assert sum(v for (n, labels), v in got.items() if n == "edgewatch_fleet_alerts") == 2
    assert len([1 for (n, _) in got if n == "edgewatch_fleet_alerts"]) == 4 * len(KINDS)
    assert value("edgewatch_fleet_messages_total", topic="heartbeat") == 3
    assert value("edgewatch_fleet_messages_total", topic="alerts") == 3
    assert value("edgewatch_fleet_messages_rejected_total", reason="not_json") == 1
    assert value("edgewatch_fleet_notifications_pending") == 0


def test_an_offline_device_keeps_no_fps_nor_drift(broker, listeners, central_factory) -> None:
    """Gone offline (its last will), a device's last fps and drift are not its state: no series,
    while device_online says 0 and the heartbeat age keeps growing."""
    central = central_factory(broker, metrics_port=0)
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/cam-night/heartbeat",
                json.dumps(heartbeat3("cam-night", 1, fps=15.0, worst=2.5)))
    key = (("device", "cam-night"),)
    got = wait(lambda: (lambda g: g if ("edgewatch_fleet_fps", key) in g else None)(
        samples(scrape(central.metrics_port or 0))), what="cam-night's fps")
    assert got[("edgewatch_fleet_fps", key)] == 15 and \
        got[("edgewatch_fleet_drift_score_max", key)] == 2.5
    pub.publish("edgewatch/v1/cam-night/status", b"offline", retain=False)
    got = wait(lambda: (lambda g: g if g.get(("edgewatch_fleet_device_online", key)) == 0
                        else None)(samples(scrape(central.metrics_port or 0))),
               what="cam-night offline")
    assert ("edgewatch_fleet_fps", key) not in got
    assert ("edgewatch_fleet_drift_score_max", key) not in got
    assert got[("edgewatch_fleet_heartbeat_age_seconds", key)] >= 0
    assert got[("edgewatch_fleet_devices", (("state", "offline"),))] == 1


def test_failing_notifications_are_counted(broker, listeners, central_factory) -> None:
    """An Alertmanager and a webhook that refuse every post show in Prometheus, not only in the
    central's log: failures by output (the webhook's format, never its URL)."""
    central = central_factory(broker, metrics_port=0,
                              alertmanager=f"http://127.0.0.1:{free_port()}",
                              alertmanager_interval_s=0.2,
                              webhooks=[f"slack=http://127.0.0.1:{free_port()}/T0KEN"])
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/cam-q/alerts", json.dumps(make_alert(1, device="cam-q")))

    def failed() -> Samples:
        got = samples(scrape(central.metrics_port or 0))
        webhook = got[("edgewatch_fleet_webhook_failures_total", (("format", "slack"),))]
        return got if got[("edgewatch_fleet_alertmanager_failures_total", ())] >= 2 and \
            webhook >= 1 else {}

    got = wait(failed, what="both failures counted")
    assert got[("edgewatch_fleet_alertmanager_posts_total", ())] == 0
    assert got[("edgewatch_fleet_webhook_failures_total", (("format", "json"),))] == 0
    assert "T0KEN" not in scrape(central.metrics_port or 0)  # no URL in any label


def readme_fleet_table() -> Dict[str, Tuple[str, Set[str]]]:
    """The README's fleet metrics: name -> (type, label names)."""
    rows: Dict[str, Tuple[str, Set[str]]] = {}
    for line in (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(edgewatch_fleet_\w+)`", cells[0]) if len(cells) == 5 else None
        if m:
            names = re.sub(r"\([^)]*\)", "", cells[3])  # "(values)" are the label's values
            rows[m.group(1)] = (cells[1], set(re.findall(r"`([a-z0-9_]+)`", names)))
    return rows


@pytest.mark.integration
def test_promtool_accepts_the_output_and_the_readme_lists_it(broker, listeners,
                                                              central_factory) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed (make stack installs it)")
    central = central_factory(broker, metrics_port=0)
    _publish_fleet(broker, listeners, central)
    text = scrape(central.metrics_port or 0)
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        done.stdout + done.stderr)
    scraped = {family.name + ("_total" if family.type == "counter" else ""):
               (family.type, {k for s in family.samples for k in s.labels})
               for family in text_string_to_metric_families(text)}
    assert scraped == readme_fleet_table()


def test_a_second_worker_serves_the_whole_fleet(broker, listeners, central_factory,
                                                tmp_path) -> None:
    first = central_factory(broker, metrics_port=0)
    _publish_fleet(broker, listeners, first)
    # A worker that handled none of the messages reads the same database.
    other = Central(broker.host, broker.port, str(tmp_path / "central.db"), metrics_port=0)
    other.start()
    try:
        got = samples(scrape(other.metrics_port or 0))
        assert got[("edgewatch_fleet_devices", (("state", "online"),))] == 3
        assert got[("edgewatch_fleet_messages_total", (("topic", "heartbeat"),))] == 0
    finally:
        other.stop()


def test_port_in_use_is_one_clear_error(broker, central_factory, tmp_path, capsys) -> None:
    """As the agent's [metrics] port: a config problem (exit 2) naming the flag and the fix."""
    first = central_factory(broker, metrics_port=0)
    with pytest.raises(ConfigError, match=f"^--metrics-port {first.metrics_port} is in use on "
                       r"127.0.0.1: set --metrics-port \(or metrics_port\) to a free one"):
        Central(broker.host, broker.port, str(tmp_path / "b.db"),
                metrics_port=first.metrics_port).start()
    capsys.readouterr()
    assert main(["central", "--broker", broker.host, "--port", str(broker.port), "--db",
                 str(tmp_path / "c.db"), "--metrics-port", str(first.metrics_port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--metrics-port" in err[0] and "in use" in err[0], err


@pytest.mark.parametrize("hb, expected", [
    ({"summary": {"fps": 9, "worst_drift": 0.4}, "outbox": {"depth": 2}}, (9.0, 0.4, 2.0)),
    ({"camera": {"fps_processed": 14.5}}, (14.5, None, None)),
    ({"camera": "broken", "summary": None}, (None, None, None)),
])
def test_the_figures_metrics_need_are_read_from_any_heartbeat_schema(
        hb: Dict[str, Any], expected: Tuple[Any, Any, Any]) -> None:
    record = parse("edgewatch/v1", "edgewatch/v1/cam-a/heartbeat", json.dumps(hb).encode())
    assert isinstance(record, Heartbeat)
    assert (record.fps, record.worst_drift, record.outbox_depth) == expected


@pytest.mark.parametrize("hb", [{"summary": []}, {"outbox": {"depth": "many"}},
                                {"summary": {"worst_drift": "high"}}])
def test_a_malformed_summary_or_outbox_is_refused(hb: Dict[str, Any]) -> None:
    with pytest.raises(BadMessage, match="bad_field"):
        parse("edgewatch/v1", "edgewatch/v1/cam-a/heartbeat", json.dumps(hb).encode())


@pytest.mark.integration
def test_cli_flag_and_config_file(broker, tmp_path: Path) -> None:
    config = tmp_path / "central.toml"
    config.write_text(f'[central]\ndb = "{tmp_path / "c.db"}"\nmetrics_port = 0\n'
                      f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n')
    from agent.central.config import load_central_config

    assert load_central_config(str(config)).central.metrics_port == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[central]\nmetrics_port = 70000\n')
    assert main(["central", "--config", str(bad)]) != 0
    lines: List[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "central", "--config", str(config), "--metrics-port",
         "0", "--metrics-host", "127.0.0.1"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while not any("metrics on" in line for line in lines) and time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
        url = next(line for line in lines if "metrics on" in line).split()[-1]
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert b"edgewatch_fleet_devices" in resp.read()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
