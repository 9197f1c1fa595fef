"""One drift evaluation: the current window against a ``Reference``, feature by feature.

``evaluate`` is pure and fast (16 features x 4096 frames in well under 2 ms): each feature's window
is sorted once; the KS distance uses binary searches against the reference sketch; PSI uses the
reference's precomputed bin edges; the Wasserstein distance is the exact area between the two
quantile functions, vectorised over features. A feature is ``drifted`` when its KS distance is
above its calibrated threshold *and* its normalised Wasserstein distance reaches the reference's
``min_wasserstein`` (a practical effect size). Persistence (P consecutive drifted evaluations,
``Reference.persistence_evals``) and hysteresis (``clear_threshold``) are applied by the caller.

A window shorter than ``Reference.window_frames`` gets a proportionally higher threshold
(x sqrt(window_frames / frames), capped at 0.99), since fewer frames mean a noisier distance.
The autocorrelation-adjusted KS p-value (sample sizes shrunk to their effective sizes) is
computed only for drifted features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from agent.drift.ks import ks_pvalue, ks_statistic_sorted
from agent.drift.psi import psi_sorted
from agent.drift.reference import Reference
from agent.drift.wasserstein import wasserstein_sorted

__all__ = ["DriftReport", "FeatureDrift", "evaluate"]

_THRESHOLD_CAP = 0.99
_QUANTILES = (0.05, 0.5, 0.95)


@dataclass(frozen=True)
class FeatureDrift:
    """Drift measures of one feature in one window (NaN measures when not evaluated)."""

    feature: str
    evaluated: bool
    ks: float
    psi: float
    wasserstein: float
    threshold: float
    clear_threshold: float
    drifted: bool
    above_clear: bool  # ks >= clear_threshold: an active alert stays firing
    frames: int  # non-NaN frames of this feature in the window
    pvalue: float | None
    reference: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # why a feature was not evaluated

    @property
    def ratio(self) -> float:
        """KS distance over threshold (>= 1 means over threshold); 0 when not evaluated."""
        return self.ks / self.threshold if self.evaluated else 0.0


@dataclass(frozen=True)
class DriftReport:
    """Result of one ``evaluate`` call: per-feature measures and the drifted feature names."""

    features: tuple[FeatureDrift, ...]
    frames: int
    drifted: tuple[str, ...]
    score: float  # max over features of ks / threshold

    def get(self, feature: str) -> FeatureDrift:
        """The measures of one feature (KeyError naming the evaluated features)."""
        for fd in self.features:
            if fd.feature == feature:
                return fd
        raise KeyError(f"feature {feature!r} not in report ({', '.join(self.names)})")

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the features in the report, in order."""
        return tuple(fd.feature for fd in self.features)


def _skipped(name: str, reason: str, frames: int, ref: Reference, threshold: float) -> FeatureDrift:
    nan = float("nan")
    return FeatureDrift(name, False, nan, nan, nan, threshold, 0.7 * threshold, False, False,
                        frames, None, ref.summary(name), {}, reason)


def _summaries(cur: np.ndarray) -> list[dict[str, float]]:
    """mean, std, p05, p50, p95 of each row of a sorted (rows, m) array, m >= 1."""
    m = cur.shape[1]
    cols = [cur.mean(axis=1), cur.std(axis=1)]
    for q in _QUANTILES:  # linear interpolation, as numpy.quantile's default
        pos = q * (m - 1)
        lo = int(pos)
        hi = min(lo + 1, m - 1)
        cols.append(cur[:, lo] + (cur[:, hi] - cur[:, lo]) * (pos - lo))
    table = np.stack(cols, axis=1).tolist()
    return [dict(zip(("mean", "std", "p05", "p50", "p95"), row)) for row in table]


def _ks_full(reference: Reference, rows: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """KS distance of each full (NaN-free) sorted window row against its reference sketch.

    One binary search per feature (reference sketch into the window) gives #{c <= r_j}; the
    left counts #{c < r_j} differ only where a window value equals a sketch value, which is
    checked and searched again only for such features. The supremum of |F_ref - F_cur| is then
    max_j of |F_ref(r_j) - F_cur(r_j)| and of the left limits |F_ref(r_j-) - F_cur(r_j-)|.
    """
    n = cur.shape[1]
    sk = reference.sketch
    k = sk.shape[1]
    right = np.empty((rows.shape[0], k), dtype=np.int64)
    left = right
    tied: list[int] = []
    for i, f in enumerate(rows):
        r = np.searchsorted(cur[i], sk[f], side="right")
        right[i] = r
        below = cur[i, np.maximum(r - 1, 0)]
        if np.any((below == sk[f]) & (r > 0)):
            tied.append(i)
    if tied:
        left = right.copy()
        for i in tied:
            left[i] = np.searchsorted(cur[i], sk[rows[i]], side="left")
    at = np.abs(reference._ref_cdf[rows] - right / n).max(axis=1)
    before = np.abs(reference._ref_cdf_left[rows] - left / n).max(axis=1)
    return np.minimum(np.maximum(at, before), 1.0)


def evaluate(
    reference: Reference,
    window: np.ndarray,
    *,
    features: Sequence[str] | None = None,
    thresholds_override: Mapping[str, float] | None = None,
) -> DriftReport:
    """Compare a window (frames x features, the reference's column order) to the reference."""
    win = np.asarray(window)
    if win.dtype != np.float32 and win.dtype != np.float64:
        win = win.astype(np.float64)
    n_features = len(reference.names)
    if win.ndim != 2 or win.shape[1] != n_features:
        raise ValueError(f"evaluate: window shape {win.shape} does not match the reference's "
                         f"{n_features} features (expected (frames, {n_features}))")
    overrides = dict(thresholds_override or {})
    for name in overrides:
        reference.index(name)
    selected = np.array([reference.index(name) for name in features] if features is not None
                        else range(n_features), dtype=np.int64)
    n = win.shape[0]
    block = win if features is None else win[:, selected]
    # Sort in the input dtype (float32 sorts faster), then compare in float64; NaN sorts last.
    cur = np.sort(block.T, axis=1).astype(np.float64)
    has_ref = ~np.isnan(reference.sketch[selected, 0])
    valid = np.full(selected.shape[0], n, dtype=np.int64)
    if n:
        for i in np.flatnonzero(np.isnan(cur[:, -1])):
            valid[i] = n - int(np.isnan(cur[i]).sum())
    full = (valid == n) & has_ref & (n > 0)
    ks = np.full(selected.shape[0], np.nan)
    wass = np.full(selected.shape[0], np.nan)
    current: list[dict[str, float]] = [{} for _ in range(selected.shape[0])]
    rows = np.flatnonzero(full)
    if rows.size:
        feats = selected[rows]
        ks[rows] = _ks_full(reference, feats, cur[rows])
        wass[rows] = wasserstein_sorted(reference.sketch[feats], cur[rows])
        for i, summary in zip(rows, _summaries(cur[rows])):
            current[i] = summary
    for i in np.flatnonzero(~full & has_ref & (valid > 0)):
        f, m = selected[i], int(valid[i])
        part = cur[i, :m]
        ks[i] = ks_statistic_sorted(reference.sketch[f], part, reference._ref_cdf[f])
        wass[i] = wasserstein_sorted(reference.sketch[f], part)
        current[i] = _summaries(part[None, :])[0]

    results = []
    for i, f in enumerate(selected):
        name = reference.names[f]
        thr = float(overrides.get(name, reference.threshold[f]))
        m = int(valid[i])
        if not has_ref[i]:
            results.append(_skipped(name, "no reference data", m, reference, thr))
            continue
        if m == 0:
            results.append(_skipped(name, "no valid values in window", 0, reference, thr))
            continue
        if m < reference.window_frames:
            thr = min(_THRESHOLD_CAP, thr * math.sqrt(reference.window_frames / m))
        d = float(ks[i])
        w = float(wass[i]) / float(reference.scale[f])
        ps = psi_sorted(reference.psi_edges[f], reference.psi_ref[f], cur[i, :m])
        drifted = d > thr and w >= reference.min_wasserstein
        pvalue = None
        if drifted:
            shrink = (1.0 - reference.rho1[f]) / (1.0 + reference.rho1[f])
            pvalue = ks_pvalue(d, max(1.0, m * shrink), max(1.0, reference.frames * shrink))
        results.append(FeatureDrift(name, True, d, ps, w, thr, 0.7 * thr, drifted,
                                    d >= 0.7 * thr, m, pvalue, reference.summary(name),
                                    current[i]))
    score = max((fd.ratio for fd in results), default=0.0)
    return DriftReport(tuple(results), n, tuple(fd.feature for fd in results if fd.drifted),
                       float(score))
