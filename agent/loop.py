"""The one read -> infer -> observe loop, and the three jobs that drive it.

:func:`drive` is the loop: a frame and its timestamp in, the model's outputs and latency
out, both handed to ``observe``. ``run`` feeds it a live source through a supervised
capture thread (wall-clock timestamps) until stopped; ``replay`` feeds it a finite
source as fast as it can with synthetic timestamps, frame ``i`` at ``start + i / fps``,
so every window and time-based rule behaves exactly as it would live; ``collect_rows``
(``edgewatch baseline``) feeds it training data and keeps each frame's feature row.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from .alerts import AlertManager
from .config import Config, load_config, require
from .errors import AgentError, BaselineError, SourceError
from .hook import TensorImage
from .inference import Model
from .monitor import Monitor, NullSink
from .notify import Notifier
from .observe import LAYOUT
from .service import Agent
from .sources import Source, open_source
from .stats import ImageStats
from .warmup import too_short

log = logging.getLogger(__name__)

__all__ = ["Collected", "LoopResult", "collect_rows", "drive", "replay", "run", "run_forever"]

Frame = npt.NDArray[np.uint8]
Timed = Tuple[Frame, float]
Observe = Callable[[Frame, Sequence[npt.NDArray[Any]], float, float], None]
OnFrame = Callable[[int], None]


def drive(frames: Iterable[Timed], model: Model, observe: Observe,
          on_frame: Optional[OnFrame] = None) -> int:
    """Run the model on every frame and hand frame, outputs and latency to ``observe``."""
    n = 0
    for frame, ts in frames:
        outputs, latency = model(frame)
        observe(frame, outputs, latency, ts)
        n += 1
        if on_frame is not None:
            on_frame(n)
    return n


def synthetic_times(source: Source, start: float, fps: float, max_frames: Optional[int] = None,
                    keep_going: Callable[[], bool] = lambda: True) -> Iterator[Timed]:
    """A finite source's frames, frame ``i`` stamped ``start + i / fps``."""
    i = 0
    while (max_frames is None or i < max_frames) and keep_going():
        frame = source.read()
        if frame is None:
            return
        yield frame, start + i / fps
        i += 1


# ---- replay ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopResult:
    """What a replay did and did not check, for its summary, ``--json`` and logs."""

    frames: int
    start_ts: float
    fps: float
    seconds: float
    db: str
    alerts: int
    reference: Optional[str] = None
    unchecked: Dict[str, str] = field(default_factory=dict)
    #: Drift detection's state at the end: {"state", "reason", "since", "reference", ...}.
    monitoring: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form of ``edgewatch replay --json``."""
        return {"frames": self.frames, "start_ts": self.start_ts, "fps": self.fps,
                "seconds": self.seconds, "db": self.db, "alert_transitions": self.alerts,
                "processing_fps": round(self.frames / max(self.seconds, 1e-9), 1),
                "reference": self.reference, "unchecked": dict(self.unchecked),
                "monitoring": self.monitoring}


def replay(config: Config, source: Source, *, fps: Optional[float] = None,
           max_frames: Optional[int] = None, start_ts: Optional[float] = None,
           model: Optional[Model] = None, on_frame: Optional[OnFrame] = None) -> LoopResult:
    """Run a finite source through the model and monitor as fast as possible."""
    model = model or Model.from_config(config.model)
    known = fps or source.fps
    fps = known or 30.0
    start = time.time() if start_ts is None else start_ts
    agent = _start_or_close(source, config, model, expected_fps=fps, live=False,
                            replay_start=start, known_fps=known)
    agent.camera["state"] = "replay"
    agent.heartbeats.source_losses = lambda: source_losses(source)
    t0 = time.perf_counter()
    frames = 0
    try:
        frames = drive(synthetic_times(source, start, fps, max_frames,
                                       lambda: agent.fatal is None),
                       model, agent.monitor.observe, on_frame)
    finally:
        elapsed = time.perf_counter() - t0
        unchecked = _unchecked(agent.monitor, config, fps, frames)
        monitoring = agent.monitor.monitoring()
        reference = agent.monitor.reference
        n_alerts = agent.alerts.seq
        agent.close()
        source.close()
    if agent.fatal is not None:
        raise AgentError(f"replay stopped after {frames} frames: {agent.fatal}")
    return LoopResult(frames=frames, start_ts=start, fps=fps, seconds=round(elapsed, 3),
                      db=config.store.path, alerts=n_alerts,
                      reference=None if reference is None else reference.origin,
                      unchecked=unchecked, monitoring=monitoring)


def source_losses(source: Source) -> int:
    """Frames a source lost on its own: unreadable files skipped, connections lost."""
    return int(getattr(source, "skipped", 0)) + int(getattr(source, "reconnects", 0))


def _start_or_close(source: Source, config: Config, model: Model, *, expected_fps: float,
                    live: bool, replay_start: Optional[float] = None,
                    known_fps: Optional[float] = None) -> Agent:
    """A started agent for ``model``; the source is closed if the agent cannot start.

    With the source's frame rate known (``known_fps``), a warm-up that cannot hold two drift
    windows is said at once, in one WARNING line (its monitoring alert follows later)."""
    try:
        agent = Agent.start(config, model_info=model.info(), output_spec=model.output_details,
                            expected_fps=expected_fps, live=live, replay_start=replay_start)
    except BaseException:
        source.close()
        raise
    why = None if not known_fps else too_short(config.drift, known_fps)
    if why and agent.monitor.reference_status.state == "warming_up":
        log.warning("drift: the warm-up cannot learn a reference: %s", why)
    return agent


def _unchecked(monitor: Monitor, config: Config, fps: float, frames: int) -> Dict[str, str]:
    """Which checks never ran in a replay, and why (empty when all of them did)."""
    out: Dict[str, str] = {}
    if not config.rules.enabled:
        out["rules"] = "rules are off ([rules] enabled = false)"
    elif monitor.last_evaluation is None:
        out["rules"] = (f"the replay was shorter than one evaluation interval "
                        f"({frames / fps:.1f} s of {config.rules.eval_interval_s:g} s)")
    if monitor.snapshot()["drift"]:
        return out
    status = monitor.reference_status
    if status.state == "disabled":
        out["drift"] = "drift is off ([drift] enabled = false)"
    elif status.state == "warming_up":
        out["drift"] = (f"the replay ended during warm-up ({status.frames / fps:.0f} s of "
                        f"{config.drift.warmup_s:.0f} s)")
    elif status.state == "failed":
        out["drift"] = f"drift detection is off: {status.message}"
    elif status.state == "calibrating":
        out["drift"] = (f"the replay ended while calibrating the training reference on this "
                        f"camera ({status.frames / fps:.0f} s of "
                        f"{config.drift.calibration_s:.0f} s)")
    else:
        window = monitor.reference.window_frames if monitor.reference is not None else 0
        out["drift"] = (f"the replay was too short for one drift test after the reference "
                        f"was ready ({frames} frames; a test needs a window of {window})")
    return out


# ---- baseline ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Collected:
    """A baseline's rows measured in both views: full frames and the model's input tensor."""

    frame: npt.NDArray[np.float32]
    input: npt.NDArray[np.float32]
    input_size: Tuple[int, int]


def collect_rows(config: Config, model: Model, uris: Sequence[str], fps: float,
                 max_frames: Optional[int] = None,
                 on_frame: Optional[OnFrame] = None) -> Collected:
    """Each frame's feature rows over ``uris``, in time order (``edgewatch baseline``).

    Both views in one pass: the frame as ``run`` sees it, and the prepared input tensor
    turned back into pixels as ``wrap`` sees it (only the image statistics differ).
    """
    rows: List[npt.NDArray[np.float32]] = []
    inputs: List[npt.NDArray[np.float32]] = []
    cfg = config.with_values(drift__enabled=False, rules__enabled=False)
    detail = model.input_details[0]
    image = TensorImage(detail["shape"], detail["dtype"], input_range=config.model.input_range,
                        quantization=tuple(detail.get("quantization", (0.0, 0))),
                        color=config.model.color)
    stats = ImageStats(sample_size=(config.stats.sample_width, config.stats.sample_height))
    for uri in uris:
        alerts = AlertManager(device="baseline", camera="baseline", model={}, emit=lambda r: None)
        mon = Monitor(cfg, alerts, model_info=model.info(), sink=NullSink(),
                      output_spec=model.output_details)

        def keep(frame: Frame, outputs: Sequence[npt.NDArray[Any]], latency: float,
                 ts: float, mon: Monitor = mon) -> None:
            mon.observe(frame, outputs, latency, ts)
            row = mon.ring.last(1)[1][0].copy()
            rows.append(row)
            seen = image(model.interpreter.get_tensor(model.input_index))
            other = row.copy()
            if seen is None:
                other[LAYOUT.image] = np.nan
            else:
                stats.compute(seen, other[LAYOUT.image])
            inputs.append(other)
            if on_frame is not None:
                on_frame(len(rows))

        source = open_source(uri)
        try:
            drive(synthetic_times(source, 0.0, fps, max_frames), model, keep)
        finally:
            source.close()
    if not rows:
        raise BaselineError(f"no frames read from {', '.join(uris)} (check the sources)")
    return Collected(np.vstack(rows), np.vstack(inputs), image.size)


# ---- the live loop -----------------------------------------------------------------------
class Capture:
    """The capture worker: reads frames into a one-slot mailbox, counting what it drops.

    Its :meth:`step` runs under the agent's supervisor (critical: an agent without frames
    is no use), so a read that raises is counted and retried with backoff. A source that
    ends, or fails for good (:class:`SourceError`), ends the capture.
    """

    def __init__(self, source: Source, pace_fps: Optional[float], halt: threading.Event) -> None:
        self.source = source
        self.pace = pace_fps
        self._halt = halt
        self._cond = threading.Condition()
        self._frame: Optional[Frame] = None
        self._ts = 0.0
        self._next_t = time.monotonic()
        self.dropped = 0  # replaced in the mailbox before the loop took them (it is slower)
        self.failed = 0  # reads that raised (the supervisor retries them)
        self.done = False
        self.error: Optional[str] = None

    def step(self) -> None:
        """Read one frame (paced for a file or emulated feed) into the mailbox."""
        if self.done:
            self._halt.wait(0.5)
            return
        try:
            frame = self.source.read()
        except SourceError as exc:
            self._end(str(exc))
            return
        except Exception:
            self.failed += 1  # counted here as a lost frame; the supervisor counts the failure
            raise
        if frame is None:
            self._end(None)
            return
        if self.pace:
            self._next_t += 1.0 / self.pace
            delay = self._next_t - time.monotonic()
            if delay > 0:
                self._halt.wait(delay)
            else:
                self._next_t = time.monotonic()
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame, self._ts = frame, time.time()
            self._cond.notify()

    def losses(self) -> int:
        """Frames lost reading the source: failed reads, plus what the source counts."""
        return self.failed + source_losses(self.source)

    def _end(self, error: Optional[str]) -> None:
        with self._cond:
            self.error = error
            self.done = True
            self._cond.notify()

    def get(self, timeout: float) -> Optional[Timed]:
        """The newest frame and its capture time, or None on timeout or at the end."""
        with self._cond:
            if self._frame is None and not self.done:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return None if frame is None else (frame, self._ts)

    def frames(self, keep_going: Callable[[], bool]) -> Iterator[Timed]:
        """Frames as they arrive, until ``keep_going()`` is false or the source ends."""
        while keep_going():
            got = self.get(timeout=0.5)
            if got is not None:
                yield got
            elif self.done:
                if self.error is not None:
                    raise SourceError(self.error)
                return


class _LiveStatus:
    """After each live frame: camera state, the watchdog ping, a status line now and then."""

    def __init__(self, agent: Agent, source: Source, capture: Capture, notifier: Notifier) -> None:
        self._agent = agent
        self._source = source
        self._capture = capture
        self._notifier = notifier
        self._every = agent.config.service.status_interval_s
        self._next = time.monotonic() + self._every if self._every else float("inf")
        self._last_frames, self._last_t = 0, time.monotonic()
        self._next_check = 0.0

    def __call__(self, n: int) -> None:
        self._agent.camera.update(state=getattr(self._source, "state", "ok"),
                                  reconnects=getattr(self._source, "reconnects", 0),
                                  skipped=self._capture.dropped)
        self._notifier.watchdog()
        now = time.monotonic()
        if now >= self._next_check:  # the heartbeat checks the others; this checks it too
            self._next_check = now + 1.0
            self._agent.supervisor.check()
        if now >= self._next:
            self._status_line()

    def _status_line(self) -> None:
        monitor = self._agent.monitor
        now = time.monotonic()
        fps = (monitor.frames - self._last_frames) / max(now - self._last_t, 1e-9)
        self._last_frames, self._last_t, self._next = monitor.frames, now, now + self._every
        self._agent.camera["fps_processed"] = round(fps, 2)
        snap = monitor.snapshot()
        mon = snap["monitoring"]
        drift = mon["state"] if mon["state"] == "active" else f"{mon['state']} ({mon['reason']})"
        line = (f"frames={monitor.frames} fps={fps:.1f} "
                f"brightness={snap['stats'].get('brightness')} "
                f"detections={snap['confidence'].get('det_count')} "
                f"top_score={snap['confidence'].get('top_score')} "
                f"reference={(snap['reference'] or {}).get('origin', 'none')} "
                f"drift={drift} alerts_open={len(snap['alerts_open'])}")
        log.info("status: %s", line)
        self._notifier.status(line)


def run(config: Config, *, model: Optional[Model] = None, notifier: Optional[Notifier] = None,
        stop: Optional[threading.Event] = None, reload: Optional[threading.Event] = None,
        source: Optional[Source] = None) -> int:
    """The owned live loop: camera -> TFLite -> monitor until stopped, reloaded or failed.

    Returns 0 when stopped (or the source ended), 1 when a critical thread kept failing
    (the log says which and why), so that systemd restarts the agent.
    """
    stop = stop or threading.Event()
    notifier = notifier or Notifier()
    model = model or Model.from_config(config.model)
    source = source or _open_configured_source(config)
    s = config.source
    pace = s.fps or (None if source.live else (source.fps or 30.0))
    expected = s.fps or source.fps or 30.0
    agent = _start_or_close(source, config, model, expected_fps=expected, live=True,
                            known_fps=s.fps or source.fps)
    capture = Capture(source, pace, agent.supervisor.stop_event)
    agent.heartbeats.source_losses = capture.losses
    agent.supervisor.spawn("edgewatch-capture", capture.step, backoff_s=s.reconnect_initial_s,
                           critical=True)
    notifier.ready(f"monitoring {source.name} with {Path(config.model.path).name}")
    log.info("running: source %s at %.1f fps, model %s (%s), db %s", source.name, expected,
             config.model.path, model.runtime, config.store.path)

    def keep_going() -> bool:
        return not (stop.is_set() or (reload is not None and reload.is_set())
                    or agent.fatal is not None)

    try:
        drive(capture.frames(keep_going), model, agent.monitor.observe,
              _LiveStatus(agent, source, capture, notifier))
        if capture.done:
            agent.event("source_end", f"source ended: {source.name}")
    except SourceError as exc:
        agent.event("source_error", str(exc))
        raise
    finally:
        notifier.stopping()
        agent.close()
        source.close()
    if agent.fatal is not None:
        log.error("exiting with an error so that the service manager restarts edgewatch: %s",
                  agent.fatal)
        return 1
    return 0


def _open_configured_source(config: Config) -> Source:
    s = config.source
    return open_source(s.uri, loop=s.loop, size=(s.size[0], s.size[1]) if all(s.size) else None,
                       reconnect_initial_s=s.reconnect_initial_s,
                       reconnect_max_s=s.reconnect_max_s)


def run_forever(config_path: Optional[str], *, config: Optional[Config] = None,
                overrides: Optional[Mapping[str, Any]] = None) -> int:
    """``edgewatch run``: the loop, with SIGTERM/SIGINT to stop and SIGHUP to reload.

    ``overrides`` (``section__key=value``, from ``--db``, ``--source``, ``--model``) are
    applied to every config, the reloaded ones included. A reload that fails (a bad file, a
    model that will not load) is logged and the old config and model are kept.
    """
    stop, reload = threading.Event(), threading.Event()
    notifier = Notifier()
    _handle_signals(stop, reload, config_path)
    keep = dict(overrides or {})
    current = config if config is not None else _load(config_path, keep)
    model = Model.from_config(current.model)
    while True:
        reload.clear()
        code = run(current, model=model, notifier=notifier, stop=stop, reload=reload)
        if stop.is_set() or not reload.is_set():
            return code
        notifier.reloading()
        try:
            new = _load(config_path, keep) if config_path else current
            model = Model.from_config(new.model)  # a new file at the same path is loaded too
            current = new
            log.info("reloaded %s", config_path or "the model")
        except AgentError as exc:
            log.error("reload failed, keeping the old config: %s", exc)


def _load(path: Optional[str], overrides: Mapping[str, Any]) -> Config:
    cfg = load_config(path)
    return require(cfg.with_values(**overrides) if overrides else cfg, "run")


def _handle_signals(stop: threading.Event, reload: threading.Event,
                    config_path: Optional[str]) -> None:
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
