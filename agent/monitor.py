"""The monitor: per-frame observation plus periodic evaluation, behind one small API.

:meth:`Monitor.observe` is the hot path: a :class:`~agent.observe.FrameObserver` turns the
frame and the model's outputs into one row of a preallocated ring buffer (no I/O, no lock,
nothing that grows). Every ``rules.eval_interval_s`` of frame time an
:class:`~agent.evaluate.Evaluator` runs warm-up learning, rules and drift over the buffer
under the monitor's lock and feeds the alert manager; every ``store.window_s`` the monitor
hands a summary row to its sink (the service queues it for SQLite). Timestamps come from the
caller (replays) or the clock (live), so windows behave the same in both.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence, Tuple, TypeVar

import numpy as np
import numpy.typing as npt

from .alerts import AlertManager
from .buffers import RingBuffer
from .confidence import CONFIDENCE_FEATURES, Decoder, make_decoder
from .config import Config
from .drift.reference import Reference
from .evaluate import DRIFT_FEATURES, NOT_DRIFT_TESTED, Evaluator, drift_features
from .health import HEALTH_FEATURES
from .observe import FEATURES, FEATURES_VERSION, LAYOUT, PERF_FEATURES, Frame, FrameObserver
from .records import Evaluation, Observation, ReferenceStatus
from .rules import RULE_FEATURES, check_stall
from .stats import IMAGE_FEATURES, ImageStats
from .warmup import WARMUP_MAX_FRAMES, Warmup

__all__ = ["FEATURES", "FEATURES_VERSION", "KNOWN_FEATURES", "NOT_DRIFT_TESTED",
           "PERF_FEATURES", "WARMUP_MAX_FRAMES", "FrameTap", "Monitor", "MonitorSink", "NullSink",
           "drift_features", "summarise"]

log = logging.getLogger(__name__)

#: Every feature an alert control may name: the row's columns and each detector's features.
KNOWN_FEATURES: frozenset[str] = frozenset(
    FEATURES + RULE_FEATURES + DRIFT_FEATURES + HEALTH_FEATURES + ("mqtt_refused",))
_QUANTILES = (5, 50, 95)
_LATENCY_FRAMES = 300  # frames behind the snapshot's latency quantiles
_ERROR_LOG_INTERVAL_S = 60.0
T = TypeVar("T")


class MonitorSink(Protocol):
    """Where the monitor's slow outputs go (the service queues them for SQLite)."""

    def window(self, row: Dict[str, Any]) -> None:
        """A closed summary window."""

    def event(self, kind: str, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        """Something happened worth a line in the history."""

    def reference_learned(self, reference: Reference) -> None:
        """A warm-up reference was built, or a training reference calibrated."""

    def calibration_started(self, key: str, ts: float) -> None:
        """A training reference's calibration began (kept so a restart keeps its clock)."""


class FrameTap(Protocol):
    """Sees every frame after its row is written (capture: must not block or allocate)."""

    def offer(self, frame: Optional[Frame], outputs: Optional[Sequence[npt.NDArray[Any]]],
              row: npt.NDArray[np.float32], ts: float) -> None:
        """Look at one frame and its row (a reused buffer)."""

    def stats(self) -> Dict[str, int]:
        """Counters for the heartbeat (captured, dropped, ...)."""


class NullSink:
    """A sink that keeps nothing (tests, benchmarks)."""

    def window(self, row: Dict[str, Any]) -> None:
        """Drop the window."""

    def event(self, kind: str, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        """Drop the event."""

    def reference_learned(self, reference: Reference) -> None:
        """Drop the reference."""

    def calibration_started(self, key: str, ts: float) -> None:
        """Drop the calibration's start."""


def summarise(values: npt.NDArray[np.float32],
              names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Per-feature mean, std, min, p05, p50, p95, max of a window (NaNs ignored)."""
    out: Dict[str, Dict[str, float]] = {}
    for j, name in enumerate(names):
        col = values[:, j]
        col = col[np.isfinite(col)]
        if col.size == 0:
            continue
        q = np.percentile(col, _QUANTILES)
        out[name] = {"mean": round(float(col.mean()), 5), "std": round(float(col.std()), 5),
                     "min": round(float(col.min()), 5), "p05": round(float(q[0]), 5),
                     "p50": round(float(q[1]), 5), "p95": round(float(q[2]), 5),
                     "max": round(float(col.max()), 5)}
    return out


class Monitor:
    """Observes frames and model outputs; raises alerts through an AlertManager."""

    def __init__(
        self,
        config: Config,
        alerts: AlertManager,
        *,
        model_info: Mapping[str, Any],
        sink: Optional[MonitorSink] = None,
        reference: Optional[Reference] = None,
        calibration_since: Optional[float] = None,
        output_spec: Optional[Sequence[Any]] = None,
        expected_fps: Optional[float] = None,
        clock: Callable[[], float] = time.time,
        tap: Optional[FrameTap] = None,
    ) -> None:
        self.config = config
        self.tap = tap
        self.alerts = alerts
        self.model_info = dict(model_info)
        self.sink: MonitorSink = sink or NullSink()
        self._clock = clock
        self._lock = threading.Lock()  # evaluation, commands, heartbeats; never held over I/O
        self.ring = RingBuffer(FEATURES, config.stats.capacity)
        warmup = Warmup(FEATURES, config.drift, self.model_info)
        self._warmup = warmup
        self._evaluator = Evaluator(config, alerts, self.ring, warmup, events=self._event,
                                    reference_learned=self.sink.reference_learned,
                                    calibration_started=self.sink.calibration_started,
                                    expected_fps=expected_fps)
        stats = ImageStats(sample_size=(config.stats.sample_width, config.stats.sample_height))
        self._observer = FrameObserver(
            self.ring, stats, warmup, make_decoder=self._make_decoder,
            decoder=None if output_spec is None else self._make_decoder(output_spec))
        alerts.declare_features(KNOWN_FEATURES)
        self._evaluator.set_reference(reference, calibration_since,
                                      str(self.model_info.get("sha256") or ""))
        self._started: Optional[float] = None
        # When the last frame arrived (time.monotonic()): a stall is judged on arrivals, never
        # on the caller's timestamps, which may run on any clock (replays, observe(ts=...)).
        self._arrived: Optional[float] = None
        self._next_eval = math.inf  # set by the first frame
        self._next_window = math.inf
        self._window_start = 0.0
        self._window_frames = 0
        self._last_eval: Optional[Evaluation] = None
        self._errors = 0
        self._last_error = ""
        self._next_error_log = 0.0
        log.info("monitor ready: %d features, ring buffer %d frames (%.1f MB), warm-up buffer "
                 "%.1f MB", len(FEATURES), self.ring.capacity, self.ring.nbytes / 1e6,
                 warmup.nbytes / 1e6)

    def _make_decoder(self, spec: Sequence[Any]) -> Decoder:
        kwargs: Dict[str, Any] = {"kind": self.config.model.decoder,
                                  "score_threshold": self.config.model.score_threshold}
        if self.model_info.get("input_size"):
            kwargs["input_size"] = self.model_info["input_size"]
        return make_decoder(spec, **kwargs)

    # ---- state -------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the fixed-size buffers."""
        return int(self.ring.nbytes + self._warmup.nbytes)

    @property
    def frames(self) -> int:
        """Frames observed."""
        return self._observer.frames

    @property
    def bad_frames(self) -> int:
        """Frames whose input or outputs held NaN/inf (their statistics are missing)."""
        return self._observer.bad_frames

    @property
    def errors(self) -> int:
        """Observations that failed in the hook (counted, never raised into the application)."""
        return self._errors

    @property
    def started(self) -> Optional[float]:
        """Timestamp of the first frame, if any."""
        return self._started

    @property
    def last_arrival(self) -> Optional[float]:
        """When the last frame arrived (``time.monotonic()``), if any."""
        return self._arrived

    @property
    def last_ts(self) -> Optional[float]:
        """Timestamp of the last frame, if any."""
        return self._observer.last_ts

    @property
    def decoder(self) -> Optional[Decoder]:
        """The decoder of the model's outputs, once known."""
        return self._observer.decoder

    @property
    def reference(self) -> Optional[Reference]:
        """The drift reference in use, if any yet."""
        return self._evaluator.reference

    @property
    def reference_status(self) -> ReferenceStatus:
        """Disabled, warming up, ready or failed."""
        return self._evaluator.status()

    @property
    def last_evaluation(self) -> Optional[Evaluation]:
        """The result of the last periodic evaluation, if any."""
        return self._last_eval

    # ---- the hot path ----------------------------------------------------------------
    def observe(self, frame: Optional[Frame], outputs: Optional[Sequence[npt.NDArray[Any]]] = None,
                latency_s: Optional[float] = None, ts: Optional[float] = None) -> None:
        """Record one frame (BGR uint8; None when unusable) and, optionally, outputs and latency."""
        if ts is None:
            ts = self._clock()
        elif not math.isfinite(ts):  # it would stop every later evaluation
            raise ValueError(f"observe: ts must be a finite unix time in seconds, got {ts!r}")
        self._arrived = time.monotonic()
        if ts >= self._next_window:
            self._close_window(ts)  # this frame opens the next window
        self._observer.observe(frame, outputs, latency_s, ts)
        if self.tap is not None:
            self.tap.offer(frame, outputs, self._observer.row, ts)
        self._window_frames += 1
        if self._started is None:
            self._start(ts)
        if ts >= self._next_eval:
            self._evaluate(ts)

    def _start(self, ts: float) -> None:
        self._started = ts
        self._window_start = ts
        self._next_window = ts + self.config.store.window_s
        self._next_eval = ts + self.config.rules.eval_interval_s

    def hook_error(self, exc: BaseException) -> None:
        """Count an observation that failed in the hook; log it once per minute."""
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._observer.count_bad_frame()
        now = time.monotonic()
        if now >= self._next_error_log:
            self._next_error_log = now + _ERROR_LOG_INTERVAL_S
            log.warning("observing a frame failed (%d so far; monitoring goes on): %s",
                        self._errors, self._last_error, exc_info=self._errors == 1)

    # ---- periodic work ---------------------------------------------------------------
    def _evaluate(self, now: float) -> None:
        self._next_eval = now + self.config.rules.eval_interval_s
        with self._lock:
            self._last_eval = self._evaluator.evaluate(now)

    def _event(self, kind: str, message: str, data: Dict[str, Any]) -> None:
        self.sink.event(kind, message, data)

    def _close_window(self, now: float) -> None:
        _, values = self.ring.last(min(self._window_frames, self.ring.size))
        row = {"ts_start": self._window_start, "ts_end": now, "frames": self._window_frames,
               "camera": self.config.device.camera, "summary": summarise(values, FEATURES)}
        self._window_start = now
        self._next_window = now + self.config.store.window_s
        self._window_frames = 0
        self.sink.window(row)

    def flush(self) -> None:
        """Close the partial window at the last frame (the loop stopped: replay end, run stop,
        close); nothing when no frame arrived since the last window closed."""
        last = self.last_ts
        if self._window_frames and last is not None:
            self._close_window(max(last, self._window_start))

    def set_reference(self, reference: Reference) -> None:
        """Compare with this reference from now on (a baseline file, warm-up or history)."""
        with self._lock:
            self._evaluator.set_reference(reference)

    def set_view(self, kind: str, size: Optional[Tuple[int, int]] = None) -> None:
        """What this path observes: ``frame`` (default) or ``input`` (the model's input tensor).

        The reference for that view is used; without one, drift detection reports itself off.
        """
        with self._lock:
            self._evaluator.life.set_view(kind, size)

    @property
    def view(self) -> str:
        """The view this monitor observes (``frame`` or ``input``)."""
        return self._evaluator.life.view

    def monitoring(self) -> Dict[str, Any]:
        """Is drift detection running, and if not why (state, reason, since, reference)."""
        with self._lock:
            return self._evaluator.monitoring(self.last_ts)

    def restart_warmup(self, now: Optional[float] = None) -> None:
        """Forget the reference and learn a new one from the next frames."""
        with self._lock:
            self._evaluator.restart_warmup(now if now is not None else self.last_ts)

    # ---- called from other threads -----------------------------------------------------
    def check_stall(self, now: float) -> None:
        """Raise or resolve the stalled-source alert (the service calls this on a timer).

        ``now`` is the alert clock's time; the age of the last frame is measured from when it
        arrived (monotonic), whatever clock the frames' timestamps are on.
        """
        with self._lock:
            arrived = self._arrived
            last = None if arrived is None else now - max(0.0, time.monotonic() - arrived)
            obs = check_stall(last, now, now, self.config.rules)
            self.alerts.update([obs], now)
            self.alerts.tick(now)

    def update_alerts(self, observations: Sequence[Observation], now: float) -> None:
        """Feed observations from another detector (device health) to the alert manager."""
        with self._lock:
            self.alerts.update(observations, now)

    def control(self, fn: Callable[[AlertManager], T]) -> T:
        """Run an operator control against the alert manager under the monitor's lock."""
        with self._lock:
            return fn(self.alerts)

    def snapshot(self) -> Dict[str, Any]:
        """Latest statistics, confidence, drift scores and open alerts (for heartbeats)."""
        with self._lock:
            held = self.ring.size
            row = self.ring.last(1)[1][0] if held else np.full(len(FEATURES), np.nan)
            latency = None
            if held:
                lat = self.ring.last(min(held, _LATENCY_FRAMES))[1][:, LAYOUT.index("latency_ms")]
                lat = lat[np.isfinite(lat)]
                if lat.size:
                    latency = {"p50": round(float(np.percentile(lat, 50)), 3),
                               "p95": round(float(np.percentile(lat, 95)), 3)}
            status = self._evaluator.status()
            return {
                "frames": self.frames,
                "bad_frames": self.bad_frames,
                "hook_errors": self._errors,
                "last_hook_error": self._last_error or None,
                "last_frame_ts": self.last_ts,
                "stats": _pick(IMAGE_FEATURES, row[LAYOUT.image]),
                "confidence": _pick(CONFIDENCE_FEATURES, row[LAYOUT.confidence]),
                "latency_ms": latency,
                "drift": self._evaluator.last_drift,
                "drift_scores": self._evaluator.last_scores,
                "reference": None if status.state != "ready" else {
                    "origin": status.origin, "created": status.created, "frames": status.frames,
                    **self._evaluator.life.identity(),
                    "thresholds": self._evaluator.life.thresholds()},
                "monitoring": self._evaluator.monitoring(self.last_ts),
                "warmup": _warmup_state(status),
                "alerts_open": [{"id": a.id, "kind": a.kind, "feature": a.feature,
                                 "severity": a.severity, "message": a.message}
                                for a in self.alerts.open_alerts()],
            }


def _pick(names: Sequence[str], values: npt.NDArray[Any]) -> Dict[str, Optional[float]]:
    return {n: round(float(v), 4) if np.isfinite(v) else None for n, v in zip(names, values)}


def _warmup_state(status: ReferenceStatus) -> Optional[Dict[str, Any]]:
    """The heartbeat's ``warmup``: None unless warming up or failed."""
    if status.state == "warming_up":
        return {"state": status.state, "frames": status.frames, "target_s": status.target_s}
    if status.state == "failed":
        return {"state": status.state, "frames": status.frames, "target_s": status.target_s,
                "message": status.message}
    return None
