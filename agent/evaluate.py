"""The periodic evaluation: warm-up learning, rules, drift and class mix over the ring buffer.

Every ``rules.eval_interval_s`` of frame time the monitor calls :meth:`Evaluator.evaluate`:
it finishes a due warm-up, runs the rules over the last ``rules.window_s``, runs the drift
test every ``drift.eval_interval_s`` (on the reference's window size), hands every
observation to the alert manager and returns an :class:`~agent.records.Evaluation`.
Drift groups its features into two alerts, ``image`` (data drift) and ``predictions``
(prediction drift), plus ``class_mix`` for multi-class models.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import numpy.typing as npt

from .alerts import AlertManager
from .buffers import RingBuffer
from .config import Config
from .drift.classmix import CLASS_MIX_FEATURE, class_mix
from .drift.detector import FeatureDrift
from .drift.detector import evaluate as evaluate_drift
from .drift.reference import CLEAR_RATIO, Reference
from .errors import ConfigError
from .lifecycle import Lifecycle
from .observe import FEATURES, PERF_FEATURES
from .records import Evaluation, Observation, ReferenceStatus, Window
from .rules import check_frames
from .stats import IMAGE_FEATURES
from .warmup import Warmup

__all__ = ["DRIFT_FEATURES", "NOT_DRIFT_TESTED", "Evaluator", "drift_features"]

#: The drift alerts' features: image statistics, confidence summary, predicted-class mix.
DRIFT_FEATURES: tuple[str, ...] = ("image", "predictions", CLASS_MIX_FEATURE)
# Not tested for distribution drift: motion/frames are covered by rules, the predicted
# class is categorical, and timing belongs to the performance checks.
NOT_DRIFT_TESTED: tuple[str, ...] = ("diff", "pred_class") + PERF_FEATURES
_SHOWN = 6  # drifted features named in an alert message (the payload lists them all)
# Robust SDs: a move this large is beyond doubt and beyond ranking. A window wandering within
# the reference's own range stays within about 2 (the emulated scenes' exposure wander).
_DECISIVE = 3.0
# Ties among decisive moves: a cause before the statistics it drives (less light raises
# the noise and lowers contrast, detail, colour and entropy; noise raises the Laplacian).
_CAUSE_ORDER = ("brightness", "noise", "contrast", "sharpness", "edge_density", "saturation",
                "colorfulness", "mean_b", "mean_g", "mean_r", "overexposed", "underexposed",
                "entropy", "diff", "motion")
# The rules that compare with the reference (the others need none).
_RULES_ON_REFERENCE = frozenset(("blur", "latency_ms", "outlier_frames"))

Events = Callable[[str, str, Dict[str, Any]], None]


def drift_features(config: Config) -> tuple[str, ...]:
    """The features tested for drift: configured (checked), else all but NOT_DRIFT_TESTED."""
    if not config.drift.features:
        return tuple(f for f in FEATURES if f not in NOT_DRIFT_TESTED)
    unknown = [f for f in config.drift.features if f not in FEATURES]
    if unknown:
        raise ConfigError(f"{config.origin}: drift.features has unknown feature '{unknown[0]}' "
                          f"(valid: {', '.join(FEATURES)})")
    return tuple(config.drift.features)


class Evaluator:
    """Rules, drift and the reference lifecycle over the ring buffer, feeding one alert manager."""

    def __init__(self, config: Config, alerts: AlertManager, ring: RingBuffer, warmup: Warmup, *,
                 events: Events, reference_learned: Callable[[Reference], None],
                 calibration_started: Callable[[str, float], None],
                 expected_fps: Optional[float] = None) -> None:
        self.config = config
        self.alerts = alerts
        self.ring = ring
        self.life = Lifecycle(config, warmup, events=events, learned=reference_learned,
                              calibration_started=calibration_started)
        self.drift_names = drift_features(config)
        self.expected_fps = expected_fps
        self._next_drift = -np.inf
        self._last_drift: Dict[str, float] = {}
        self._last_scores: Dict[str, float] = {}
        self._features_off: tuple[str, ...] = ()
        self._monitoring: Optional[Dict[str, Any]] = None

    @property
    def reference(self) -> Optional[Reference]:
        """The reference drift is tested against, if any yet."""
        return self.life.reference

    @property
    def last_drift(self) -> Dict[str, float]:
        """KS distance per feature at the last drift test."""
        return dict(self._last_drift)

    @property
    def last_scores(self) -> Dict[str, float]:
        """KS distance over its threshold per feature at the last drift test (>= 1: over)."""
        return dict(self._last_scores)

    def status(self) -> ReferenceStatus:
        """Where the reference stands (for snapshots and heartbeats)."""
        return self.life.status()

    def monitoring(self, now: Optional[float]) -> Dict[str, Any]:
        """Is drift detection running, and if not why (the heartbeat's ``monitoring``)."""
        ref = self.life.reference
        missing = 0 if ref is None else max(0, ref.window_frames - self.ring.size)
        return self.life.monitoring(now, window_missing=missing, features_off=self._features_off)

    def set_reference(self, reference: Optional[Reference],
                      calibration_since: Optional[float] = None, model_sha256: str = "") -> None:
        """Test against this reference from now on (baseline file, warm-up or history)."""
        self._last_drift, self._last_scores, self._features_off = {}, {}, ()
        self.life.set_reference(reference, calibration_since, model_sha256)

    def restart_warmup(self, start: Optional[float]) -> None:
        """Forget the reference and learn a new one from the next frames."""
        self._last_drift, self._last_scores, self._features_off = {}, {}, ()
        self.life.restart_warmup(start)

    def evaluate(self, now: float) -> Evaluation:
        """One evaluation at ``now``; drift runs at most every ``drift.eval_interval_s``."""
        self.life.tick(now)
        observations: List[Observation] = []
        rules = self.config.rules
        ref = self.life.reference
        if rules.enabled:
            ts, values = self.ring.since(now - rules.window_s)
            found = check_frames(FEATURES, ts, values, rules, reference=self._ref_summary,
                                 expected_fps=self.expected_fps)
            observations += found if ref is None else _against(ref, found, _RULES_ON_REFERENCE)
        ran = False
        if now >= self._next_drift and ref is not None:
            self._next_drift = now + self.config.drift.eval_interval_s
            drift = self._drift_observations(ref)
            ran = drift is not None
            observations += drift or []
        observations += self.life.observations(now, self.monitoring(now))
        self.alerts.update(observations, now)
        self.alerts.tick(now)
        return Evaluation(now, tuple(observations), dict(self._last_drift), ran, self.status())

    def _ref_summary(self, feature: str) -> Optional[Dict[str, float]]:
        ref = self.life.reference
        if ref is None or feature not in ref.names:
            return None
        out = ref.summary(feature)
        out["mad"] = float(ref.mad[ref.index(feature)])
        return out

    def _drift_observations(self, ref: Reference) -> Optional[List[Observation]]:
        """The drift groups' and class mix's observations; None until the window is full."""
        n = ref.window_frames  # thresholds are calibrated for the reference's window size
        if self.ring.size < n:
            return None
        ts, values = self.ring.last(n)
        if ref.names != FEATURES:
            values = values[:, [FEATURES.index(f) for f in ref.names]]
        feats = [f for f in self.drift_names if f in ref.names and f not in self.life.relearning]
        overrides = {f: v for f in feats if (v := self.alerts.threshold_override(f)) is not None}
        report = evaluate_drift(ref, values, features=feats, thresholds_override=overrides or None)
        window = Window(float(ts[0]), float(ts[-1]), n)
        self._last_drift = {fd.feature: round(float(fd.ks), 4) for fd in report.features
                            if fd.evaluated}
        self._last_scores = {fd.feature: round(float(fd.ratio), 4) for fd in report.features
                             if fd.evaluated}
        # Off: a feature the reference or the window has data for that could not be tested.
        self._features_off = tuple(fd.feature for fd in report.features if not fd.evaluated
                                   and (fd.frames > 0 or fd.reason != "no reference data"))
        out = []
        for kind, group in (("data_drift", "image"), ("prediction_drift", "predictions")):
            members = [fd for fd in report.features if fd.evaluated
                       and (fd.feature in IMAGE_FEATURES) == (kind == "data_drift")
                       and not self.alerts.is_disabled(kind, fd.feature)]
            if members:
                out.append(self._group_observation(kind, group, members, window))
        mix = self._class_mix_observation(values, ref, window)
        if mix is not None:
            out.append(mix)
        return _against(ref, out)

    def _group_observation(self, kind: str, group: str, members: Sequence[FeatureDrift],
                           window: Window) -> Observation:
        """One alert per group: breach when any feature drifted, clear when all are calm.

        The breach is the calibrated tests' (some feature drifted). The features named are
        those that moved: the drifted ones and, once the group is in breach, those that
        moved decisively (see :func:`_moved`) although their own threshold, capped near 1
        by a strong autocorrelation (brightness), is not crossed yet. They are named by
        how far they moved in the reference's own units (:func:`_ranked_by_effect`), not
        by how far their KS statistic is over its threshold.
        """
        drifted = _ranked_by_effect(_moved(members))
        top = drifted[0] if drifted else max(members, key=lambda f: f.ratio)
        cfg = self.config.drift
        return Observation(
            kind=kind, feature=group, metric="ks", value=float(top.ks),
            threshold=float(top.threshold), breach=bool(drifted),
            clear=not any(fd.above_clear for fd in members),
            severity="critical" if drifted and top.ks > 2 * top.threshold else "warning",
            for_s=cfg.for_s, clear_for_s=cfg.clear_for_s,
            summary=_group_summary(kind, drifted, top),
            expected={fd.feature: {**fd.reference, "threshold": fd.threshold}
                      for fd in drifted or [top]},
            observed={"drifted": [fd.feature for fd in drifted],
                      "features": {fd.feature: {**fd.current, "ks": fd.ks, "psi": fd.psi,
                                                "wasserstein": fd.wasserstein,
                                                "effect": _effect(fd)}
                                   for fd in drifted or [top]}},
            window=window)

    def _class_mix_observation(self, values: npt.NDArray[np.float32], ref: Reference,
                               window: Window) -> Optional[Observation]:
        """Prediction drift in the mix of predicted classes (multi-class models only)."""
        if "pred_class" not in ref.names:
            return None
        col = ref.index("pred_class")
        result = class_mix(ref.sketch[col], values[:, col])
        if result is None:
            return None
        js, ref_frac, cur_frac = result
        limit = self.alerts.threshold_override(CLASS_MIX_FEATURE) or self.config.drift.class_mix_js
        top_ref, top_cur = int(np.argmax(ref_frac)), int(np.argmax(cur_frac))
        return Observation(
            kind="prediction_drift", feature=CLASS_MIX_FEATURE, metric="js_divergence",
            value=js, threshold=limit, breach=js > limit, clear=js < CLEAR_RATIO * limit,
            severity="warning", for_s=self.config.drift.for_s,
            clear_for_s=self.config.drift.clear_for_s,
            summary=(f"prediction drift in class mix: JS divergence {js:.2f} > {limit:.2f} "
                     f"(most frequent class {top_cur} at {cur_frac[top_cur]:.0%}; reference class "
                     f"{top_ref} at {ref_frac[top_ref]:.0%})"),
            expected=_fractions(ref_frac, max_js=limit),
            observed=_fractions(cur_frac, js=js),
            window=window)


def _effect(fd: FeatureDrift) -> float:
    """How far a feature moved in reference robust SDs (normalised Wasserstein); 0 if unknown."""
    w = float(fd.wasserstein)
    return w if math.isfinite(w) else 0.0


def _moved(members: Sequence[FeatureDrift]) -> List[FeatureDrift]:
    """The drifted features, plus (when any drifted) those that moved decisively.

    Decisively: at least ``_DECISIVE`` robust SDs (normalised Wasserstein). A window that
    wanders within the reference's own range stays within about 2, so this names no feature
    that did not move; the alert itself is still raised only by the calibrated tests.
    """
    if not any(fd.drifted for fd in members):
        return []
    return [fd for fd in members if fd.drifted or _effect(fd) >= _DECISIVE]


def _ranked_by_effect(features: Iterable[FeatureDrift]) -> List[FeatureDrift]:
    """Features by how far they moved, largest first; beyond ``_DECISIVE`` all count as equal.

    Past that many robust SDs the distributions no longer overlap and the number says more
    about how steady a feature was in the reference (entropy's SD is a few hundredths of a
    bit) than about the change; such features are named cause first (``_CAUSE_ORDER``).
    """
    def key(fd: FeatureDrift) -> tuple[float, int]:
        name = fd.feature
        if name == "noise" and fd.current.get("mean", 0.0) < fd.reference.get("mean", 0.0):
            name = "entropy"  # less noise is what smoothing (blur) does: a consequence
        order = _CAUSE_ORDER.index(name) if name in _CAUSE_ORDER else len(_CAUSE_ORDER)
        return -min(_effect(fd), _DECISIVE), order

    return sorted(features, key=key)


def _group_summary(kind: str, drifted: Sequence[FeatureDrift], top: FeatureDrift) -> str:
    """``data drift in the camera image: brightness, contrast moved; brightness mean 14.9 vs
    reference 118±2.1 (48 robust SDs; KS distance 1.00 > 0.26, PSI 9.20)``, or ``no data
    drift in the camera image: ...`` once nothing moved (the message an alert resolves with)."""
    rs, cs = top.reference, top.current
    label, where = (("data drift", "the camera image") if kind == "data_drift"
                    else ("prediction drift", "the model's predictions"))
    head = f"{label} in {where}: {_named(drifted)} moved" if drifted else f"no {label} in {where}"
    return (f"{head}; {top.feature} mean {cs['mean']:.3g} vs reference {rs['mean']:.3g}"
            f"±{rs['std']:.2g} ({_effect(top):.3g} robust SDs; KS distance {top.ks:.2f} "
            f"{'>' if top.drifted else 'vs threshold'} {top.threshold:.2f}, PSI {top.psi:.2f})")


def _named(features: Sequence[FeatureDrift], shown: int = _SHOWN) -> str:
    """Feature names for a message: the first ``shown``, then ``+N more``; "none" if empty."""
    names = [fd.feature for fd in features[:shown]]
    if len(features) > shown:
        names.append(f"+{len(features) - shown} more")
    return ", ".join(names) or "none"


def _against(ref: Reference, observations: Sequence[Observation],
             only: Optional[frozenset[str]] = None) -> List[Observation]:
    """Observations made against ``ref`` carry it (``only`` these features, when given)."""
    against = {"kind": ref.kind, "origin": ref.origin, "view": ref.view_kind}
    return [dataclasses.replace(obs, reference=against, summary=(
        f"{obs.summary} [against the {ref.kind} reference: {ref.source}]"))
        if only is None or obs.feature in only else obs for obs in observations]


def _fractions(frac: npt.NDArray[np.float64], **extra: float) -> Mapping[str, Any]:
    return {"class_fractions": [round(float(v), 4) for v in frac], **extra}
