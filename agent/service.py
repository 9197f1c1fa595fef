"""The service's wiring: source -> model -> monitor -> alerts -> store/MQTT, as one running Agent.

:meth:`Agent.start` builds every part in data-flow order and returns a running agent whose
parts are never missing; it reads as the table of contents. The loops that feed it frames
(``run``, ``replay``, ``baseline``) live in :mod:`agent.loop`, the heartbeat in
:mod:`agent.heartbeat`, and the in-process hook in :mod:`agent.inprocess`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ._version import __version__
from .alerts import AlertManager, AlertTransition
from .capture import Capture
from .commands import handle_command
from .config import Config
from .control import ControlServer, socket_path
from .drift.reference import Reference
from .errors import BaselineError, CommandError, ConfigError
from .heartbeat import Heartbeat, Heartbeats, heartbeat_interval
from .homeassistant import HomeAssistant
from .lifecycle import calibration_key
from .monitor import FEATURES_VERSION, Monitor
from .mqtt import MqttLink, alert_outbox_messages, topics
from .observe import LAYOUT
from .records import FILE_REFERENCE
from .remotesamples import SampleServer
from .samplestore import SampleWriter, samples_dir
from .store import Store
from .supervise import Supervisor

if TYPE_CHECKING:
    from .metrics import MetricsServer

log = logging.getLogger(__name__)

__all__ = ["Agent", "Controls"]

HEARTBEAT_TICK_S = 1.0


class _StoreSink:
    """Monitor sink that queues windows, events and references for the SQLite writer."""

    def __init__(self, store: Store, model_sha256: str) -> None:
        self.store = store
        self.sha = model_sha256
        # A replay's events are stamped on its own clock (its frames' times), so a report
        # places its start and stop with its data; None: the store's wall clock.
        self.stamp: Callable[[], Optional[float]] = lambda: None

    def window(self, row: Dict[str, Any]) -> None:
        """Queue a summary window (never blocks; overflow is counted by the store)."""
        self.store.put("windows", row)

    def event(self, kind: str, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        """Queue an event and log it, one line."""
        log.info("%s: %s", kind, message)
        self.store.put("events", {"ts": self.stamp(), "kind": kind, "message": message,
                                  "data": data or {}})

    def reference_learned(self, reference: Reference) -> None:
        """Persist a warm-up reference (or a training one's calibration) for a restart."""
        training = reference.kind == "training"
        self.store.save_reference(
            ts=reference.created, blob=reference.to_bytes(), features_version=FEATURES_VERSION,
            model_sha256=calibration_key(reference) if training else self.sha,
            origin="calibration" if training else reference.origin)

    def calibration_started(self, key: str, ts: float) -> None:
        """Keep a calibration's start, so a restart does not restart its alert clock."""
        self.store.save_reference(ts=ts, model_sha256=key, origin="calibrating", blob=b"",
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


class _AlertOutput:
    """Where alert transitions go: one log line, SQLite and the MQTT outbox in one transaction."""

    def __init__(self, config: Config, store: Store, capture: Optional[Capture]) -> None:
        self._store = store
        self._capture = capture
        mqtt = config.mqtt
        self._topics = topics(mqtt.topic_prefix, mqtt.device_id) if mqtt.enabled else None

    def emit(self, transition: AlertTransition) -> None:
        """Store one transition (and queue it for MQTT when it notifies)."""
        record, notify = transition.to_dict(), transition.notify
        if notify:
            log.warning("alert %s [%s/%s]: %s", record["transition"], record["kind"],
                        record["severity"], record["message"])
        messages: List[Dict[str, Any]] = []
        if notify and self._topics is not None:
            messages = alert_outbox_messages(self._topics, record)
        self._store.put_alert(record, messages)
        if self._capture is not None:
            self._capture.alert(transition)

    def update(self, transition: AlertTransition) -> None:
        """A firing alert changed by an operator: store it and republish its retained state."""
        record = transition.to_dict()
        messages: List[Dict[str, Any]] = []
        if self._topics is not None:
            messages = alert_outbox_messages(self._topics, record, state_only=True)
        self._store.put_alert(record, messages)

    def persist_control(self, kind: str, target: str, until: Optional[float],
                        value: Optional[float]) -> None:
        """Keep an operator control (snooze, ack, disable, threshold) across restarts."""
        self._store.set_control(kind, target, until, value)


class Controls:
    """The operator API behind ``edgewatch alerts`` and the MQTT commands."""

    def __init__(self, monitor: Monitor, status: Callable[[], Heartbeat],
                 clock: Callable[[], float]) -> None:
        self._monitor = monitor
        self._status = status
        self._clock = clock
        self.sample_server: Optional[SampleServer] = None  # [capture] remote over MQTT

    def ack(self, alert: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Acknowledge a firing alert."""
        now = self._clock()
        return self._monitor.control(lambda a: a.ack(alert, by, now))

    def snooze(self, target: str, until: float, by: Optional[str] = None) -> Dict[str, Any]:
        """Snooze an alert, kind or feature until a unix time."""
        now = self._clock()
        return self._monitor.control(lambda a: a.snooze(target, until, by, now))

    def disable(self, target: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Disable alerts of a kind or feature."""
        now = self._clock()
        return self._monitor.control(lambda a: a.disable(target, now, by))

    def enable(self, target: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Enable alerts of a kind or feature again."""
        return self._monitor.control(lambda a: a.enable(target, by))

    def set_threshold(self, feature: str, value: float, metric: Optional[str] = None,
                      by: Optional[str] = None) -> Dict[str, Any]:
        """Override a feature's threshold."""
        return self._monitor.control(
            lambda a: a.set_threshold(feature, value, metric or "", by))

    def rebaseline(self) -> Dict[str, Any]:
        """Forget the reference and learn a new one from the next warm-up period."""
        self._monitor.restart_warmup()
        return {"rebaseline": "warm-up started", "warmup_s": self._monitor.config.drift.warmup_s}

    def status(self) -> Dict[str, Any]:
        """A short status of the running agent (the heartbeat as it would be sent now)."""
        return self._status().to_dict()

    def samples(self, alert: str, want: Optional[Any], chunk_kb: int) -> Dict[str, Any]:
        """An alert's captured frames for the central (``fleet samples``), when allowed."""
        if self.sample_server is None:
            raise CommandError("remote samples are off on this device (set [capture] remote "
                               "= true, with MQTT over TLS, to allow 'fleet samples')")
        return self.sample_server.answer(alert, want, chunk_kb)


class Agent:
    """A running agent: store, alert manager, monitor, MQTT link and supervised threads.

    Built only by :meth:`start`, so every part exists for the agent's whole life;
    :meth:`close` stops it. ``mqtt`` is None when ``[mqtt] enabled`` is false.
    """

    def __init__(self, config: Config, *, model_info: Mapping[str, Any], store: Store,
                 sink: _StoreSink, alerts: AlertManager, monitor: Monitor,
                 mqtt: Optional[MqttLink], supervisor: Supervisor, heartbeats: Heartbeats,
                 controls: Controls, control: ControlServer, camera: Dict[str, Any],
                 metrics: Optional[MetricsServer] = None,
                 homeassistant: Optional[HomeAssistant] = None) -> None:
        self.config = config
        self.model_info = model_info
        self.store = store
        self.sink = sink
        self.alerts = alerts
        self.monitor = monitor
        self.mqtt = mqtt
        self.supervisor = supervisor
        self.heartbeats = heartbeats
        self.controls = controls
        self.control = control
        self.camera = camera
        self.metrics = metrics
        self.homeassistant = homeassistant
        self._closed = False

    @classmethod
    def start(cls, config: Config, *, model_info: Mapping[str, Any],
              output_spec: Optional[Sequence[Any]] = None, expected_fps: Optional[float] = None,
              clock: Callable[[], float] = time.time, live: bool = True,
              on_fatal: Optional[Callable[[str], None]] = None,
              replay_start: Optional[float] = None) -> Agent:
        """Open storage, restore state, build the monitor, then start MQTT, control, heartbeats.

        A part that fails to start (a bad baseline file, a control socket that cannot be
        bound) closes what was already started before the error propagates. A replay gives
        its first frame's time (``replay_start``): its events are stamped on its clock.
        """
        info = dict(model_info)
        supervisor = Supervisor(on_fatal=on_fatal)
        store = _open_store(config, supervisor)
        try:
            agent = cls._assemble(config, info, store, supervisor, output_spec=output_spec,
                                  expected_fps=expected_fps, clock=clock, live=live)
        except BaseException:
            store.close()
            supervisor.stop()
            raise
        try:
            agent._start_workers()
        except BaseException:
            agent.close()
            raise
        if replay_start is not None:
            monitor = agent.monitor
            agent.sink.stamp = lambda: replay_start if monitor.last_ts is None else monitor.last_ts
        reference = agent.monitor.reference
        agent.event("start", f"edgewatch {__version__} started (model {info.get('path')}, "
                    f"reference: {'none, warm-up' if reference is None else reference.origin})")
        return agent

    @classmethod
    def _assemble(cls, config: Config, info: Dict[str, Any], store: Store,
                  supervisor: Supervisor, *, output_spec: Optional[Sequence[Any]],
                  expected_fps: Optional[float], clock: Callable[[], float],
                  live: bool) -> Agent:
        """Every part, in data-flow order, none of them running yet."""
        reference, calibration_since = _load_reference(config, store, info.get("sha256") or "")
        capture = _build_capture(config, store)
        alerts = _build_alerts(config, store, info, clock, capture)
        sink = _StoreSink(store, info.get("sha256") or "")
        monitor = Monitor(config, alerts, model_info=info, sink=sink, reference=reference,
                          calibration_since=calibration_since, output_spec=output_spec,
                          expected_fps=expected_fps, clock=clock, tap=capture)
        if capture is not None:
            capture.decoder_of = lambda: monitor.decoder
        mqtt = MqttLink(config.mqtt, store) if config.mqtt.enabled else None
        camera: Dict[str, Any] = {"state": "starting", "reconnects": 0, "skipped": 0}
        heartbeats = Heartbeats(config, store=store, monitor=monitor, mqtt=mqtt,
                                supervisor=supervisor, model_info=info, camera=camera,
                                clock=clock, live=live)
        controls = Controls(monitor, heartbeats.current, clock)
        if mqtt is not None and config.capture.remote:
            link, t = mqtt, topics(config.mqtt.topic_prefix, config.mqtt.device_id)
            controls.sample_server = SampleServer(
                config.store.path, samples_dir(config),
                lambda sid, k, data: link.publish_bytes(t.sample_chunk(sid, k), data))
        ha = None if mqtt is None else _home_assistant(config, info, monitor, heartbeats, mqtt)
        control = ControlServer(socket_path(config), controls, record=store.record_command,
                                supervisor=supervisor)
        metrics = _build_metrics(config, dict(
            config=config, monitor=monitor, store=store, mqtt=mqtt, supervisor=supervisor,
            heartbeats=heartbeats, model_info=info, camera=camera))
        return cls(config, model_info=info, store=store, sink=sink, alerts=alerts,
                   monitor=monitor, mqtt=mqtt, supervisor=supervisor, heartbeats=heartbeats,
                   controls=controls, control=control, camera=camera, metrics=metrics,
                   homeassistant=ha)

    def _start_workers(self) -> None:
        """Metrics, the control socket, the MQTT link and the heartbeat, under the supervisor."""
        if self.metrics is not None:  # first: a port in use stops the start before MQTT
            self.metrics.start(self.supervisor)
        self.control.start()
        self.store.advertise(control_socket=self.control.path)
        if self.mqtt is not None:
            limit = self.config.mqtt.max_payload_kb * 1024
            controls = self.controls
            self.mqtt.start(self.supervisor, command_handler=lambda verb, payload: handle_command(
                verb, payload, controls, max_bytes=limit))
        self.supervisor.spawn("edgewatch-heartbeat", self.heartbeats.step,
                              interval_s=HEARTBEAT_TICK_S, critical=True)
        if self.homeassistant is not None and self.homeassistant.enabled:
            self.supervisor.spawn("edgewatch-homeassistant", self.homeassistant.step,
                                  interval_s=HEARTBEAT_TICK_S)

    @property
    def fatal(self) -> Optional[str]:
        """Why the agent cannot go on (a critical thread kept failing), or None."""
        return self.supervisor.fatal

    def event(self, kind: str, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        """Log and store one event (through the same sink the monitor uses)."""
        self.sink.event(kind, message, data)

    def heartbeat(self) -> Heartbeat:
        """Build, store and publish one heartbeat now."""
        return self.heartbeats.beat()

    def close(self) -> None:
        """Publish offline, flush SQLite, then stop every thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.monitor.flush()  # the last, partial summary window
        self.event("stop", f"edgewatch stopped after {self.monitor.frames} frames")
        if self.mqtt is not None:
            self.mqtt.close()
        self.store.close()  # its writer is a worker too: it drains before the supervisor stops
        self.supervisor.stop()
        self.control.close()  # after its worker stopped: no accept() on a closed socket
        if self.metrics is not None:
            self.metrics.close()


def _build_metrics(config: Config, parts: Dict[str, Any]) -> Optional[MetricsServer]:
    """The ``[metrics]`` endpoint and/or textfile, not started; None when neither is on."""
    m = config.metrics
    if not (m.enabled or m.textfile):
        return None
    try:  # prometheus-client is an extra: only an agent with metrics on needs it
        from .metrics import MetricsServer, Parts
    except ImportError as exc:
        if exc.name != "prometheus_client":
            raise
        raise ConfigError("[metrics] needs prometheus-client: pip install 'edgewatch[metrics]' "
                          "(or set [metrics] enabled = false and textfile = \"\")") from None
    return MetricsServer(config, Parts(**parts), textfile_every_s=heartbeat_interval(config))


def _home_assistant(config: Config, info: Mapping[str, Any], monitor: Monitor,
                    heartbeats: Heartbeats, link: MqttLink) -> HomeAssistant:
    """Discovery configs on connect (their removal when ``[mqtt] homeassistant`` is off) and
    the retained summary Home Assistant's entities read."""
    ha = HomeAssistant(
        config, info, summary=lambda: heartbeats.current().to_dict()["summary"],
        open_kinds=lambda: monitor.control(lambda a: frozenset(r.kind for r in a.open_alerts())),
        interval_s=heartbeat_interval(config))
    ha.attach(link)
    return ha


def _open_store(config: Config, supervisor: Supervisor) -> Store:
    s = config.store
    Path(s.path).parent.mkdir(parents=True, exist_ok=True)
    return Store(s.path, queue_size=s.queue_size, flush_interval_s=s.flush_interval_s,
                 retention_days=s.retention_days, max_db_mb=s.max_db_mb,
                 outbox_max=s.outbox_max, outbox_max_age_days=s.outbox_max_age_days
                 ).start(supervisor)


def _load_reference(config: Config, store: Store,
                    sha: str) -> Tuple[Optional[Reference], Optional[float]]:
    """The reference to compare with (the configured file, else the stored one, else warm-up)
    and, for a training reference still calibrating, when its calibration began."""
    drift = config.drift
    if not drift.enabled:
        return None, None
    if drift.reference:
        # A reference for another model still serves the image statistics (the monitor
        # relearns the prediction part), so it is not refused here.
        from_file = Reference.load(drift.reference)
        log.info("reference: %s (%s, %s view, %d frames)", drift.reference, from_file.origin,
                 from_file.view_kind, from_file.frames)
        record_file_reference(store, from_file, sha)
        return _with_calibrations(from_file, store, config.store.path)
    stored = load_stored_reference(store, sha) or _previous_model_reference(store, sha)
    if stored is not None:
        log.info("reference: %s, kept in %s (%d frames)", stored.origin, config.store.path,
                 stored.frames)
    else:
        log.info("no reference: learning one from the first %.0f s (warm-up)", drift.warmup_s)
    return stored, None


def record_file_reference(store: Store, reference: Reference, sha: str) -> None:
    """Keep the baseline file's reference in the database (once; origin ``file``, under
    ``file:<model sha256>``, which no start loads as its own): a pulled snapshot's report and
    card show what drift was tested against without the device's config."""
    key, blob = f"{FILE_REFERENCE}{sha}", reference.to_bytes()
    if store.load_reference(key, FEATURES_VERSION) != blob:
        store.save_reference(ts=reference.created, model_sha256=key, origin="file", blob=blob,
                             features_version=FEATURES_VERSION)


def _with_calibrations(reference: Reference, store: Store,
                       where: str) -> Tuple[Reference, Optional[float]]:
    """A training reference with each view's calibration kept in the store (a baseline file
    carries both views; the path's view is only known once it observes, e.g. ``wrap``), and
    when a calibration still under way began."""
    views: List[Reference] = []
    since: Optional[float] = None
    for ref in (reference, reference.alt):
        if ref is not None and not ref.calibrated:
            started, blob = store.load_calibration(calibration_key(ref))
            if blob is not None:
                log.info("reference: calibration of the %s view kept in %s", ref.view_kind,
                         where)
                ref = Reference.from_bytes(blob, where=where)
            elif since is None:
                since = started
        if ref is not None:
            views.append(ref)
    return dataclasses.replace(views[0], alt=views[1] if len(views) > 1 else None), since


def _previous_model_reference(store: Store, sha: str) -> Optional[Reference]:
    """The reference kept for the model the last heartbeat named, when the model changed.

    Its image statistics still hold; the monitor relearns the prediction part.
    """
    beat = store.latest_heartbeat() if sha else None
    previous = str(((beat or {}).get("payload", {}).get("model") or {}).get("sha256") or "")
    if not previous or previous == sha:
        return None
    stored = load_stored_reference(store, previous)
    if stored is not None:
        log.info("reference: kept for the previous model %s…; image drift goes on while the "
                 "prediction part is relearned", previous[:12])
    return stored


def _build_alerts(config: Config, store: Store, model_info: Dict[str, Any],
                  clock: Callable[[], float], capture: Optional[Capture]) -> AlertManager:
    output = _AlertOutput(config, store, capture)
    alerts = AlertManager(device=config.device.id, camera=config.device.camera, model=model_info,
                          emit=output.emit, repeat_interval_s=config.alerts.repeat_interval_s,
                          persist_control=output.persist_control, update=output.update)
    restore_alerts(store, alerts, clock())
    if capture is not None:  # an episode open before a restart goes on being captured
        for alert in alerts.open_alerts():
            capture.alert(alert)
    return alerts


def _build_capture(config: Config, store: Store) -> Optional[Capture]:
    """Frame capture for retraining (None when ``[capture] enabled`` is false)."""
    c = config.capture
    if not c.enabled:
        return None
    writer = SampleWriter(samples_dir(config), max_mb=c.max_mb, normal_frames=c.normal_frames,
                          disk_free_mb=config.health.disk_free_mb)
    return Capture(c, store, writer, camera=config.device.camera, layout=LAYOUT,
                   score_threshold=config.model.score_threshold)
