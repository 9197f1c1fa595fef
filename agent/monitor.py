"""The per-frame hook: statistics and confidence into ring buffers, periodic checks.

:meth:`Monitor.observe` is the hot path: a fixed-size sample of the frame gives the
image statistics, the model's outputs give the confidence summary, and one row goes into
a preallocated ring buffer. No I/O, no lock, nothing that grows. Every
``eval_interval_s`` of frame time the monitor evaluates drift and the rules over the
buffer and hands the observations to the alert manager; every ``window_s`` it hands a
summary row to its sink (the service queues it for SQLite). Timestamps come from the
caller (replays) or the wall clock (live), so windows behave the same in both.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np

from .alerts import AlertManager, Observation
from .buffers import RingBuffer
from .confidence import CONFIDENCE_FEATURES, make_decoder
from .config import Config
from .drift.classmix import class_mix
from .drift.detector import evaluate as evaluate_drift
from .drift.reference import Reference, build_reference
from .rules import check_frames, check_stall
from .stats import IMAGE_FEATURES, ImageStats

log = logging.getLogger(__name__)

PERF_FEATURES = ("latency_ms", "frame_interval_ms")
# Bumped whenever a feature's definition changes, so that a reference learned by an older
# agent (whose numbers mean something else) is not compared with the new ones.
FEATURES_VERSION = 2
PREDICTION_FEATURES = tuple(CONFIDENCE_FEATURES)
FEATURES: tuple = tuple(IMAGE_FEATURES) + PREDICTION_FEATURES + PERF_FEATURES
# Not tested for distribution drift: motion/frames are covered by rules, the predicted
# class is categorical, and timing belongs to the performance checks.
NOT_DRIFT_TESTED = ("diff", "pred_class") + PERF_FEATURES
WARMUP_MAX_FRAMES = 36_000
_QUANTILES = (5, 50, 95)


class MonitorSink(Protocol):
    """Where the monitor's slow outputs go (the service queues them for SQLite)."""

    def window(self, row: Dict[str, Any]) -> None:
        """A closed summary window."""

    def event(self, kind: str, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        """Something happened worth a line in the history."""

    def reference_learned(self, reference: Reference) -> None:
        """A warm-up reference was built."""


class NullSink:
    """A sink that keeps nothing (tests, benchmarks)."""

    def window(self, row: Dict[str, Any]) -> None:
        """Drop the window."""

    def event(self, kind: str, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        """Drop the event."""

    def reference_learned(self, reference: Reference) -> None:
        """Drop the reference."""


def drift_features(config: Config) -> tuple:
    """The features tested for drift: configured, else all but NOT_DRIFT_TESTED."""
    if config.drift.features:
        return tuple(config.drift.features)
    return tuple(f for f in FEATURES if f not in NOT_DRIFT_TESTED)


def summarise(values: np.ndarray, names: Sequence[str]) -> Dict[str, Dict[str, float]]:
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
        model_info: Dict[str, Any],
        sink: Optional[MonitorSink] = None,
        reference: Optional[Reference] = None,
        output_spec: Optional[Sequence[Any]] = None,
        expected_fps: Optional[float] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.alerts = alerts
        self.model_info = model_info
        self.sink: MonitorSink = sink or NullSink()
        self.expected_fps = expected_fps
        self._clock = clock
        self._lock = threading.Lock()  # evaluation, commands, heartbeats; never held over I/O
        self.names = FEATURES
        self._n_img = len(IMAGE_FEATURES)
        self._n_conf = len(CONFIDENCE_FEATURES)
        self._stats = ImageStats(sample_size=(config.stats.sample_width, config.stats.sample_height))
        self._decoder = None
        self._score_threshold = config.model.score_threshold
        self._decoder_kind = config.model.decoder
        self._input_size = model_info.get("input_size")
        if output_spec is not None:
            self._decoder = self._make_decoder(output_spec)
        self.ring = RingBuffer(self.names, config.stats.capacity)
        self._row = np.full(len(self.names), np.nan, np.float32)
        self.drift_names = drift_features(config)
        unknown = [f for f in self.drift_names if f not in self.names]
        if unknown:
            from .errors import ConfigError
            raise ConfigError(f"{config.origin}: drift.features has unknown feature '{unknown[0]}' "
                              f"(valid: {', '.join(self.names)})")
        self.alerts.known_features = frozenset(self.names) | {
            "black_frames", "saturated_frames", "frozen_frames", "blur", "stalled", "fps",
            "outlier_frames", "image", "predictions", "class_mix"}
        self.reference: Optional[Reference] = None
        self._warmup: Optional[np.ndarray] = None
        self._warmup_n = 0
        self._warmup_start: Optional[float] = None
        if reference is not None:
            self.set_reference(reference)
        elif config.drift.enabled:
            self._warmup = np.empty((WARMUP_MAX_FRAMES, len(self.names)), np.float32)
        self.frames = 0
        self.started: Optional[float] = None
        self.last_ts: Optional[float] = None
        self._next_eval: Optional[float] = None
        self._next_drift = 0.0
        self._window_start: Optional[float] = None
        self._window_frames = 0
        self.last_drift: Dict[str, Any] = {}
        log.info("monitor ready: %d features, ring buffer %d frames (%.1f MB), warm-up buffer %.1f MB",
                 len(self.names), self.ring.capacity, self.ring.nbytes / 1e6,
                 0 if self._warmup is None else self._warmup.nbytes / 1e6)

    # ---- memory report ---------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the fixed-size buffers."""
        return int(self.ring.nbytes + (0 if self._warmup is None else self._warmup.nbytes))

    def _make_decoder(self, spec: Sequence[Any]) -> Any:
        kwargs: Dict[str, Any] = {"kind": self._decoder_kind, "score_threshold": self._score_threshold}
        if self._input_size:
            kwargs["input_size"] = self._input_size
        return make_decoder(spec, **kwargs)

    # ---- the hot path ----------------------------------------------------------------
    def observe(self, frame: np.ndarray, outputs: Optional[Sequence[np.ndarray]] = None,
                latency_s: Optional[float] = None, ts: Optional[float] = None) -> None:
        """Record one frame (BGR uint8) and, optionally, the model's outputs and latency."""
        if ts is None:
            ts = self._clock()
        if self._window_start is not None and ts - self._window_start >= self.config.store.window_s:
            self._close_window(ts)  # this frame opens the next window
        row = self._row
        self._stats.compute(frame, row[: self._n_img])
        conf = row[self._n_img: self._n_img + self._n_conf]
        if outputs is not None:
            if self._decoder is None:
                self._decoder = self._make_decoder(list(outputs))
            self._decoder(outputs, conf)
        else:
            conf.fill(np.nan)
        row[-2] = np.nan if latency_s is None else latency_s * 1000.0
        row[-1] = np.nan if self.last_ts is None else (ts - self.last_ts) * 1000.0
        self.ring.push(ts, row)
        if self._warmup is not None and self._warmup_n < WARMUP_MAX_FRAMES:
            self._warmup[self._warmup_n] = row
            self._warmup_n += 1
        self.frames += 1
        self._window_frames += 1
        self.last_ts = ts
        if self.started is None:
            self._start(ts)
        if ts >= self._next_eval:  # type: ignore[operator]
            self._evaluate(ts)

    def _start(self, ts: float) -> None:
        self.started = ts
        self._warmup_start = ts
        self._window_start = ts
        self._next_eval = ts + self.config.rules.eval_interval_s
        self._next_drift = ts + self.config.drift.eval_interval_s

    # ---- periodic work (rules every rules.eval_interval_s, drift every drift's) --------
    def _evaluate(self, now: float) -> None:
        self._next_eval = now + self.config.rules.eval_interval_s
        run_drift = now >= self._next_drift
        if run_drift:
            self._next_drift = now + self.config.drift.eval_interval_s
        with self._lock:
            if self._warmup is not None and self._warmup_start is not None and (
                    now - self._warmup_start >= self.config.drift.warmup_s
                    or self._warmup_n >= WARMUP_MAX_FRAMES):
                self._finish_warmup(now)
            observations: List[Observation] = []
            if self.config.rules.enabled:
                ts, values = self.ring.since(now - self.config.rules.window_s)
                observations += check_frames(self.names, ts, values, self.config.rules,
                                             reference=self._ref_summary if self.reference else None,
                                             expected_fps=self.expected_fps)
            if run_drift and self.config.drift.enabled and self.reference is not None:
                observations += self._drift_observations(now)
            self.alerts.update(observations, now)
            self.alerts.tick(now)

    def _ref_summary(self, feature: str) -> Optional[Dict[str, float]]:
        ref = self.reference
        if ref is None or feature not in ref.names:
            return None
        out = ref.summary(feature)
        out["mad"] = float(ref.mad[ref.index(feature)])
        return out

    def _drift_observations(self, now: float) -> List[Observation]:
        ref = self.reference
        assert ref is not None
        want = ref.window_frames  # thresholds are calibrated for the reference's window size
        n = min(want, self.ring.size)
        if n < want:
            return []
        ts, values = self.ring.last(n)
        if tuple(ref.names) != tuple(self.names):
            values = values[:, [self.names.index(f) for f in ref.names]]
        feats = [f for f in self.drift_names if f in ref.names]
        overrides = {f: v for f in feats
                     if (v := self.alerts.threshold_override(f)) is not None}
        report = evaluate_drift(ref, values, features=feats,
                                thresholds_override=overrides or None)
        window = {"start": float(ts[0]), "end": float(ts[-1]), "frames": int(n)}
        self.last_drift = {fd.feature: round(float(fd.ks), 4) for fd in report.features
                           if fd.ks == fd.ks}
        out = []
        for kind, group in (("data_drift", "image"), ("prediction_drift", "predictions")):
            members = [fd for fd in report.features if (fd.feature in IMAGE_FEATURES) ==
                       (kind == "data_drift") and not self.alerts.is_disabled(kind, fd.feature)]
            members = [fd for fd in members if fd.evaluated]
            if not members:
                continue
            ratio = [fd.ks / fd.threshold for fd in members]
            worst = members[int(np.argmax(ratio))]
            drifted = sorted((fd for fd in members if fd.drifted), key=lambda f: -f.ks / f.threshold)
            breach = bool(drifted)
            clear = not any(fd.above_clear for fd in members)
            top = drifted[0] if drifted else worst
            rs, cs = top.reference, top.current
            names = ", ".join(fd.feature for fd in drifted[:6]) or "none"
            label = "data drift" if kind == "data_drift" else "prediction drift"
            summary = (f"{label} in {names}: {top.feature} mean {cs['mean']:.3g} vs reference "
                       f"{rs['mean']:.3g}±{rs['std']:.2g} (KS {top.ks:.2f} > {top.threshold:.2f}, "
                       f"PSI {top.psi:.2f})")
            out.append(Observation(
                kind=kind, feature=group, metric="ks", value=float(top.ks),
                threshold=float(top.threshold), breach=breach, clear=clear,
                severity="critical" if breach and top.ks > 2 * top.threshold else "warning",
                for_s=self.config.drift.for_s, clear_for_s=self.config.drift.clear_for_s,
                summary=summary,
                expected={fd.feature: {**fd.reference, "threshold": fd.threshold} for fd in drifted[:6]}
                or {top.feature: {**top.reference, "threshold": top.threshold}},
                observed={"drifted": [fd.feature for fd in drifted],
                          "features": {fd.feature: {**fd.current, "ks": fd.ks, "psi": fd.psi,
                                                    "wasserstein": fd.wasserstein}
                                       for fd in (drifted[:6] or [top])}},
                window=window))
        mix = self._class_mix_observation(values, ref, window)
        if mix is not None:
            out.append(mix)
        return out

    def _class_mix_observation(self, values: np.ndarray, ref: Reference,
                               window: Dict[str, Any]) -> Optional[Observation]:
        """Prediction drift in the mix of predicted classes (multi-class models only)."""
        if "pred_class" not in ref.names or self.alerts.is_disabled("prediction_drift", "class_mix"):
            return None
        col = ref.index("pred_class")
        result = class_mix(ref.sketch[col], values[:, col])
        if result is None:
            return None
        js, ref_frac, cur_frac = result
        limit = self.alerts.threshold_override("class_mix") or self.config.drift.class_mix_js
        top_ref, top_cur = int(np.argmax(ref_frac)), int(np.argmax(cur_frac))
        return Observation(
            kind="prediction_drift", feature="class_mix", metric="js_divergence", value=js,
            threshold=limit, breach=js > limit, clear=js < 0.7 * limit,
            severity="warning", for_s=self.config.drift.for_s,
            clear_for_s=self.config.drift.clear_for_s,
            summary=(f"prediction drift in class mix: JS divergence {js:.2f} > {limit:.2f} "
                     f"(most frequent class {top_cur} at {cur_frac[top_cur]:.0%}; reference class "
                     f"{top_ref} at {ref_frac[top_ref]:.0%})"),
            expected={"class_fractions": [round(float(v), 4) for v in ref_frac], "max_js": limit},
            observed={"class_fractions": [round(float(v), 4) for v in cur_frac], "js": js},
            window=window)

    def _finish_warmup(self, now: float) -> None:
        assert self._warmup is not None
        n = self._warmup_n
        values = self._warmup[:n]
        self._warmup = None  # frees the warm-up buffer
        if n < 2 * self.config.drift.window_frames:
            self.sink.event("warmup_failed", f"warm-up collected only {n} frames; "
                            f"need {2 * self.config.drift.window_frames} (raise drift.warmup_s)")
            return
        fps = (n - 1) / max(now - (self._warmup_start or now), 1e-9)
        ref = build_reference(
            values, self.names, window_frames=self.config.drift.window_frames,
            eval_stride_frames=max(1, int(round(self.config.drift.eval_interval_s * fps))),
            fps=fps, model_sha256=self.model_info.get("sha256", ""),
            model_path=str(self.model_info.get("path", "")), origin="warmup",
            source=f"warm-up of {n} frames", created=now,
            target_false_alarms_per_week=self.config.drift.false_alarms_per_week,
            persistence_s=self.config.drift.for_s)
        self.set_reference(ref)
        self.sink.reference_learned(ref)
        self.sink.event("reference", f"warm-up reference learned from {n} frames "
                        f"({now - (self._warmup_start or now):.0f} s)", {"origin": "warmup", "frames": n})

    def set_reference(self, reference: Reference) -> None:
        """Compare with this reference from now on (a baseline file, warm-up or history)."""
        self.reference = reference
        self._warmup = None

    def restart_warmup(self, now: Optional[float] = None) -> None:
        """Forget the reference and learn a new one from the next frames."""
        with self._lock:
            self.reference = None
            self._warmup = np.empty((WARMUP_MAX_FRAMES, len(self.names)), np.float32)
            self._warmup_n = 0
            self._warmup_start = now if now is not None else self.last_ts

    def _close_window(self, now: float) -> None:
        start = self._window_start
        assert start is not None
        _, values = self.ring.last(min(self._window_frames, self.ring.size))
        row = {"ts_start": start, "ts_end": now, "frames": self._window_frames,
               "camera": self.config.device.camera,
               "summary": summarise(values, self.names)}
        self._window_start = now
        self._window_frames = 0
        self.sink.window(row)

    # ---- called from other threads -----------------------------------------------------
    def check_stall(self, now: float) -> None:
        """Raise or resolve the stalled-source alert (the service calls this on a timer)."""
        with self._lock:
            obs = check_stall(self.last_ts, self.started or now, now, self.config.rules)
            self.alerts.update([obs], now)
            self.alerts.tick(now)

    def update_alerts(self, observations: Sequence[Observation], now: float) -> None:
        """Feed observations from another detector (device health) to the alert manager."""
        with self._lock:
            self.alerts.update(observations, now)

    def control(self, fn: Callable[[AlertManager], Any]) -> Any:
        """Run an operator control against the alert manager under the monitor's lock."""
        with self._lock:
            return fn(self.alerts)

    def snapshot(self) -> Dict[str, Any]:
        """Latest statistics, confidence, drift scores and open alerts (for heartbeats)."""
        with self._lock:
            row = self.ring.last(1)[1][0] if self.ring.size else self._row
            latency = None
            if self.ring.size:
                lat = self.ring.last(min(self.ring.size, 300))[1][:, -2]
                lat = lat[np.isfinite(lat)]
                if lat.size:
                    latency = {"p50": round(float(np.percentile(lat, 50)), 3),
                               "p95": round(float(np.percentile(lat, 95)), 3)}
            def pick(names: Sequence[str], offset: int) -> Dict[str, Optional[float]]:
                return {n: (None if not np.isfinite(row[offset + i]) else round(float(row[offset + i]), 4))
                        for i, n in enumerate(names)}
            return {
                "frames": self.frames,
                "last_frame_ts": self.last_ts,
                "stats": pick(IMAGE_FEATURES, 0),
                "confidence": pick(PREDICTION_FEATURES, self._n_img),
                "latency_ms": latency,
                "drift": dict(self.last_drift),
                "reference": None if self.reference is None else {
                    "origin": self.reference.origin, "created": self.reference.created,
                    "frames": self.reference.frames},
                "warmup": None if self._warmup is None else {
                    "frames": self._warmup_n, "target_s": self.config.drift.warmup_s},
                "alerts_open": [{k: a[k] for k in ("id", "kind", "feature", "severity", "message")}
                                for a in self.alerts.open_alerts()],
            }
