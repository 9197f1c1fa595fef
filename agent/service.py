"""The service: wires source -> model -> monitor -> alerts -> store/MQTT, and runs loops.

:class:`Agent` owns the parts and the threads at the edges (storage writer, MQTT,
heartbeat). :meth:`Agent.start` reads as the table of contents. ``run`` owns the live
loop; ``replay`` runs a finite source as fast as it can with synthetic timestamps;
:func:`build_monitor` serves the in-process hook (``Monitor.from_config``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ._version import __version__
from .alerts import AlertManager, AlertTransition
from .config import Config, load_config
from .control import ControlServer, socket_path
from .drift.reference import Reference
from .errors import AgentError, BaselineError, CommandError, SourceError
from .health import HealthLimits, HealthReader, health_checks
from .inference import Model
from .monitor import FEATURES_VERSION, Monitor
from .mqtt import MqttLink, alert_outbox_messages, topics
from .notify import Notifier
from .sources import Source, open_source
from .store import Store

log = logging.getLogger(__name__)


class _StoreSink:
    """Monitor sink that queues windows, events and references for the SQLite writer."""

    def __init__(self, store: Store, model_sha256: str) -> None:
        self.store = store
        self.sha = model_sha256

    def window(self, row: Dict[str, Any]) -> None:
        """Queue a summary window (never blocks; overflow is counted by the store)."""
        self.store.put("windows", row)

    def event(self, kind: str, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        """Queue an event and log it, one line."""
        log.info("%s: %s", kind, message)
        self.store.put("events", {"kind": kind, "message": message, "data": data or {}})

    def reference_learned(self, reference: Reference) -> None:
        """Persist a warm-up reference so a restart keeps it."""
        self.store.save_reference(ts=reference.created, model_sha256=self.sha,
                                  origin=reference.origin, blob=reference.to_bytes(),
                                  features_version=FEATURES_VERSION)


def load_stored_reference(store: Store, model_sha256: str) -> Optional[Reference]:
    """The newest reference in the database made for this model, if any."""
    blob = store.load_reference(model_sha256, FEATURES_VERSION)
    if blob is None:
        return None
    try:
        return Reference.from_bytes(blob)
    except BaselineError as exc:
        log.warning("stored reference unusable, learning a new one: %s", exc)
        return None


def restore_alerts(store: Store, alerts: AlertManager, now: float) -> None:
    """Reload open alerts, controls and the sequence number from the database."""
    controls = [c for c in store.controls() if c["kind"] != "snooze" or (c["until"] or 0) > now]
    alerts.restore(store.open_alert_records(), controls, store.max_alert_seq())


class Controls:
    """The operator API behind ``edgewatch alerts`` and the MQTT commands."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def _monitor(self) -> Monitor:
        if self._agent.monitor is None:
            raise CommandError("agent is not running (start it, then retry)")
        return self._agent.monitor

    def ack(self, alert: str) -> Dict[str, Any]:
        """Acknowledge a firing alert."""
        return self._monitor().control(lambda a: a.ack(alert))

    def snooze(self, target: str, until: float) -> Dict[str, Any]:
        """Snooze an alert, kind or feature until a unix time."""
        return self._monitor().control(lambda a: a.snooze(target, until))

    def disable(self, target: str) -> Dict[str, Any]:
        """Disable alerts of a kind or feature."""
        now = self._agent.clock()
        return self._monitor().control(lambda a: a.disable(target, now))

    def enable(self, target: str) -> Dict[str, Any]:
        """Enable alerts of a kind or feature again."""
        return self._monitor().control(lambda a: a.enable(target))

    def set_threshold(self, feature: str, value: float, metric: Optional[str] = None) -> Dict[str, Any]:
        """Override a feature's threshold."""
        return self._monitor().control(lambda a: a.set_threshold(feature, value, metric or ""))

    def rebaseline(self) -> Dict[str, Any]:
        """Forget the reference and learn a new one from the next warm-up period."""
        mon = self._monitor()
        mon.restart_warmup()
        return {"rebaseline": "warm-up started", "warmup_s": mon.config.drift.warmup_s}

    def status(self) -> Dict[str, Any]:
        """A short status of the running agent."""
        return self._agent.status()

    def ping(self) -> Dict[str, Any]:
        """Liveness."""
        return {"pong": True, "ts": self._agent.clock()}


class Agent:
    """Owns the store, alert manager, monitor, MQTT link and heartbeat thread."""

    def __init__(self, config: Config, *, model: Optional[Model] = None,
                 model_info: Optional[Dict[str, Any]] = None,
                 output_spec: Optional[Sequence[Any]] = None,
                 expected_fps: Optional[float] = None,
                 notifier: Optional[Notifier] = None,
                 clock: Callable[[], float] = time.time,
                 live: bool = True) -> None:
        self.config = config
        self.model = model
        self.model_info = model_info or (model.info() if model else {"path": None, "sha256": ""})
        if model is not None:
            self.model_info["input_size"] = model.input_size
        self.output_spec = output_spec if output_spec is not None else (
            model.output_details if model else None)
        self.expected_fps = expected_fps
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.live = live
        self.store: Optional[Store] = None
        self.sink: Optional[_StoreSink] = None
        self.alerts: Optional[AlertManager] = None
        self.monitor: Optional[Monitor] = None
        self.mqtt: Optional[MqttLink] = None
        self.control: Optional[ControlServer] = None
        self.controls = Controls(self)
        self.camera: Dict[str, Any] = {"state": "starting", "reconnects": 0, "dropped": 0}
        self._health = HealthReader(config.store.path, thermal_root=config.health.thermal_root)
        self._limits = HealthLimits(temp_c=config.health.temp_c, temp_critical_c=max(
            config.health.temp_c + 5, 85.0), disk_free_mb=config.health.disk_free_mb,
            memory_percent=config.health.memory_percent)
        self._last_health: Dict[str, Any] = {}
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._hb_seq = 0
        self._started_wall = time.time()
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> Agent:
        """Open storage, restore state, build the monitor, connect MQTT, start heartbeats."""
        cfg = self.config
        self.store = self._open_store()
        reference = self._load_reference()
        self.alerts = self._build_alerts()
        self.sink = _StoreSink(self.store, self.model_info.get("sha256", ""))
        self.monitor = Monitor(cfg, self.alerts, model_info=self.model_info, sink=self.sink,
                               reference=reference, output_spec=self.output_spec,
                               expected_fps=self.expected_fps, clock=self.clock)
        self.mqtt = self._start_mqtt()
        self.control = ControlServer(socket_path(cfg), self.controls,
                                     record=self.store.record_command).start()
        self.store.advertise(control_socket=self.control.path)
        self._start_thread("edgewatch-heartbeat", self._heartbeat_loop)
        self.event("start", f"edgewatch {__version__} started (model {self.model_info.get('path')}, "
                   f"reference: {'none, warm-up' if reference is None else reference.origin})")
        return self

    def _open_store(self) -> Store:
        s = self.config.store
        Path(s.path).parent.mkdir(parents=True, exist_ok=True)
        return Store(s.path, queue_size=s.queue_size, flush_interval_s=s.flush_interval_s,
                     retention_days=s.retention_days, max_db_mb=s.max_db_mb,
                     outbox_max=s.outbox_max, outbox_max_age_days=s.outbox_max_age_days).start()

    def _load_reference(self) -> Optional[Reference]:
        cfg, sha = self.config, self.model_info.get("sha256") or None
        if not cfg.drift.enabled:
            return None
        if cfg.drift.reference:
            from_file = Reference.load(cfg.drift.reference, expected_sha256=sha)
            log.info("reference: %s (%s, %d frames)", cfg.drift.reference, from_file.origin,
                     from_file.frames)
            return from_file
        assert self.store is not None
        stored = load_stored_reference(self.store, sha or "")
        if stored is not None:
            log.info("reference: %s, kept in %s (%d frames)", stored.origin, cfg.store.path,
                     stored.frames)
        else:
            log.info("no reference: learning one from the first %.0f s (warm-up)", cfg.drift.warmup_s)
        return stored

    def _build_alerts(self) -> AlertManager:
        assert self.store is not None
        alerts = AlertManager(device=self.config.device.id, camera=self.config.device.camera,
                              model=self.model_info, emit=self._on_alert,
                              repeat_interval_s=self.config.alerts.repeat_interval_s,
                              persist_control=self._persist_control)
        restore_alerts(self.store, alerts, self.clock())
        return alerts

    def _start_mqtt(self) -> Optional[MqttLink]:
        if not self.config.mqtt.enabled:
            return None
        from .commands import handle_command

        link = MqttLink(self.config.mqtt, self.store,
                        command_handler=lambda verb, payload: handle_command(
                            verb, payload, self.controls,
                            max_bytes=self.config.mqtt.max_payload_kb * 1024))
        link.start()
        return link

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        """Stop threads, flush SQLite, publish offline. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self.control is not None:
            self.control.close()
        for t in self._threads:
            t.join(timeout=5)
        if self.store is not None and self.monitor is not None:
            self.event("stop", f"edgewatch stopped after {self.monitor.frames} frames")
        if self.mqtt is not None:
            self.mqtt.close()
        if self.store is not None:
            self.store.close()

    # ---- outputs -----------------------------------------------------------------------
    def event(self, kind: str, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        """Log and store one event (through the same sink the monitor uses)."""
        if self.sink is not None:
            self.sink.event(kind, message, data)
        else:
            log.info("%s: %s", kind, message)

    def _on_alert(self, transition: AlertTransition) -> None:
        assert self.store is not None
        record, notify = transition.to_dict(), transition.notify
        if notify:
            log.warning("alert %s [%s/%s]: %s", record["transition"], record["kind"],
                        record["severity"], record["message"])
        messages: List[Dict[str, Any]] = []
        if notify and self.config.mqtt.enabled:
            messages = alert_outbox_messages(
                topics(self.config.mqtt.topic_prefix, self.config.mqtt.device_id), record)
        self.store.put_alert(record, messages)

    def _persist_control(self, kind: str, target: str, until: Optional[float],
                         value: Optional[float]) -> None:
        assert self.store is not None
        self.store.set_control(kind, target, until, value)

    # ---- heartbeats, health, stalls ------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        cfg = self.config
        interval = cfg.mqtt.heartbeat_interval_s if cfg.mqtt.enabled else cfg.service.heartbeat_interval_s
        next_hb = time.monotonic() + min(interval, 5.0)
        next_health = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                now_m = time.monotonic()
                if self.live and self.monitor is not None and self.monitor.started is not None:
                    self.monitor.check_stall(self.clock())
                if cfg.health.enabled and now_m >= next_health:
                    next_health = now_m + cfg.health.interval_s
                    self._check_health()
                if now_m >= next_hb:
                    next_hb = now_m + interval
                    self.heartbeat()
            except Exception:  # a heartbeat must never kill the agent; log with trace
                log.exception("heartbeat failed")

    def _check_health(self) -> None:
        health = self._health.read_health(self.config.store.path)
        self._last_health = health
        obs = health_checks(health, self._limits, now=self.clock(), for_s=self.config.health.for_s)
        if self.monitor is not None and obs:
            self.monitor.update_alerts(obs, self.clock())

    def heartbeat(self) -> Dict[str, Any]:
        """Build, store and publish one heartbeat."""
        assert self.store is not None and self.monitor is not None
        self._hb_seq += 1
        payload = self.status()
        payload["seq"] = self._hb_seq
        self.store.put("heartbeats", {"ts": payload["ts"], "payload": payload})
        if self.mqtt is not None:
            self.mqtt.publish_heartbeat(payload)
        return payload

    def status(self) -> Dict[str, Any]:
        """Everything a heartbeat carries."""
        assert self.store is not None and self.monitor is not None
        snap = self.monitor.snapshot()
        now = self.clock()
        h = self._last_health
        store_stats = self.store.stats()
        cam = dict(self.camera)
        if snap["last_frame_ts"] is not None:
            cam["last_frame_age_s"] = round(now - snap["last_frame_ts"], 3)
        return {
            "schema": 1, "device": self.config.device.id, "agent_version": __version__,
            "seq": self._hb_seq, "ts": now,
            "interval_s": (self.config.mqtt.heartbeat_interval_s if self.config.mqtt.enabled
                           else self.config.service.heartbeat_interval_s),
            "uptime_s": round(time.time() - self._started_wall, 1),
            "model": {k: self.model_info.get(k) for k in ("path", "sha256", "runtime", "delegate")}
            | {"latency_ms": snap["latency_ms"]},
            "camera": {"name": self.config.device.camera, **cam, "frames": snap["frames"]},
            "stats": snap["stats"], "confidence": snap["confidence"], "drift": snap["drift"],
            "reference": snap["reference"], "warmup": snap["warmup"],
            "alerts_open": snap["alerts_open"],
            "host": {k: h.get(k) for k in ("cpu_percent", "load", "max_temp_c", "temperatures",
                                           "throttled", "gpu_percent")}
            | {"memory_percent": (h.get("memory") or {}).get("percent"),
               "disk_free_mb": (h.get("disk") or {}).get("free_mb")},
            "agent": h.get("process") or {},
            "queues": {"store": store_stats.get("queue_depth"), "dropped": store_stats.get("dropped"),
                       "write_errors": store_stats.get("write_errors"),
                       "last_error": store_stats.get("last_error")},
            "outbox": {"depth": store_stats.get("outbox_depth"),
                       "oldest_age_s": store_stats.get("outbox_oldest_age_s"),
                       "dropped": store_stats.get("outbox_dropped")},
            "mqtt": None if self.mqtt is None else self.mqtt.status(),
        }


# ---- the loops ---------------------------------------------------------------------------
@dataclass
class LoopResult:
    """What a loop did, for ``--json`` and logs."""

    frames: int
    start_ts: float
    fps: float
    seconds: float
    db: str
    alerts: int


def replay(config: Config, source: Source, *, fps: Optional[float] = None,
           max_frames: Optional[int] = None, start_ts: Optional[float] = None,
           model: Optional[Model] = None) -> LoopResult:
    """Run a finite source through the model and monitor as fast as possible.

    Frame ``i`` gets the synthetic timestamp ``start + i / fps`` so that every window and
    time-based rule behaves exactly as it would live.
    """
    model = model or Model(config.model.path, runtime=config.model.runtime,
                           num_threads=config.model.num_threads, delegate=config.model.delegate,
                           input_range=config.model.input_range, color=config.model.color)
    fps = fps or source.fps or 30.0
    start = time.time() if start_ts is None else start_ts
    agent = Agent(config, model=model, expected_fps=fps, live=False).start()
    assert agent.monitor is not None
    monitor = agent.monitor
    t0 = time.perf_counter()
    i = 0
    try:
        agent.camera["state"] = "replay"
        while max_frames is None or i < max_frames:
            frame = source.read()
            if frame is None:
                break
            outputs, latency = model(frame)
            monitor.observe(frame, outputs, latency, ts=start + i / fps)
            i += 1
    finally:
        elapsed = time.perf_counter() - t0
        n_alerts = agent.alerts.seq if agent.alerts else 0
        agent.close()
        source.close()
    return LoopResult(frames=i, start_ts=start, fps=fps, seconds=round(elapsed, 3),
                      db=config.store.path, alerts=n_alerts)


class _Capture:
    """The capture thread: reads frames into a one-slot mailbox, counting what it drops."""

    def __init__(self, source: Source, pace_fps: Optional[float]) -> None:
        self.source = source
        self.pace = pace_fps
        self._cond = threading.Condition()
        self._frame: Optional[np.ndarray] = None
        self._ts = 0.0
        self.dropped = 0
        self.done = False
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="edgewatch-capture", daemon=True)

    def _run(self) -> None:
        next_t = time.monotonic()
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                if self.pace:
                    next_t += 1.0 / self.pace
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                    else:
                        next_t = time.monotonic()
                with self._cond:
                    if self._frame is not None:
                        self.dropped += 1
                    self._frame, self._ts = frame, time.time()
                    self._cond.notify()
        except SourceError as exc:
            self.error = str(exc)
        finally:
            with self._cond:
                self.done = True
                self._cond.notify()

    def get(self, timeout: float) -> Optional[tuple]:
        """The newest frame and its capture time, or None on timeout/end."""
        with self._cond:
            if self._frame is None and not self.done:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return None if frame is None else (frame, self._ts)

    def stop(self) -> None:
        """Ask the thread to stop (it ends after its current read)."""
        self._stop.set()


def run(config: Config, *, notifier: Optional[Notifier] = None,
        stop: Optional[threading.Event] = None, reload: Optional[threading.Event] = None,
        source: Optional[Source] = None) -> int:
    """The owned live loop: camera -> TFLite -> monitor until SIGINT/SIGTERM."""
    stop = stop or threading.Event()
    notifier = notifier or Notifier()
    model = Model(config.model.path, runtime=config.model.runtime,
                  num_threads=config.model.num_threads, delegate=config.model.delegate,
                  input_range=config.model.input_range, color=config.model.color)
    s = config.source
    if source is None:
        source = open_source(s.uri, loop=s.loop, size=((s.size[0], s.size[1]) if all(s.size) else None),
                             reconnect_initial_s=s.reconnect_initial_s,
                             reconnect_max_s=s.reconnect_max_s)
    pace = s.fps or (None if source.live else (source.fps or 30.0))
    expected = s.fps or source.fps or 30.0
    agent = Agent(config, model=model, expected_fps=expected, notifier=notifier).start()
    assert agent.monitor is not None
    monitor = agent.monitor
    capture = _Capture(source, pace)
    capture.thread.start()
    notifier.ready(f"monitoring {source.name} with {Path(config.model.path).name}")
    log.info("running: source %s at %.1f fps, model %s (%s), db %s", source.name, expected,
             config.model.path, model.runtime, config.store.path)
    status_every = config.service.status_interval_s
    next_status = time.monotonic() + status_every if status_every else float("inf")
    last_frames, last_t = 0, time.monotonic()
    try:
        while not stop.is_set() and not (reload is not None and reload.is_set()):
            got = capture.get(timeout=0.5)
            if got is None:
                if capture.done:
                    if capture.error:
                        agent.event("source_error", capture.error)
                        raise SourceError(capture.error)
                    agent.event("source_end", f"source ended: {source.name}")
                    break
                continue
            frame, ts = got
            outputs, latency = model(frame)
            monitor.observe(frame, outputs, latency, ts=ts)
            agent.camera.update(state=getattr(source, "state", "ok"),
                                reconnects=getattr(source, "reconnects", 0), dropped=capture.dropped)
            notifier.watchdog()
            if time.monotonic() >= next_status:
                now_m = time.monotonic()
                fps = (monitor.frames - last_frames) / max(now_m - last_t, 1e-9)
                last_frames, last_t, next_status = monitor.frames, now_m, now_m + status_every
                agent.camera["fps_processed"] = round(fps, 2)
                snap = monitor.snapshot()
                line = (f"frames={monitor.frames} fps={fps:.1f} "
                        f"brightness={snap['stats'].get('brightness')} "
                        f"detections={snap['confidence'].get('det_count')} "
                        f"top_score={snap['confidence'].get('top_score')} "
                        f"reference={(snap['reference'] or {}).get('origin', 'warming up')} "
                        f"alerts_open={len(snap['alerts_open'])}")
                log.info("status: %s", line)
                notifier.status(line)
    finally:
        notifier.stopping()
        capture.stop()
        agent.close()
        source.close()
    return 0


def run_forever(config_path: Optional[str], *, config: Optional[Config] = None) -> int:
    """``edgewatch run``: the loop, with SIGTERM/SIGINT to stop and SIGHUP to reload."""
    stop, reload = threading.Event(), threading.Event()
    notifier = Notifier()

    def on_stop(signum: int, frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(signum: int, frame: Any) -> None:
        log.info("SIGHUP: reloading %s", config_path)
        reload.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)
    current = config if config is not None else load_config(config_path)
    while True:
        reload.clear()
        code = run(current, notifier=notifier, stop=stop, reload=reload)
        if stop.is_set() or not reload.is_set():
            return code
        notifier.reloading()
        try:
            current = load_config(config_path) if config_path else current
            log.info("reloaded %s", config_path)
        except AgentError as exc:
            log.error("reload failed, keeping the old config: %s", exc)


# ---- the in-process hook ---------------------------------------------------------------
def build_monitor(config: Config, *, model_path: Optional[str] = None) -> Monitor:
    """A started monitor for ``Monitor.from_config``: closing it closes the whole agent."""
    path = model_path or config.model.path
    info: Dict[str, Any] = {"path": path, "sha256": ""}
    if path and os.path.isfile(path):
        from .inference import file_sha256
        info["sha256"] = file_sha256(Path(path))
    agent = Agent(config, model_info=info).start()
    assert agent.monitor is not None
    agent.monitor.on_close(agent.close)
    return agent.monitor
