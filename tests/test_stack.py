"""The monitoring stack end to end: an agent and a central scraped by a real Prometheus, and
every query of both Grafana dashboards evaluated against it.

Real parts only: Mosquitto, an ``edgewatch run`` process (emulated camera, real model,
``[metrics]`` on a free port) whose scene goes black after its reference is learned (so drift
scores, reference bands and an open ``camera_fault`` alert all exist), ``edgewatch central
--metrics-port``, and Debian's Prometheus scraping both every second. Grafana itself is in
neither Debian nor PyPI: its dashboards are checked here through their queries, with the
template variables substituted as Grafana would.

Only the hardware a device has and this machine lacks is stood in for: a thermal zone in a
tmp folder (``[health] thermal_root``) and a ``vcgencmd`` on the agent's PATH answering
``get_throttled`` as a Raspberry Pi does, so the temperature and throttling panels have data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from broker import Broker, free_port
from helpers import wait
from procs import stop_process
from prometheus import Prometheus, prometheus_server  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((REPO / "dashboards").glob("*.json"))}
DEVICE = "cam-stack"
SCRAPE_S = 1.0
# Grafana's own variables, as it substitutes them for a 1 s scrape interval.
BUILTINS = {"__rate_interval": "4s", "__interval": "1s", "__range": "5m"}
VAR_RE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")


# -- the dashboards as files ----------------------------------------------------------------


def panels(dashboard: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every panel, rows' collapsed panels included."""
    out: List[Dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(panel title, expr) of every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboards_are_importable_as_they_are(name: str) -> None:
    """A data source variable (no uid of this machine), unique ids, a grid without overlaps,
    and no variable a query names without the dashboard defining it."""
    dash = DASHBOARDS[name]
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    cells: Dict[Tuple[int, int], str] = {}
    for panel in panels(dash):
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    for title, expr in queries(dash):
        for match in VAR_RE.finditer(expr):
            var = match[1] or match[2]
            assert var in variables or var in BUILTINS, f"{title}: ${var} is not defined"
    provisioning = REPO / "dashboards" / "provisioning"
    assert "/var/lib/grafana/dashboards/edgewatch" in (
        provisioning / "dashboards" / "edgewatch.yml").read_text()
    assert "type: prometheus" in (provisioning / "datasources" / "edgewatch.yml").read_text()


# What a target plots, from its metric's name, and the units that fit it.
UNIT_FITS = ((re.compile(r"_celsius\b"), {"celsius"}), (re.compile(r"_seconds(\{|$)"), {"s"}),
             (re.compile(r"edgewatch_throttled\b"), {"none", "bool"}),
             (re.compile(r"_ratio\b"), {"percentunit"}),
             (re.compile(r"rate\(edgewatch_fleet_messages"), {"suffix: msg/s"}))
SCORE_FEATURES = {"top_score", "margin", "score_entropy", "mean_score", "low_conf_frac"}


def target_unit(panel: Dict[str, Any], ref: str) -> str:
    """The unit Grafana shows a target in: its refId's override, else the panel's default."""
    config = panel.get("fieldConfig", {})
    unit = str(config.get("defaults", {}).get("unit", "none"))
    for override in config.get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": ref}:
            unit = next((str(p["value"]) for p in override["properties"] if p["id"] == "unit"),
                        unit)
    return unit


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_series_is_shown_in_a_unit_that_fits_it(name: str) -> None:
    """No 0/1 flag in Celsius, no outbox depth in seconds, no messages as HTTP requests, no
    detection count on a 0-1 score axis."""
    wrong = []
    for panel in panels(DASHBOARDS[name]):
        for target in panel.get("targets", []):
            unit, expr = target_unit(panel, target["refId"]), target["expr"]
            for pattern, fits in UNIT_FITS:
                if pattern.search(expr) and "histogram_quantile" not in expr and unit not in fits:
                    wrong.append(f"{panel['title']}: {expr} in {unit} (expected {fits})")
            if unit == "celsius" and "_celsius" not in expr:
                wrong.append(f"{panel['title']}: {expr} in celsius")
            if "edgewatch_confidence" in expr:
                chosen = re.search(r'feature=~"([^"]*)"', expr)  # none: every feature
                shown = set(re.findall(r"\w+", chosen[1])) if chosen else {"all", "top_score"}
                assert shown <= SCORE_FEATURES or not shown & SCORE_FEATURES, (
                    f"{panel['title']}: scores (0-1) mixed with counts or areas: {expr}")
    assert not wrong, "\n".join(wrong)


def substitute(expr: str, values: Dict[str, str]) -> str:
    """``expr`` with every template variable replaced, as Grafana would send it."""
    done = VAR_RE.sub(lambda m: {**BUILTINS, **values}[m[1] or m[2]], expr)
    assert "$" not in done, done
    return done


def variable_query(definition: str) -> str:
    """PromQL for Grafana's ``label_values(selector, label)``: one series per value."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
    assert match, definition
    return f"group by ({match[2]}) ({match[1]})"


# -- the running stack ----------------------------------------------------------------------


@pytest.fixture
def stack(broker: Broker, tmp_path: Path, write_config: Any,
          prometheus_server: Prometheus) -> Iterator[Dict[str, str]]:  # noqa: F811
    """An agent and a central, both scraped by the session's Prometheus."""
    agent_port, central_port = free_port(), free_port()
    zone, bin_dir = tmp_path / "thermal" / "thermal_zone0", tmp_path / "bin"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48312\n")  # millidegrees, as sysfs has it
    bin_dir.mkdir()
    (bin_dir / "vcgencmd").write_text("#!/bin/sh\necho throttled=0x50000\n")  # throttled before
    (bin_dir / "vcgencmd").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    cfg = write_config(
        tmp_path / "agent.toml", device={"id": DEVICE, "camera": "door"},
        # A stationary scene long enough to learn the reference, then the lens goes black.
        source={"uri": "emulated:black?seed=3&size=160x120&onset=30", "fps": 15},
        store={"path": tmp_path / "agent.db", "flush_interval_s": 0.2},
        drift={"warmup_s": 10.0, "window_frames": 64, "eval_interval_s": 0.5},
        rules={"black_for_s": 0.5, "window_s": 1.0},
        health={"enabled": True, "thermal_root": str(zone.parent)},
        metrics={"enabled": True, "host": "127.0.0.1", "port": agent_port},
        mqtt={"enabled": True, "host": broker.host, "port": broker.port, "device_id": DEVICE,
              "heartbeat_interval_s": 2.0})
    procs = [
        subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env),
        subprocess.Popen([sys.executable, "-m", "agent.cli", "central", "--broker", broker.host,
                          "--port", str(broker.port), "--db", str(tmp_path / "central.db"),
                          "--metrics-port", str(central_port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
    ]
    targets = {"agent": f"127.0.0.1:{agent_port}", "central": f"127.0.0.1:{central_port}"}
    try:
        prometheus_server.scrape({"edgewatch-device": [targets["agent"]],
                                  "edgewatch-central": [targets["central"]]})
        yield targets
    finally:
        prometheus_server.scrape({}, timeout=5)
        errors = []
        for proc in procs:
            errors.append(stop_process(proc))
        assert not any("Traceback" in e for e in errors), "\n".join(errors)


def one(prom: Prometheus, expr: str) -> float:
    """The value of a query that must return exactly one series."""
    result = prom.values(expr)
    assert len(result) == 1, f"{expr}: {result}"
    return float(result[0]["value"][1])


@pytest.mark.integration
def test_prometheus_scrapes_the_agent_and_the_central_and_every_panel_has_data(
        stack: Dict[str, str], prometheus_server: Prometheus) -> None:  # noqa: F811
    prom = prometheus_server
    agent = f'instance="{stack["agent"]}"'
    # The scene goes black at 30 s: the camera fault opens on the device and at the central.
    wait(lambda: prom.values(f'edgewatch_alerts{{{agent}, kind="camera_fault"}}'), timeout=120,
         what="camera_fault open in the device's metrics")
    wait(lambda: prom.values(f'edgewatch_fleet_alerts{{device="{DEVICE}", '
                             'kind="camera_fault"} > 0'), timeout=30,
         what="camera_fault counted in the central's metrics")

    assert one(prom, f'edgewatch_info{{{agent}, device="{DEVICE}", camera="door"}}') == 1
    assert one(prom, f'edgewatch_frames_total{{{agent}}}') > 100
    assert 1 <= one(prom, f'edgewatch_fps{{{agent}}}') <= 40  # the source runs at 15 fps
    assert one(prom, f'edgewatch_inference_seconds_count{{{agent}}}') > 100
    assert 0 < one(prom, f'histogram_quantile(0.5, rate(edgewatch_inference_seconds_bucket'
                         f'{{{agent}}}[10s]))') < 1  # BlazeFace: milliseconds
    assert one(prom, f'sum(edgewatch_monitoring_state{{{agent}}})') == 1
    assert one(prom, f'edgewatch_mqtt_connected{{{agent}}}') == 1
    assert 0 <= one(prom, f'edgewatch_cpu_ratio{{{agent}}}') <= 1
    assert one(prom, f'edgewatch_temperature_celsius{{{agent}}}') == pytest.approx(48.3, abs=0.05)
    assert one(prom, f'edgewatch_throttled{{{agent}}}') == 0  # throttled since boot, not now
    assert one(prom, f'edgewatch_image_stat{{{agent}, feature="brightness"}}') < 10  # black
    low = one(prom, f'edgewatch_image_stat_reference{{{agent}, feature="brightness", '
                    'quantile="0.05"}')
    assert low > 10  # the reference was learned on the lit scene
    assert prom.values(f'edgewatch_drift_score{{{agent}}}')
    assert one(prom, f'edgewatch_fleet_device_online{{device="{DEVICE}"}}') == 1
    assert one(prom, 'edgewatch_fleet_devices{state="online"}') == 1
    assert 0 <= one(prom, f'edgewatch_fleet_heartbeat_age_seconds{{device="{DEVICE}"}}') < 30
    assert 1 <= one(prom, f'edgewatch_fleet_fps{{device="{DEVICE}"}}') <= 40

    # Every panel query of both dashboards, as Grafana sends it, answers with data.
    values = {"instance": stack["agent"], "feature": ".+", "device": ".+"}
    failed: List[str] = []
    for name, dash in DASHBOARDS.items():
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                expr = substitute(variable_query(var["definition"]), values)
                answer = prom.query(expr)
                if answer["status"] != "success" or not answer["data"]["result"]:
                    failed.append(f"{name} variable ${var['name']}: {expr}: {answer}")
        for title, raw in queries(dash):
            expr = substitute(raw, values)
            answer = prom.query(expr)
            if answer["status"] != "success":
                failed.append(f"{name} / {title}: {expr}: {answer.get('error')}")
            elif not answer["data"]["result"]:
                failed.append(f"{name} / {title}: {expr}: no data")
    assert not failed, "\n".join(failed)

    # The example alerting rules evaluate without error on the real series (label matching
    # of the joins included). The black scene is data drift too (brightness left its band):
    # both drift rules are pending (for: 1m) or firing, naming the device; the device is
    # online, its outbox drains and no notification fails, so those rules stay inactive.
    wait(lambda: prom.values(f'edgewatch_alerts{{{agent}, kind="data_drift"}}'), timeout=60,
         what="data_drift open in the device's metrics")
    drift_rules = {"EdgewatchDriftFiring", "EdgewatchDeviceDriftFiring"}

    def evaluated() -> List[Dict[str, Any]]:
        rules = prom.rules()
        done = rules and all(r["health"] != "unknown" for r in rules)
        active = {r["name"] for r in rules if r["state"] != "inactive"}
        return rules if done and drift_rules <= active else []
    rules = wait(evaluated, timeout=30, what="every rule evaluated, the drift rules active")
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert {r["name"] for r in rules if r["state"] != "inactive"} == drift_rules
    for rule in rules:
        for alert in rule["alerts"]:
            assert alert["labels"]["device"] == DEVICE, alert
