"""The reference lifecycle: which reference drift is tested against, and whether it is running.

A reference records the view its statistics were measured on (``frame``: the camera's
frames, as ``run`` and ``observe(frame)`` see them; ``input``: the model's input tensor, as
``wrap`` sees it). The lifecycle picks the reference for the view this path observes (a
baseline file carries both), and never compares across views: a reference without the view
needed leaves drift detection ``off`` with the reason and the fix.

Drift detection is ``active``, or it is not and says why (:meth:`Lifecycle.monitoring`):
``warming_up`` (learning a reference from the first ``warmup_s``, or waiting for the first
full window), ``calibrating`` (a training reference's thresholds are being calibrated on the
camera's own frames for ``calibration_s``), ``degraded`` (some features are not tested) or
``off`` (drift disabled, warm-up or calibration failed, view mismatch). Past the configured
warm-up or calibration time, a state other than ``active`` is a ``monitoring`` alert
(:meth:`Lifecycle.observation`) that resolves once drift detection runs again.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .confidence import CONFIDENCE_FEATURES
from .config import Config
from .drift.calibrate import calibrate
from .drift.reference import Reference, sketch
from .errors import BaselineError
from .observe import FEATURES_VERSION
from .records import Observation, ReferenceStatus, Window
from .warmup import Warmup, WarmupFailed

__all__ = ["MONITORING_FEATURES", "PREDICTION_FEATURES", "VIEWS", "Lifecycle", "calibration_key",
           "with_features"]

log = logging.getLogger(__name__)

#: What a path observes: the camera's frames or the model's input tensor.
VIEWS = ("frame", "input")
_VIEW_WORDS = {"frame": "full camera frames", "input": "the model's input tensor",
               "unknown": "an unrecorded view (a baseline from an older edgewatch)"}

#: The ``monitoring`` alerts' features: drift (or its calibration) not running, and the
#: prediction reference being relearned.
MONITORING_FEATURES = ("drift", "calibration", "prediction_reference")

Events = Callable[[str, str, Dict[str, Any]], None]
#: The features a new model changes: relearned while image drift goes on.
PREDICTION_FEATURES = frozenset(CONFIDENCE_FEATURES + ("pred_class",))
# Per-feature arrays of a Reference (one row per feature).
_ROW_ARRAYS = ("sketch", "mean", "std", "median", "p05", "p95", "iqr", "mad", "scale",
               "psi_edges", "psi_ref", "threshold", "clear_threshold", "rho1", "n_eff",
               "null_mean", "null_max")


def calibration_key(reference: Reference) -> str:
    """The identity of a training reference, under which its calibration is stored."""
    return (f"{reference.model_sha256[:16]}:{reference.created!r}:{reference.frames}:"
            f"{reference.view_kind}")


class Lifecycle:
    """The reference in use, its view, warm-up or calibration, and the monitoring state."""

    def __init__(self, config: Config, warmup: Warmup, *, events: Events,
                 learned: Callable[[Reference], None],
                 calibration_started: Callable[[str, float], None]) -> None:
        self.config = config
        self.warmup = warmup
        self._events = events
        self._learned = learned
        self._calibration_started = calibration_started
        self.view = "frame"
        self.view_size: Optional[Tuple[int, int]] = None
        self._given: Optional[Reference] = None  # as loaded: a file, the store or a warm-up
        self._active: Optional[Reference] = None  # what drift tests use
        self._calibrating: Optional[Reference] = None
        self._off = ""  # why drift detection is off (a failure), '' otherwise
        self._since: Optional[float] = None  # when drift detection stopped/was not yet running
        self._resume_since: Optional[float] = None  # a calibration's start, kept over restarts
        self._model_sha = ""  # the running model's, when known
        self._relearn: Tuple[str, ...] = ()  # features relearned for a new model
        self._relearn_note = ""

    @property
    def reference(self) -> Optional[Reference]:
        """The reference drift is tested against, if drift can run."""
        return self._active

    def identity(self) -> Dict[str, Any]:
        """Kind, origin, source and view of the reference in use ({} when none)."""
        return {} if self._active is None else self._active.identity()

    def thresholds(self) -> Dict[str, Dict[str, float]]:
        """Per feature: calibrated KS threshold, lag-1 autocorrelation, independent values."""
        ref = self._active
        if ref is None:
            return {}
        rows = zip(ref.names, ref.threshold.tolist(), ref.rho1.tolist(), ref.n_eff.tolist())
        return {n: {"threshold": round(t, 4), "rho1": round(r, 4), "n_eff": round(e, 1)}
                for n, t, r, e in rows if t == t}

    @property
    def relearning(self) -> Tuple[str, ...]:
        """Features not tested while they are relearned for a new model."""
        return self._relearn

    def set_reference(self, reference: Optional[Reference],
                      calibration_since: Optional[float] = None, model_sha256: str = "") -> None:
        """Use this reference (view-resolved; a training one is calibrated first).

        A reference made for another model (``model_sha256`` differs): image drift keeps
        running on it while the prediction features are relearned from a warm-up.
        """
        self._given = reference
        self._resume_since = calibration_since
        self._model_sha = model_sha256
        self._resolve(None)

    def restart_warmup(self, start: Optional[float]) -> None:
        """Forget the reference and learn a new one from the next frames."""
        self._given = self._active = self._calibrating = None
        self._off = ""
        self._relearn = ()
        self._since = start
        self.warmup.begin(start)

    def set_view(self, kind: str, size: Optional[Tuple[int, int]] = None) -> None:
        """The view this path observes (``wrap`` sets ``input``)."""
        if kind not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {kind!r}")
        self.view, self.view_size = kind, size
        if self._given is not None:
            self._resolve(None)

    def view_record(self) -> Dict[str, Any]:
        """The view a reference learned here records."""
        s = self.config.stats
        return {"kind": self.view, "size": None if self.view_size is None else
                list(self.view_size), "sample": [s.sample_width, s.sample_height],
                "features_version": FEATURES_VERSION}

    def _resolve(self, now: Optional[float]) -> None:
        given = self._given
        self._active = self._calibrating = None
        self._off = ""
        self._relearn = ()
        if given is None:
            if self.config.drift.enabled and not self.warmup.collecting:
                self.warmup.begin(now)
            return
        ref = given.for_view(self.view)
        if ref is None and given.view_kind == "unknown" and self.view == "frame":
            ref = given  # older references all measured full frames
        if ref is None:
            self.warmup.stop()
            self._off = self._mismatch(given)
        elif not ref.calibrated:
            self._calibrating = ref
            # A resumed calibration collects afresh (the frames were lost); its alert clock
            # runs from the stored start.
            self.warmup.begin(None, target_s=self.config.drift.calibration_s)
        else:
            self._active = ref
            self.warmup.stop()
            self._relearn_if_new_model(ref)

    def _relearn_if_new_model(self, ref: Reference) -> None:
        sha = self._model_sha
        if not sha or ref.model_sha256 in ("", sha):
            return
        self._relearn = tuple(f for f in ref.names if f in PREDICTION_FEATURES)
        self._relearn_note = (f"the model changed (sha256 {ref.model_sha256[:12]} -> "
                              f"{sha[:12]})")
        self.warmup.begin(None)

    def _mismatch(self, given: Reference) -> str:
        fix = ("rebuild it with `edgewatch baseline SOURCE... --out FILE` (it records both "
               "views), or remove [drift] reference to learn one from a warm-up"
               if given.kind == "training" else
               "learn a new one with `edgewatch baseline --rebuild`")
        return (f"the reference ({given.source}) measured {_VIEW_WORDS[given.view_kind]} but "
                f"this path observes {_VIEW_WORDS[self.view]}: {fix}")

    def tick(self, now: float) -> None:
        """Finish a due warm-up or calibration; note when a collection starts."""
        if self._calibrating is not None and self._resume_since is None:
            self._resume_since = now
            self._calibration_started(calibration_key(self._calibrating), now)
        if not self.warmup.due(now):
            return
        if self._calibrating is not None:
            self._finish_calibration(now)
        elif self._relearn and self._active is not None:
            self._finish_relearning(now, self._active)
        else:
            self._finish_warmup(now)

    def _finish_relearning(self, now: float, old: Reference) -> None:
        try:
            new = self.warmup.finish(now, view=self.view_record())
        except WarmupFailed as exc:
            self._events("warmup_failed", f"relearning the prediction reference: {exc}",
                         {"frames": self.warmup.frames})
            self.warmup.begin(None)  # image drift goes on; the next warm-up tries again
            return
        merged = with_features(old, new, self._relearn)
        self._events("reference", f"prediction reference relearned for the new model from "
                     f"{new.frames} frames ({', '.join(self._relearn)})",
                     {"origin": "warmup", "frames": new.frames})
        self._relearn = ()
        self._given = self._active = merged
        self._learned(merged)

    def _finish_warmup(self, now: float) -> None:
        try:
            ref = self.warmup.finish(now, view=self.view_record())
        except WarmupFailed as exc:
            self._off = str(exc)
            self._events("warmup_failed", str(exc), {"frames": self.warmup.frames})
            return
        self._given = self._active = ref
        self._learned(ref)
        self._events("reference", f"warm-up reference learned from {ref.frames} frames "
                     f"({self.view} view)", {"origin": "warmup", "frames": ref.frames,
                                             "view": self.view})

    def _finish_calibration(self, now: float) -> None:
        training = self._calibrating
        assert training is not None
        rows, fps, _ = self.warmup.take(now)
        cfg = self.config.drift
        try:
            ref = calibrate(training, rows, fps=fps, window_frames=cfg.window_frames,
                            eval_stride_frames=max(1, int(round(cfg.eval_interval_s * fps))),
                            persistence_s=cfg.for_s,
                            target_false_alarms_per_week=cfg.false_alarms_per_week)
        except (BaselineError, ValueError) as exc:
            self._off = str(exc)
            self._events("calibration_failed", str(exc), {"frames": int(rows.shape[0])})
            return
        self._calibrating = None
        self._active = ref
        self._learned(ref)
        self._events("calibrated", f"training reference calibrated on {rows.shape[0]} frames "
                     "of this camera", {"frames": int(rows.shape[0])})

    def status(self) -> ReferenceStatus:
        """Where the reference stands (for snapshots and heartbeats)."""
        ref = self._active
        if ref is not None:
            return ReferenceStatus("ready", frames=ref.frames, origin=ref.origin,
                                   created=ref.created)
        if not self.config.drift.enabled:
            return ReferenceStatus("disabled")
        if self._off:
            return ReferenceStatus("failed", frames=self.warmup.frames, message=self._off)
        if self._calibrating is not None:
            return ReferenceStatus("calibrating", frames=self.warmup.frames,
                                   target_s=self.warmup.target_s)
        return self.warmup.status()

    def monitoring(self, now: Optional[float], *, window_missing: int = 0,
                   features_off: Sequence[str] = ()) -> Dict[str, Any]:
        """The heartbeat's ``monitoring``: state, reason, since, reference, features off."""
        state, reason = self._state(window_missing, features_off)
        if state == "active":
            self._since = None
        elif self._since is None and now is not None:
            resumed = self._calibrating is not None and self._resume_since is not None
            self._since = self._resume_since if resumed else now
        shown = self._active or self._calibrating or self._given
        return {"state": state, "reason": reason, "since": self._since,
                "reference": None if shown is None else shown.identity(),
                "features_off": list(features_off)}

    def _state(self, window_missing: int, features_off: Sequence[str]) -> Tuple[str, str]:
        cfg = self.config.drift
        if not cfg.enabled:
            return "off", "drift detection is disabled ([drift] enabled = false)"
        if self._off:
            return "off", self._off
        if self._calibrating is not None:
            return "calibrating", (
                f"calibrating the training reference's thresholds on this camera's frames "
                f"({self.warmup.frames} frames of {cfg.calibration_s:g} s)")
        if self._active is None:
            return "warming_up", (f"learning a reference from the first {cfg.warmup_s:g} s "
                                  f"({self.warmup.frames} frames so far)")
        if window_missing:
            return "warming_up", (f"waiting for a full window: {window_missing} more frames "
                                  f"of {self._active.window_frames}")
        if features_off:
            return "degraded", f"not tested (no data): {', '.join(features_off)}"
        if self._relearn:
            return "degraded", (
                f"{self._relearn_note}: image drift runs on the existing reference; the "
                f"prediction reference is being relearned ({self.warmup.frames} frames of "
                f"{cfg.warmup_s:g} s)")
        return "active", "drift detection is running"

    def observations(self, now: float, monitoring: Dict[str, Any]) -> List[Observation]:
        """The ``monitoring`` alerts' observations: drift (or calibration) not running past its
        time, and the prediction reference being relearned for a new model."""
        cfg = self.config.drift
        state = monitoring["state"]
        grace = cfg.calibration_s if state == "calibrating" else cfg.warmup_s
        since = monitoring["since"]
        off_for = 0.0 if since is None else now - since
        relearning_only = state == "degraded" and bool(self._relearn) and \
            not monitoring["features_off"]
        breach = cfg.enabled and state != "active" and off_for > grace and not relearning_only
        what = "drift detection is not running" if state != "degraded" else \
            "drift detection is degraded"
        window = Window(since or now, now, 0)
        observed = {"monitoring": dict(monitoring)}
        return [Observation(
            kind="monitoring", feature="calibration" if state == "calibrating" else "drift",
            metric="seconds_not_running", value=round(off_for, 3), threshold=grace,
            breach=breach, clear=not breach, window=window, observed=observed,
            summary=f"{what} ({state}): {monitoring['reason']}" if breach else
            "drift detection running again", reference=monitoring["reference"]), Observation(
            kind="monitoring", feature="prediction_reference", metric="relearning",
            value=float(bool(self._relearn)), threshold=0.0, breach=bool(self._relearn),
            clear=not self._relearn, window=window, observed=observed,
            summary=(f"{self._relearn_note}: prediction drift is off for "
                     f"{', '.join(self._relearn)} until it is relearned from the first "
                     f"{cfg.warmup_s:g} s of the new model's frames; image drift runs on the "
                     "existing reference" if self._relearn else
                     "prediction reference relearned for the model"),
            reference=monitoring["reference"])]


def with_features(base: Reference, other: Reference, features: Sequence[str]) -> Reference:
    """``base`` with the rows of ``features`` taken from ``other`` (and ``other``'s model)."""
    rows = [base.index(f) for f in features]
    k = base.sketch.shape[1]
    arrays: Dict[str, Any] = {}
    for name in _ROW_ARRAYS:
        mine, theirs = getattr(base, name).copy(), getattr(other, name)
        for r in rows:
            row = theirs[other.index(base.names[r])]
            if name == "sketch":  # resampled to the base's sketch size
                row = np.full(k, np.nan) if np.isnan(row[0]) else sketch(row, k)
            mine[r] = row
        arrays[name] = mine
    return dataclasses.replace(base, **arrays, model_sha256=other.model_sha256,
                               model_path=other.model_path, alt=None)
