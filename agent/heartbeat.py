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
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from ._version import __version__
from .config import Config
from .health import HealthLimits, HealthReader, health_checks
from .monitor import Monitor
from .mqtt import MqttLink
from .records import KINDS, Observation
from .store import Store
from .supervise import Supervisor

log = logging.getLogger(__name__)

__all__ = ["FrameRate", "Heartbeat", "HealthWatch", "Heartbeats", "heartbeat_interval",
           "summary"]

# 2: mqtt.refused and mqtt.last_refusal; 3: camera.fps and camera.dropped, drift_scores and
# summary (the central accepts 1, 2 and 3).
SCHEMA = 3
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
    #: Distance over threshold per feature at the last drift test (>= 1: over); {} before one.
    drift_scores: Dict[str, float] = field(default_factory=dict)
    #: The flat block Home Assistant and the central's metrics read (see :func:`summary`).
    summary: Optional[Dict[str, Any]] = None

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
            "monitoring": self.monitoring, "drift_scores": self.drift_scores,
            "summary": self.summary,
        }


def summary(fps: Optional[float], snap: Mapping[str, Any]) -> Dict[str, Any]:
    """The heartbeat's ``summary`` from a monitor snapshot: fps, brightness, top score, the
    worst drift score and its feature, the monitoring state, and a problem flag per alert kind."""
    scores: Dict[str, float] = snap["drift_scores"]
    worst = max(scores, key=lambda f: scores[f]) if scores else None
    open_kinds = {a["kind"] for a in snap["alerts_open"]}
    return {"fps": fps, "brightness": snap["stats"].get("brightness"),
            "top_score": snap["confidence"].get("top_score"),
            "worst_drift": None if worst is None else scores[worst],
            "worst_drift_feature": worst, "monitoring": snap["monitoring"]["state"],
            "problems": {kind: kind in open_kinds for kind in KINDS}}


class FrameRate:
    """Frames per second over the last ``window_s``, from counts sampled on the heartbeat tick.

    >>> rate = FrameRate(2.0)
    >>> rate.fps is None
    True
    >>> for t, frames in [(0.0, 0), (1.0, 30), (2.0, 60), (3.0, 75)]:
    ...     rate.sample(t, frames)
    >>> rate.fps  # (75 - 30) frames over the last 2 s
    22.5
    """

    def __init__(self, window_s: float) -> None:
        self._window = max(window_s, 1.0)
        self._samples: Deque[Tuple[float, int]] = deque()

    def sample(self, now: float, frames: int) -> None:
        """Note the frame count at ``now`` (monotonic seconds); keeps one window of samples."""
        self._samples.append((now, frames))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()

    @property
    def fps(self) -> Optional[float]:
        """The rate over the samples held; None until two samples a moment apart."""
        if len(self._samples) < 2:
            return None
        (t0, f0), (t1, f1) = self._samples[0], self._samples[-1]
        return None if t1 <= t0 else round(max(f1 - f0, 0) / (t1 - t0), 2)


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
        self.rate = FrameRate(self.interval_s)
        #: Frames the source lost (failed reads, skipped files, lost connections); the loop
        #: that owns the source sets it.
        self.source_losses: Callable[[], int] = lambda: 0
        self._seq = 0
        self._started = time.time()
        now = time.monotonic()
        self._next_beat = now + min(self.interval_s, 5.0)
        self._next_health = now

    @property
    def uptime_s(self) -> float:
        """Seconds since the agent started."""
        return round(time.time() - self._started, 1)

    def step(self) -> None:
        """One tick: called every second by the supervisor."""
        self._supervisor.check()
        now_m = time.monotonic()
        self.rate.sample(now_m, self._monitor.frames)
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

    def dropped(self) -> Dict[str, int]:
        """Frames lost so far, by reason: ``bad_frame`` (unusable or failed to observe) and
        ``source`` (reads the source lost)."""
        return {"bad_frame": self._monitor.bad_frames, "source": self.source_losses()}

    def _camera_part(self, snap: Mapping[str, Any], now: float) -> Dict[str, Any]:
        cam = {"name": self._config.device.camera, **self._camera, "frames": snap["frames"],
               "fps": self.rate.fps, "dropped": sum(self.dropped().values())}
        if snap["last_frame_ts"] is not None:
            cam["last_frame_age_s"] = round(now - snap["last_frame_ts"], 3)
        return cam

    def current(self) -> Heartbeat:
        """The heartbeat as it would be sent now."""
        snap = self._monitor.snapshot()
        now = self._clock()
        stats = self._store.stats()
        info = self._model_info
        return Heartbeat(
            device=self._config.device.id, seq=self._seq, ts=now, interval_s=self.interval_s,
            uptime_s=self.uptime_s,
            model={k: info.get(k) for k in ("path", "sha256", "runtime", "delegate")}
            | {"latency_ms": snap["latency_ms"]},
            camera=self._camera_part(snap, now),
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
            monitoring=snap["monitoring"], drift_scores=snap["drift_scores"],
            summary=summary(self.rate.fps, snap))
