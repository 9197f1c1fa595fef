"""Home Assistant MQTT discovery: the device appears in Home Assistant with no YAML.

With ``[mqtt] homeassistant = true`` the agent publishes, retained, on every (re)connect::

    <homeassistant_prefix>/<component>/edgewatch_<device>/<object>/config

one config per entity of one Home Assistant device (``edgewatch_<device>``):

- a ``binary_sensor`` of device class ``problem`` per alert kind (:data:`agent.records.KINDS`),
  on while an alert of that kind is open;
- ``sensor`` s for frames per second, brightness, the top detection score, the worst drift
  score (distance over threshold: 1 or more is over its threshold) and the monitoring state.

Every entity reads the same retained state topic, ``edgewatch/v1/<device>/summary``, which
holds the heartbeat's ``summary`` block (schema 3); :class:`HomeAssistant` publishes it on
each heartbeat interval, on each (re)connect and within a second of an alert kind opening or
closing, so a problem shows up without waiting for the next heartbeat. Availability is the
agent's retained last will, ``edgewatch/v1/<device>/status`` (``online``/``offline``): when
the agent dies, the broker marks every entity unavailable.

Unique ids are ``edgewatch_<device>_<object>``: stable across restarts and model changes.

With ``homeassistant = false`` (the default) the agent publishes an empty retained payload to
each of these topics on connect, which is how MQTT discovery removes entities: turning the
option off removes the device from Home Assistant. The set of topics is fixed (it depends
only on the device id and the prefix), so the agent clears exactly what it may have
published, without remembering it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from ._version import __version__
from .config import Config
from .mqtt import OFFLINE, ONLINE, MqttLink, topics
from .records import KINDS, MONITORING_STATES

log = logging.getLogger(__name__)

__all__ = ["HomeAssistant", "Entity", "entities", "discovery_messages", "clear_messages"]

Message = Tuple[str, str]  # (topic, payload), published retained with QoS 1
_DIAGNOSTIC_KINDS = ("device_health", "monitoring")


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity of the device: its component, object id and config fields."""

    component: str  # "binary_sensor" | "sensor"
    object_id: str
    name: str
    value_template: str
    extra: Mapping[str, Any]


def _problem(kind: str) -> Entity:
    extra: Dict[str, Any] = {"device_class": "problem", "payload_on": "ON", "payload_off": "OFF"}
    if kind in _DIAGNOSTIC_KINDS:
        extra["entity_category"] = "diagnostic"
    return Entity("binary_sensor", f"problem_{kind}", kind.replace("_", " ").capitalize(),
                  f"{{{{ 'ON' if value_json.problems.{kind} else 'OFF' }}}}", extra)


def _measure(key: str, name: str, unit: Optional[str], icon: str, precision: int) -> Entity:
    extra: Dict[str, Any] = {"state_class": "measurement", "icon": icon,
                             "suggested_display_precision": precision}
    if unit is not None:
        extra["unit_of_measurement"] = unit
    return Entity("sensor", key, name, f"{{{{ value_json.{key} }}}}", extra)


def entities() -> List[Entity]:
    """The fixed set of entities (problem sensors, then measurements), the same for every device."""
    return [_problem(kind) for kind in KINDS] + [
        _measure("fps", "Frames per second", "fps", "mdi:speedometer", 1),
        _measure("brightness", "Brightness", None, "mdi:brightness-6", 1),
        _measure("top_score", "Top score", None, "mdi:target", 2),
        _measure("worst_drift", "Worst drift", None, "mdi:chart-bell-curve", 2),
        Entity("sensor", "monitoring", "Monitoring", "{{ value_json.monitoring }}",
               {"device_class": "enum", "options": list(MONITORING_STATES),
                "entity_category": "diagnostic", "icon": "mdi:eye-check"}),
    ]


def node_id(device_id: str) -> str:
    """The discovery node id of a device (Home Assistant allows ``[A-Za-z0-9_-]``)."""
    return f"edgewatch_{device_id}"


def config_topic(config: Config, entity: Entity) -> str:
    """``<prefix>/<component>/edgewatch_<device>/<object>/config``."""
    mqtt = config.mqtt
    return (f"{mqtt.homeassistant_prefix}/{entity.component}/{node_id(mqtt.device_id)}/"
            f"{entity.object_id}/config")


def _device(config: Config, model_info: Mapping[str, Any]) -> Dict[str, Any]:
    model = Path(str(model_info.get("path") or "model")).name
    return {"identifiers": [node_id(config.mqtt.device_id)],
            "name": f"edgewatch {config.mqtt.device_id}",
            "model": f"{model} on {config.device.camera}", "manufacturer": "edgewatch",
            "sw_version": __version__}


def discovery_messages(config: Config, model_info: Mapping[str, Any]) -> List[Message]:
    """The retained discovery config of every entity."""
    t = topics(config.mqtt.topic_prefix, config.mqtt.device_id)
    device = _device(config, model_info)
    out: List[Message] = []
    for entity in entities():
        body: Dict[str, Any] = {
            "name": entity.name,
            "unique_id": f"{node_id(config.mqtt.device_id)}_{entity.object_id}",
            "state_topic": t.summary, "value_template": entity.value_template,
            "availability": [{"topic": t.status, "payload_available": ONLINE,
                              "payload_not_available": OFFLINE}],
            "device": device, "origin": {"name": "edgewatch", "sw_version": __version__},
            **entity.extra,
        }
        out.append((config_topic(config, entity),
                    json.dumps(body, separators=(",", ":"), sort_keys=True)))
    return out


def clear_messages(config: Config) -> List[Message]:
    """Empty retained payloads for every config and the summary: Home Assistant removes them."""
    t = topics(config.mqtt.topic_prefix, config.mqtt.device_id)
    return [(config_topic(config, e), "") for e in entities()] + [(t.summary, "")]


class HomeAssistant:
    """Publishes discovery configs on connect and keeps the retained summary up to date.

    ``summary`` returns the heartbeat's ``summary`` block as it would be sent now;
    ``open_kinds`` the alert kinds open now (both cheap, called from the worker thread).
    Attach with :meth:`attach`; run :meth:`step` every second under the agent's supervisor.
    """

    def __init__(self, config: Config, model_info: Mapping[str, Any], *,
                 summary: Callable[[], Mapping[str, Any]],
                 open_kinds: Callable[[], FrozenSet[str]], interval_s: float) -> None:
        self._config = config
        self._model_info = dict(model_info)
        self._summary = summary
        self._open_kinds = open_kinds
        self._interval_s = interval_s
        self._topic = topics(config.mqtt.topic_prefix, config.mqtt.device_id).summary
        self._dirty = threading.Event()
        self._kinds: Optional[FrozenSet[str]] = None
        self._next = 0.0
        self._link: Optional[MqttLink] = None
        self.published = 0

    @property
    def enabled(self) -> bool:
        """True when ``[mqtt] homeassistant`` is on."""
        return self._config.mqtt.homeassistant

    def attach(self, link: MqttLink) -> None:
        """Publish this device's discovery configs (or their removal) on every connect."""
        self._link = link
        link.publish_on_connect(self.connect_messages)

    def connect_messages(self) -> Sequence[Message]:
        """What to publish (retained) on connect; the summary follows within a second."""
        if not self.enabled:
            return clear_messages(self._config)
        self._dirty.set()
        return discovery_messages(self._config, self._model_info)

    def step(self) -> None:
        """Publish the summary when an alert kind opened or closed, on connect, or when due."""
        link = self._link
        if link is None or not link.connected:
            return
        kinds = self._open_kinds()
        now = time.monotonic()
        if not (self._dirty.is_set() or kinds != self._kinds or now >= self._next):
            return
        self._dirty.clear()
        self._kinds = kinds
        self._next = now + self._interval_s
        payload = json.dumps(dict(self._summary()), separators=(",", ":"), sort_keys=True)
        if link.publish_retained(self._topic, payload):
            self.published += 1
