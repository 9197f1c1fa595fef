"""Home Assistant MQTT discovery against a real Mosquitto running the example ACL.

A real agent (emulated black camera, real model) publishes its discovery configs; a client
logged in as ``homeassistant`` reads them as Home Assistant would. Home Assistant itself needs
a newer Python than this machine's, so the test holds the rules its documentation gives
(https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery, .../binary_sensor.mqtt/,
.../sensor.mqtt/) and renders every value template with Jinja2, as Home Assistant does, on
the summaries the agent actually published.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Set

import jinja2
import pytest
from broker import Broker, make_password_file
from helpers import wait
from procs import stop_process

from agent.config import load_config
from agent.errors import ConfigError
from agent.homeassistant import HomeAssistant, entities
from agent.mqtt import MqttLink
from agent.records import KINDS, MONITORING_STATES
from agent.store import Store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ACL = REPO / "configs" / "mosquitto" / "acl"
DEVICE = "cam-ha"

# Home Assistant's discovery topic: <prefix>/<component>/[<node_id>/]<object_id>/config.
TOPIC_RE = re.compile(r"^homeassistant/(?P<component>\w+)/(?:(?P<node>[a-zA-Z0-9_-]+)/)?"
                      r"(?P<object>[a-zA-Z0-9_-]+)/config$")
# What each component's MQTT platform requires (its docs' "required" keys).
REQUIRED = {"binary_sensor": {"state_topic"}, "sensor": {"state_topic"}}
DEVICE_CLASSES = {
    "binary_sensor": {
        "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
        "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
        "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
        "smoke", "sound", "tamper", "update", "vibration", "window"},
    "sensor": {
        "apparent_power", "aqi", "atmospheric_pressure", "battery", "carbon_dioxide",
        "carbon_monoxide", "current", "data_rate", "data_size", "date", "distance", "duration",
        "energy", "enum", "frequency", "gas", "humidity", "illuminance", "irradiance",
        "moisture", "monetary", "nitrogen_dioxide", "power", "power_factor", "pressure",
        "signal_strength", "sound_pressure", "speed", "temperature", "timestamp", "voltage",
        "volume", "water", "weight", "wind_speed"},
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
ENTITY_CATEGORIES = {"config", "diagnostic"}


def _agent(tmp_path: Path, write_config: Any, broker: Broker, *, homeassistant: bool
           ) -> subprocess.Popen[bytes]:
    cfg = write_config(
        tmp_path / f"agent-{homeassistant}.toml", device={"id": DEVICE},
        source={"uri": "emulated:black?seed=1&size=160x120&onset=0", "fps": 15},
        store={"path": tmp_path / "agent.db", "flush_interval_s": 0.2},
        rules={"black_for_s": 0.5, "window_s": 1.0}, drift={"eval_interval_s": 0.5},
        mqtt={"enabled": True, "host": broker.host, "port": broker.port, "device_id": DEVICE,
              "username": DEVICE, "password": "pw-dev", "heartbeat_interval_s": 2.0,
              "homeassistant": homeassistant})
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _latest(messages: List[Any], topic: str) -> Dict[str, bytes]:
    return {m.topic: bytes(m.payload) for m in messages if m.topic.startswith(topic)}


def check_config(topic: str, config: Dict[str, Any]) -> str:
    """Check one discovery config against Home Assistant's rules; its component."""
    match = TOPIC_RE.match(topic)
    assert match, f"{topic}: not a discovery topic Home Assistant accepts"
    component = match["component"]
    assert component in REQUIRED, f"{topic}: unexpected component"
    assert REQUIRED[component] <= set(config), f"{topic}: lacks {REQUIRED[component]}"
    assert match["node"] == f"edgewatch_{DEVICE}"
    assert config["unique_id"] == f"edgewatch_{DEVICE}_{match['object']}"
    cls = config.get("device_class")
    assert cls is None or cls in DEVICE_CLASSES[component], f"{topic}: device_class {cls}"
    assert config.get("state_class") in STATE_CLASSES | {None}
    assert config.get("entity_category") in ENTITY_CATEGORIES | {None}
    if cls == "enum":  # an enum sensor has options and neither a unit nor a state class
        assert config["options"] and "unit_of_measurement" not in config
        assert "state_class" not in config
    device = config["device"]
    assert device["identifiers"] == [f"edgewatch_{DEVICE}"]
    assert {"name", "model", "sw_version", "manufacturer"} <= set(device)
    [availability] = config["availability"]
    assert availability == {"topic": f"edgewatch/v1/{DEVICE}/status",
                            "payload_available": "online", "payload_not_available": "offline"}
    return component


def render(config: Dict[str, Any], payload: bytes) -> str:
    """The entity's state from one state message, as Home Assistant renders it."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    text = payload.decode()
    return env.from_string(config["value_template"]).render(value_json=json.loads(text),
                                                             value=text)


def test_discovery_configs_follow_home_assistant_and_their_templates_read_real_summaries(
        broker_factory, listeners, tmp_path, write_config) -> None:
    pw = make_password_file(tmp_path / "passwd", {DEVICE: "pw-dev", "homeassistant": "pw-ha"})
    broker = broker_factory(password_file=pw, acl_file=EXAMPLE_ACL)
    ha = listeners(broker, ["homeassistant/#", f"edgewatch/v1/{DEVICE}/status",
                            f"edgewatch/v1/{DEVICE}/summary"],
                   username="homeassistant", password="pw-ha")
    ha.wait_connected()
    summary_topic = f"edgewatch/v1/{DEVICE}/summary"

    def problem_seen(ms: List[Any]) -> bool:
        last = [json.loads(m.payload) for m in ms if m.topic == summary_topic and m.payload]
        return bool(last) and last[-1]["problems"]["camera_fault"] and last[-1]["fps"]

    agent = _agent(tmp_path, write_config, broker, homeassistant=True)
    try:
        messages = ha.wait_for(problem_seen, timeout=60)
        configs = {t: json.loads(p) for t, p in _latest(messages, "homeassistant/").items()}
        assert len(configs) == len(KINDS) + 5
        late = listeners(broker, ["homeassistant/#"], username="homeassistant", password="pw-ha")
        late.wait_connected()  # Home Assistant starting later gets every config, retained
        kept = late.wait_for(lambda ms: len(ms) == len(configs))
        assert all(m.retain for m in kept) and {m.topic for m in kept} == set(configs)
        components = [check_config(t, c) for t, c in configs.items()]
        assert components.count("binary_sensor") == len(KINDS)
        assert len({c["unique_id"] for c in configs.values()}) == len(configs)
        assert {c["state_topic"] for c in configs.values()} == {summary_topic}
        assert [m.payload for m in ha.on(f"edgewatch/v1/{DEVICE}/status")][-1] == b"online"

        last = [m.payload for m in messages if m.topic == summary_topic][-1]
        states = {c["unique_id"].removeprefix(f"edgewatch_{DEVICE}_"): render(c, last)
                  for c in configs.values()}
        assert states["problem_camera_fault"] == "ON"
        assert {states[f"problem_{k}"] for k in KINDS} <= {"ON", "OFF"}
        for key in ("fps", "brightness", "top_score"):
            float(states[key])  # a number, from a real summary
        assert states["worst_drift"] == "None" or float(states["worst_drift"]) >= 0
        assert states["monitoring"] in MONITORING_STATES
    finally:
        err = stop_process(agent)
    assert "Traceback" not in err, err
    ha.wait_for(lambda ms: [m.payload for m in ms if m.topic.endswith("/status")][-1:]
                == [b"offline"], timeout=10)

    # Turned off: the next run removes every config (and the summary) it had published.
    cleared = len(ha.messages)
    agent = _agent(tmp_path, write_config, broker, homeassistant=False)
    try:
        ha.wait_for(lambda ms: {m.topic for m in ms[cleared:] if m.payload == b""}
                    >= set(configs) | {summary_topic}, timeout=30)
    finally:
        stop_process(agent)
    assert "Denied PUBLISH" not in broker.log()
    fresh = listeners(broker, ["homeassistant/#", f"edgewatch/v1/{DEVICE}/status"],
                      username="homeassistant", password="pw-ha")
    fresh.wait_connected()
    # Retained messages come in subscription order: once the status is in, no config is left.
    fresh.wait_for(lambda ms: any(m.topic.endswith("/status") for m in ms))
    assert [m.topic for m in fresh.messages if m.topic.startswith("homeassistant/")] == []


def test_the_acl_keeps_each_device_to_its_own_discovery_node(broker_factory, listeners,
                                                            tmp_path) -> None:
    pw = make_password_file(tmp_path / "passwd", {DEVICE: "pw-dev", "homeassistant": "pw-ha"})
    broker = broker_factory(password_file=pw, acl_file=EXAMPLE_ACL)
    ha = listeners(broker, ["homeassistant/#"], username="homeassistant", password="pw-ha")
    ha.wait_connected()
    device = listeners(broker, [], username=DEVICE, password="pw-dev")
    device.wait_connected()
    own = f"homeassistant/sensor/edgewatch_{DEVICE}/fps/config"
    other = "homeassistant/sensor/edgewatch_cam-other/fps/config"
    device.publish(other, "{}", retain=True)
    device.publish(own, "{}", retain=True)
    ha.wait_for(lambda ms: any(m.topic == own for m in ms))
    broker.wait_log(r"Denied PUBLISH from .*edgewatch_cam-other")
    assert not ha.on(other)


def test_home_assistant_needs_mqtt_and_refuses_a_device_id_with_a_dot() -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.homeassistant: .*'gate\.1'"):
        load_config({"mqtt": {"enabled": True, "device_id": "gate.1", "homeassistant": True}})
    with pytest.raises(ConfigError, match=r"mqtt\.homeassistant: publishes over MQTT"):
        load_config({"mqtt": {"homeassistant": True}})
    assert load_config({"mqtt": {"device_id": "gate.1"}}).mqtt.device_id == "gate.1"
    assert len(entities()) == len({e.object_id for e in entities()})


def test_configs_come_back_after_a_broker_restart_and_a_problem_is_published_at_once(
        broker_factory, listeners, tmp_path) -> None:
    """The agent's own link and publisher: configs on every (re)connect (a broker without
    persistence forgets retained messages), the summary again as soon as a kind opens."""
    broker = broker_factory(persistence=False)
    config = load_config({"device": {"id": DEVICE}, "mqtt": {
        "enabled": True, "host": broker.host, "port": broker.port, "homeassistant": True,
        "reconnect_min_s": 1, "reconnect_max_s": 1, "keepalive": 5}})
    kinds: Set[str] = set()
    summaries: List[Dict[str, Any]] = []

    def summary() -> Dict[str, Any]:
        summaries.append({"fps": 15.0, "problems": {k: k in kinds for k in KINDS}})
        return summaries[-1]

    store = Store(str(tmp_path / "agent.db"), flush_interval_s=0.2).start()
    link = MqttLink(config.mqtt, store)
    ha = HomeAssistant(config, {"path": "m.tflite"}, summary=summary,
                       open_kinds=lambda: frozenset(kinds), interval_s=3600.0)
    ha.attach(link)
    link.start()
    try:
        wait(lambda: link.connected, what="link connected")
        ha.step()
        ha.step()  # nothing changed: nothing published
        assert ha.published == 1
        kinds.add("data_drift")
        ha.step()
        assert ha.published == 2 and summaries[-1]["problems"]["data_drift"] is True

        broker.restart()  # retained messages gone with it
        wait(lambda: link.status()["connects"] >= 2, timeout=20, what="reconnected")
        wait(lambda: (ha.step(), ha.published >= 3)[1], what="summary after the reconnect")
        # The broker has the summary (published after the configs): a late subscriber now
        # gets everything retained.
        broker.wait_log(rf"Received PUBLISH from {DEVICE} .*'edgewatch/v1/{DEVICE}/summary'",
                        count=3)
        late = listeners(broker, ["homeassistant/#", f"edgewatch/v1/{DEVICE}/summary"])
        late.wait_connected()
        got = late.wait_for(lambda ms: len({m.topic for m in ms}) == len(entities()) + 1)
        assert all(m.retain for m in got)
    finally:
        link.close()
        store.close()
