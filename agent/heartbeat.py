"""The heartbeat: a typed record of the agent's state, and the periodic work that sends it.

Every tick (one second) the heartbeat worker checks that the other threads are alive
(:meth:`agent.supervise.Supervisor.check`), checks for a stalled source, reads device
health when it is due and, every heartbeat interval, stores and publishes one
:class:`Heartbeat`. Health readings become ``device_health`` observations, breach or
clear, so a hot device fires an alert and the same alert resolves once it has cooled down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from ._version import __version__
from .config import Config
from .health import HealthLimits, HealthReader, health_checks
from .monitor import Monitor
from .mqtt import MqttLink
from .records import Observation
from .store import Store
from .supervise import Supervisor

log = logging.getLogger(__name__)

__all__ = ["Heartbeat", "HealthWatch", "Heartbeats", "heartbeat_interval"]

SCHEMA = 2  # 2: mqtt.refused and mqtt.last_refusal (the central accepts 1 and 2)
_HOST_KEYS = ("cpu_percent", "load", "max_temp_c", "temperatures", "throttled", "gpu_percent")


def heartbeat_interval(config: Config) -> float:
    """Seconds between heartbeats: MQTT's interval when MQTT is on, else the service's."""
    if config.mqtt.enabled:
        return config.mqtt.heartbeat_interval_s
    return config.service.heartbeat_interval_s


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat, as stored in SQLite and published on ``<device>/heartbeat``."""

    device: str
    seq: int
    ts: float
    interval_s: float
    uptime_s: float
    model: Dict[str, Any]
    camera: Dict[str, Any]
    stats: Dict[str, Any]
    confidence: Dict[str, Any]
    drift: Dict[str, Any]
    reference: Optional[Dict[str, Any]]
    warmup: Optional[Dict[str, Any]]
    alerts_open: List[Dict[str, Any]]
    host: Dict[str, Any]
    agent: Dict[str, Any]
    queues: Dict[str, Any]
    outbox: Dict[str, Any]
    mqtt: Optional[Dict[str, Any]]
    threads: Dict[str, Dict[str, object]]
    errors: Dict[str, Any]
    schema: int = SCHEMA
    agent_version: str = __version__
    #: Is drift detection running: {"state", "reason", "since", "reference", "features_off"}.
    monitoring: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (the keys heartbeats have always had, plus threads and errors)."""
        return {
            "schema": self.schema, "device": self.device, "agent_version": self.agent_version,
            "seq": self.seq, "ts": self.ts, "interval_s": self.interval_s,
            "uptime_s": self.uptime_s, "model": self.model, "camera": self.camera,
            "stats": self.stats, "confidence": self.confidence, "drift": self.drift,
            "reference": self.reference, "warmup": self.warmup, "alerts_open": self.alerts_open,
            "host": self.host, "agent": self.agent, "queues": self.queues, "outbox": self.outbox,
            "mqtt": self.mqtt, "threads": self.threads, "errors": self.errors,
            "monitoring": self.monitoring,
        }


class HealthWatch:
    """Reads device health and turns each reading into ``device_health`` observations."""

    def __init__(self, config: Config) -> None:
        h = config.health
        self._config = config
        self._reader = HealthReader(config.store.path, thermal_root=h.thermal_root,
                                    gpu_load_path=h.gpu_load_path)
        self._limits = HealthLimits(temp_c=h.temp_c, temp_critical_c=max(h.temp_c + 5, 85.0),
                                    disk_free_mb=h.disk_free_mb, memory_percent=h.memory_percent)
        self.last: Dict[str, Any] = {}

    def read(self, now: float) -> List[Observation]:
        """One reading: an observation for every metric with a sensor, breached or clear."""
        health = self._reader.read_health(self._config.store.path)
        self.last = health
        return health_checks(health, self._limits, now=now, for_s=self._config.health.for_s)

    def host(self) -> Dict[str, Any]:
        """The ``host`` part of a heartbeat, from the last reading."""
        h = self.last
        return {k: h.get(k) for k in _HOST_KEYS} | {
            "memory_percent": (h.get("memory") or {}).get("percent"),
            "disk_free_mb": (h.get("disk") or {}).get("free_mb")}


class Heartbeats:
    """The heartbeat worker's step: threads, stalls, health and the heartbeat."""

    def __init__(self, config: Config, *, store: Store, monitor: Monitor, mqtt: Optional[MqttLink],
                 supervisor: Supervisor, model_info: Mapping[str, Any],
                 camera: Dict[str, Any], clock: Callable[[], float], live: bool) -> None:
        self._config = config
        self._store = store
        self._monitor = monitor
        self._mqtt = mqtt
        self._supervisor = supervisor
        self._model_info = model_info
        self._camera = camera
        self._clock = clock
        self._live = live
        self.health = HealthWatch(config)
        self.interval_s = heartbeat_interval(config)
        self._seq = 0
        self._started = time.time()
        now = time.monotonic()
        self._next_beat = now + min(self.interval_s, 5.0)
        self._next_health = now

    def step(self) -> None:
        """One tick: called every second by the supervisor."""
        self._supervisor.check()
        now_m = time.monotonic()
        if self._live and self._monitor.started is not None:
            self._monitor.check_stall(self._clock())
        if now_m >= self._next_health:
            self._next_health = now_m + self._config.health.interval_s
            if self._config.health.enabled:
                self.check_health()
            if self._mqtt is not None:  # refused publishes: an alert even without health checks
                now = self._clock()
                self._monitor.update_alerts([self._mqtt.refusal_observation(now)], now)
        if now_m >= self._next_beat:
            self._next_beat = now_m + self.interval_s
            self.beat()

    def check_health(self) -> None:
        """Read device health now and hand every observation to the alert manager."""
        now = self._clock()
        self._monitor.update_alerts(self.health.read(now), now)

    def beat(self) -> Heartbeat:
        """Build, store and publish one heartbeat."""
        self._seq += 1
        record = self.current()
        payload = record.to_dict()
        self._store.put("heartbeats", {"ts": record.ts, "payload": payload})
        if self._mqtt is not None:
            self._mqtt.publish_heartbeat(payload)
        return record

    def current(self) -> Heartbeat:
        """The heartbeat as it would be sent now."""
        snap = self._monitor.snapshot()
        now = self._clock()
        stats = self._store.stats()
        cam = dict(self._camera)
        if snap["last_frame_ts"] is not None:
            cam["last_frame_age_s"] = round(now - snap["last_frame_ts"], 3)
        info = self._model_info
        return Heartbeat(
            device=self._config.device.id, seq=self._seq, ts=now, interval_s=self.interval_s,
            uptime_s=round(time.time() - self._started, 1),
            model={k: info.get(k) for k in ("path", "sha256", "runtime", "delegate")}
            | {"latency_ms": snap["latency_ms"]},
            camera={"name": self._config.device.camera, **cam, "frames": snap["frames"]},
            stats=snap["stats"], confidence=snap["confidence"], drift=snap["drift"],
            reference=snap["reference"], warmup=snap["warmup"], alerts_open=snap["alerts_open"],
            host=self.health.host(), agent=self.health.last.get("process") or {},
            queues={"store": stats.get("queue_depth"), "dropped": stats.get("dropped"),
                    "write_errors": stats.get("write_errors"),
                    "last_error": stats.get("last_error"),
                    "capture": None if self._monitor.tap is None else self._monitor.tap.stats()},
            outbox={"depth": stats.get("outbox_depth"),
                    "oldest_age_s": stats.get("outbox_oldest_age_s"),
                    "dropped": stats.get("outbox_dropped")},
            mqtt=None if self._mqtt is None else self._mqtt.status(),
            threads=self._supervisor.health(),
            errors={k: snap[k] for k in ("bad_frames", "hook_errors", "last_hook_error")},
            monitoring=snap["monitoring"])
