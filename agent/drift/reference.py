"""The drift reference: a compact, fixed-size summary of normal data with calibrated thresholds.

A ``Reference`` keeps, per feature, a quantile sketch (at most ``sketch_size`` evenly spaced order
statistics of the sorted data, so its ECDF is within 1/sketch_size of the full data's), summary
statistics, PSI bins, and a KS threshold calibrated on the reference's own variability.

Calibration (how ``build_reference`` sets each feature's threshold)
-------------------------------------------------------------------
Video frames are strongly autocorrelated, so a textbook KS test that treats a window of 4096
consecutive frames as 4096 independent draws fires almost constantly. The detector instead
compares the KS distance D between the current window (``window_frames`` frames, evaluated every
``eval_stride_frames``) and the reference against a per-feature threshold chosen so that, on
data like the reference, the expected number of false alerts per device per week stays below
``target_false_alarms_per_week`` (default 1):

1. Error budget. An alert needs P consecutive evaluations over threshold (P covers
   ``persistence_s``), and it must fall back below the clear threshold before it can fire again,
   so every false alert uses up at least P exceedances. With E = 604800 * fps / stride
   evaluations per week and F features, keeping the per-evaluation, per-feature exceedance
   probability at alpha = target * P / (F * E) bounds the expected false alerts per week by the
   target (a Bonferroni sum over features, no independence assumed). For 16 features, 30 fps and
   a stride of 1024 frames, alpha is about 7e-6. The matching Kolmogorov quantile is
   c = sqrt(ln(2 / alpha) / 2), the root of 2 exp(-2 c^2) = alpha.
2. Null distribution from the reference itself. Window-sized blocks are slid over the reference
   sequence (stride min(eval stride, window/4), at most 400 blocks) and D(block, reference) is
   computed for each, exactly as the detector will. These null distances carry the data's real
   autocorrelation. Their upper tail, far beyond what a few hundred blocks can show, is
   extrapolated by matching the null distances to a scaled Kolmogorov law (mean 0.8687 s,
   standard deviation 0.2603 s): once from their mean and once from their mean and standard
   deviation, keeping the larger value. Then it is corrected for each block being part of
   the reference it is compared to.
3. An analytic bound from the effective sample size. With the lag-1 autocorrelation rho, a window
   of w frames carries about n_eff = w (1 - rho) / (1 + rho) independent values, giving the
   two-sample critical value c * sqrt((n_eff_w + n_eff_ref) / (n_eff_w * n_eff_ref)).
4. Threshold = the largest of (2), (3), 1.1 x the largest null distance seen, and a practical
   floor ``min_ks`` (0.15), capped at 0.99. On top of that the detector requires a normalised
   Wasserstein distance of at least ``min_wasserstein`` (0.25 robust standard deviations;
   ``TRAINING_MIN_EFFECT`` for a training reference), so a statistically clear but tiny shift
   does not alert. ``clear_threshold`` = 0.7 x threshold gives hysteresis. The result is
   conservative by design: the bounds are maxima, and the error budget counts every
   exceedance although exceedances cluster.
A consequence to state plainly: when rho is high, a short window holds few independent values and
the threshold is high (rho = 0.98 and a 900-frame window give n_eff of about 9 and a threshold near
0.9). Lengthen ``window_frames`` to detect smaller shifts. The per-feature diagnostics (``rho1``,
``n_eff``, ``null_mean``, ``null_max``) are stored so this can be explained.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from agent.drift.ks import ks_grid, ks_statistic_grid
from agent.drift.psi import PSI_FLOOR
from agent.errors import BaselineError

Array = npt.NDArray[Any]

__all__ = ["CLEAR_RATIO", "FORMAT_VERSION", "KINDS", "KS_GRID", "MIN_INDEPENDENT", "ORIGINS",
           "THRESHOLD_CAP", "TRAINING_MIN_EFFECT", "Reference", "build_reference",
           "calibrate_feature", "error_budget", "log_calibration", "sketch"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ORIGINS = ("baseline", "warmup", "history")
KINDS = ("training", "device")
#: The fewest training images a baseline of independent images may have.
MIN_INDEPENDENT = 100
SECONDS_PER_WEEK = 604800.0
_KOLMOGOROV_MEAN = 0.8687311606361592  # sqrt(pi/2) * ln 2
_KOLMOGOROV_STD = 0.2603169550201340
_MAX_NULL_BLOCKS = 400
# What np.load / json raise on a damaged or foreign file.
_DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)
#: The highest KS threshold: a distance of 1 means disjoint samples, so a cap keeps a drift
#: detectable however noisy the feature.
THRESHOLD_CAP = 0.99
#: ``clear_threshold`` = CLEAR_RATIO x threshold: the hysteresis of every drift alert.
CLEAR_RATIO = 0.7
KS_GRID = 512  # reference quantiles at which the detector's KS distance is evaluated
_ARRAYS = ("sketch", "mean", "std", "median", "p05", "p95", "iqr", "mad", "scale", "psi_edges",
           "psi_ref", "threshold", "clear_threshold", "rho1", "n_eff", "null_mean", "null_max")


def sketch(sorted_values: Array, size: int) -> Array:
    """``size`` evenly spaced (mid-rank) order statistics of a sorted, non-empty 1-D array.

    With fewer than ``size`` values, values repeat in proportion, so every feature of a reference
    has a sketch of the same length; with exactly ``size`` values it is the data itself.
    """
    n = sorted_values.shape[0]
    return sorted_values[((np.arange(size) + 0.5) * n / size).astype(np.int64)]


@dataclass(frozen=True, eq=False)
class Reference:
    """Compact per-feature reference (quantile sketch, statistics, calibrated KS thresholds)."""

    names: tuple[str, ...]
    sketch: Array  # (F, K) sorted per row; a row of NaN for a feature with no data
    mean: Array
    std: Array
    median: Array
    p05: Array
    p95: Array
    iqr: Array
    mad: Array
    scale: Array  # Wasserstein normaliser: IQR/1.349, else std, else 1.0
    psi_edges: Array  # (F, bins-1) reference quantiles
    psi_ref: Array  # (F, bins) reference bin fractions, floored at 1e-4
    threshold: Array  # calibrated KS threshold; NaN for a feature with no data
    clear_threshold: Array
    rho1: Array  # lag-1 autocorrelation
    n_eff: Array  # effective independent values per window
    null_mean: Array  # mean KS distance of reference blocks
    null_max: Array
    model_sha256: str
    model_path: str
    created: float
    origin: str
    source: str
    frames: int
    fps: float
    window_frames: int
    eval_stride_frames: int
    persistence_evals: int
    target_false_alarms_per_week: float
    alpha: float
    min_ks: float
    min_wasserstein: float
    class_hist: Array | None = None
    version: int = FORMAT_VERSION
    #: What the statistics were measured on: {"kind": "frame"|"input", "size": [w, h] or None,
    #: "sample": [w, h], "features_version": n}; {} for a reference from before views.
    view: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "device"  # "training" (a baseline file) or "device" (warm-up, history)
    calibrated: bool = True  # False: training images, thresholds come from device frames
    alt: Reference | None = None  # the same data measured in the other view (baseline files)
    # Derived on construction (not stored): the KS grid of sketch points with the sketch ECDF
    # at and just below each point, shape (F, G).
    _grid: Array = field(init=False, repr=False)
    _grid_at: Array = field(init=False, repr=False)
    _grid_below: Array = field(init=False, repr=False)
    # The detector's binary-search queries: the KS grid, then the PSI edges, shape (F, G + E).
    _queries: Array = field(init=False, repr=False)
    _summaries: tuple[dict[str, float], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"Reference: origin must be one of {ORIGINS}, got {self.origin!r}")
        if self.kind not in KINDS:
            raise ValueError(f"Reference: kind must be one of {KINDS}, got {self.kind!r}")
        n_features = len(self.names)
        if self.sketch.ndim != 2 or self.sketch.shape[0] != n_features:
            raise ValueError(
                f"Reference: sketch shape {self.sketch.shape} does not match {n_features} names"
            )
        g = min(KS_GRID, self.sketch.shape[1])
        grids = [np.full((n_features, g), np.nan) for _ in range(3)]
        for f in range(n_features):
            if not np.isnan(self.sketch[f, 0]):
                for out, arr in zip(grids, ks_grid(self.sketch[f], g)):
                    out[f] = arr
        for name, arr in zip(("_grid", "_grid_at", "_grid_below"), grids):
            object.__setattr__(self, name, arr)
        edges = np.asarray(self.psi_edges, dtype=np.float64).reshape(n_features, -1)
        object.__setattr__(self, "_queries", np.concatenate([grids[0], edges], axis=1))
        table = np.stack([self.mean, self.std, self.p05, self.median, self.p95], axis=1)
        object.__setattr__(self, "_summaries", tuple(
            dict(zip(("mean", "std", "p05", "p50", "p95"), row)) for row in table.tolist()))

    def index(self, feature: str) -> int:
        """Column index of a feature name (ValueError naming the known features)."""
        try:
            return self.names.index(feature)
        except ValueError:
            raise ValueError(
                f"unknown feature {feature!r}; the reference has {', '.join(self.names)}"
            ) from None

    def summary(self, feature: str) -> dict[str, float]:
        """Reference mean, std, p05, p50, p95 of one feature (for alert messages)."""
        return dict(self._summaries[self.index(feature)])

    @property
    def view_kind(self) -> str:
        """``frame`` or ``input``; ``unknown`` for a reference that did not record its view."""
        return str(self.view.get("kind", "unknown"))

    def for_view(self, kind: str) -> Reference | None:
        """This reference, or the one it carries, measured in view ``kind``; None if neither."""
        for ref in (self, self.alt):
            if ref is not None and ref.view_kind == kind:
                return ref
        return None

    def identity(self) -> dict[str, Any]:
        """What an alert, status or heartbeat says about the reference it is against."""
        return {"kind": self.kind, "origin": self.origin, "source": self.source,
                "view": self.view_kind, "frames": self.frames}

    def to_bytes(self) -> bytes:
        """Serialise to a compressed .npz blob (arrays plus a JSON metadata entry)."""
        meta = {k: getattr(self, k) for k in (
            "names", "model_sha256", "model_path", "created", "origin", "source", "frames", "fps",
            "window_frames", "eval_stride_frames", "persistence_evals",
            "target_false_alarms_per_week", "alpha", "min_ks", "min_wasserstein", "version",
            "kind", "calibrated")}
        meta["names"] = list(self.names)
        meta["view"] = dict(self.view)
        arrays: dict[str, Any] = {k: getattr(self, k) for k in _ARRAYS}
        if self.class_hist is not None:
            arrays["class_hist"] = self.class_hist
        if self.alt is not None:
            arrays["alt"] = np.frombuffer(self.alt.to_bytes(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(json.dumps(meta)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, expected_sha256: str | None = None,
                   where: str = "<bytes>") -> Reference:
        """Rebuild from ``to_bytes`` output; BaselineError if corrupt, old or for another model."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"][()]))
                arrays: dict[str, Any] = {k: np.array(npz[k]) for k in _ARRAYS}
                class_hist = np.array(npz["class_hist"]) if "class_hist" in npz.files else None
                alt_blob = bytes(np.array(npz["alt"])) if "alt" in npz.files else None
        except _DAMAGED as exc:
            raise BaselineError(
                f"baseline is corrupt: {where} ({type(exc).__name__}: {exc}; rebuild it with "
                f"edgewatch baseline ... --out FILE)"
            ) from exc
        version = meta.get("version")
        if version != FORMAT_VERSION:
            raise BaselineError(
                f"baseline format version {version} is not supported: {where} (this agent reads "
                f"version {FORMAT_VERSION}; rebuild it with edgewatch baseline)"
            )
        sha = str(meta.get("model_sha256", ""))
        if expected_sha256 is not None and sha != expected_sha256:
            raise BaselineError(
                f"baseline was made for model sha256 {sha[:12]}… but the agent runs "
                f"{expected_sha256[:12]}…: {where} (rebuild it with edgewatch baseline)"
            )
        meta["names"] = tuple(meta["names"])
        alt = None if alt_blob is None else cls.from_bytes(alt_blob, expected_sha256, where)
        try:
            return cls(**meta, **arrays, class_hist=class_hist, alt=alt)
        except (TypeError, ValueError) as exc:
            raise BaselineError(
                f"baseline is corrupt: {where} ({exc}; rebuild it with edgewatch baseline)"
            ) from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the reference to ``path`` atomically (temporary file, then rename)."""
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(self.to_bytes())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_sha256: str | None = None) -> Reference:
        """Read a reference saved by ``save``; BaselineError with a one-line fix on any problem."""
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            raise BaselineError(
                f"baseline not found: {os.fspath(path)} (create one with "
                f"edgewatch baseline ... --out FILE)"
            ) from None
        except OSError as exc:
            raise BaselineError(f"baseline cannot be read: {os.fspath(path)} ({exc})") from exc
        return cls.from_bytes(blob, expected_sha256, where=os.fspath(path))


def _lag1(x: Array) -> float:
    d = x - x.mean()
    denom = float(d @ d)
    if x.shape[0] < 3 or denom <= 0:
        return 0.0
    return float(np.clip((d[:-1] @ d[1:]) / denom, 0.0, 0.999))


def _null_distances(x: Array, ref_sketch: Array, window: int, stride: int) -> Array:
    """KS distance of every window-sized block of ``x`` (time order) to the reference sketch."""
    n = x.shape[0]
    stride = max(stride, math.ceil((n - window + 1) / _MAX_NULL_BLOCKS), 1)
    grid = ks_grid(ref_sketch, KS_GRID)
    starts = range(0, n - window + 1, stride)
    return np.array([ks_statistic_grid(*grid, np.sort(x[s:s + window])) for s in starts])


def _threshold(null: Array, rho: float, window: int, n: int, c_alpha: float,
               min_ks: float) -> tuple[float, float]:
    """Calibrated threshold (see the module docstring) and the window's effective size."""
    frac = window / n
    # A block is part of the reference it is compared with: undo the shrinkage (1 - frac) and
    # add the reference's own sampling noise (variance ratio frac).
    correction = math.sqrt(1.0 + frac) / (1.0 - frac)
    mu = float(null.mean()) * correction
    sd = float(null.std()) * correction
    fit_mean = mu * c_alpha / _KOLMOGOROV_MEAN
    fit_spread = mu + (c_alpha - _KOLMOGOROV_MEAN) / _KOLMOGOROV_STD * sd
    shrink = (1.0 - rho) / (1.0 + rho)
    n_eff_w = max(1.0, window * shrink)
    n_eff_r = max(1.0, n * shrink)
    neff_bound = c_alpha * math.sqrt((n_eff_w + n_eff_r) / (n_eff_w * n_eff_r))
    thr = max(fit_mean, fit_spread, neff_bound, 1.1 * float(null.max()), min_ks)
    return min(thr, THRESHOLD_CAP), n_eff_w


def _check_build_args(data: Array, names: Sequence[str], origin: str,
                      **positive: float) -> None:
    if data.ndim != 2 or data.shape[1] != len(names):
        raise ValueError(f"build_reference: values shape {data.shape} does not match "
                         f"{len(names)} feature names (expected (frames, {len(names)}))")
    if origin not in ORIGINS:
        raise ValueError(f"build_reference: origin must be one of {ORIGINS}, got {origin!r}")
    for label, val in positive.items():
        if not val > 0:
            raise ValueError(f"build_reference: {label} must be > 0, got {val}")


def _check_length(n_frames: int, window_frames: int, independent: bool) -> None:
    need = MIN_INDEPENDENT if independent else 2 * window_frames
    if n_frames >= need:
        return
    if independent:
        raise BaselineError(f"baseline too short: {n_frames} images (a training-image baseline "
                            f"needs at least {need})")
    raise BaselineError(f"baseline too short: {n_frames} frames for a {window_frames}-frame "
                        f"window (record at least {need} frames, ideally 20 windows, or "
                        "shorten window_frames)")


def error_budget(fps: float, eval_stride_frames: int, persistence_s: float, features: int,
                 target_false_alarms_per_week: float) -> tuple[int, float, float]:
    """Persistence in evaluations, per-evaluation alpha and its Kolmogorov quantile (step 1)."""
    # The alert manager fires once a breach has lasted persistence_s: at the evaluations
    # 0, 1, ..., floor(persistence_s / stride) after the first one, all over threshold.
    persistence_evals = 1 + math.floor(persistence_s * fps / eval_stride_frames + 1e-9)
    evals_per_week = SECONDS_PER_WEEK * fps / eval_stride_frames
    alpha = min(0.5, target_false_alarms_per_week * persistence_evals
                / (max(features, 1) * evals_per_week))
    return persistence_evals, alpha, math.sqrt(math.log(2.0 / alpha) / 2.0)


#: The smallest shift, in the training distribution's robust SDs, a training reference alerts
#: on. Its images are independent and their codec is not the camera's: JPEG training images
#: (or an MJPG video) of the very same scene differ from live frames by up to about 2 robust
#: SDs in saturation (chroma subsampling). A real change (night, fog, blur) moves its
#: features far more.
TRAINING_MIN_EFFECT = 2.5

_STAT_NAMES = ("mean", "std", "median", "p05", "p95", "iqr", "mad", "scale", "threshold", "rho1",
               "n_eff", "null_mean", "null_max")


def _summarise_feature(xs: Array, f: int, out: dict[str, Any], edges: Array,
                       fractions: Array, psi_bins: int) -> None:
    """Summary statistics and PSI bins of one feature's sorted values, written into ``out``."""
    q05, q25, q50, q75, q95 = np.quantile(xs, [0.05, 0.25, 0.5, 0.75, 0.95])
    out["mean"][f], out["std"][f] = xs.mean(), xs.std()
    out["median"][f], out["p05"][f], out["p95"][f], out["iqr"][f] = q50, q05, q95, q75 - q25
    out["mad"][f] = float(np.median(np.abs(xs - q50)))
    scale = (q75 - q25) / 1.349
    scale = scale if scale > 0 else out["std"][f]
    out["scale"][f] = scale if scale > 0 else 1.0
    edges[f] = np.quantile(xs, np.arange(1, psi_bins) / psi_bins)
    below = np.searchsorted(xs, edges[f], side="left")
    counts = np.diff(np.concatenate(([0], below, [xs.shape[0]])))
    fractions[f] = np.maximum(counts / xs.shape[0], PSI_FLOOR)


def calibrate_feature(x: Array, ref_sketch: Array, window_frames: int, null_stride: int,
                      c_alpha: float, min_ks: float, extra_n: float = 0.0
                      ) -> tuple[float, float, float, float, float]:
    """Threshold, rho1, n_eff, null mean and null max of one feature's time series ``x``.

    ``extra_n`` > 0 is the size of an independent reference sample (training images) the
    window will be compared with instead of ``x`` itself: its own sampling noise is added.
    """
    window = min(window_frames, x.shape[0] // 2)
    null = _null_distances(x, ref_sketch, window, null_stride)
    rho = _lag1(x)
    thr, n_eff = _threshold(null, rho, window, x.shape[0], c_alpha, min_ks)
    if extra_n > 0:
        thr = min(THRESHOLD_CAP, math.hypot(thr, c_alpha * math.sqrt(1.0 / extra_n)))
    return thr, rho, n_eff, float(null.mean()), float(null.max())


def log_calibration(names: Sequence[str], threshold: Array, rho1: Array, n_eff: Array,
                    what: str) -> None:
    """One INFO line: features calibrated, those that can only see large shifts and why."""
    coarse = [f"{n} ({t:.2f}: lag-1 autocorrelation {r:.3f}, ~{e:.0f} independent values per "
              f"window)" for n, t, r, e in zip(names, threshold.tolist(), rho1.tolist(),
                                                n_eff.tolist()) if t > 0.8]
    off = [n for n, t in zip(names, threshold.tolist()) if not t == t]
    calibrated = len(names) - len(off)
    line = f"{what}: drift thresholds calibrated for {calibrated} features"
    if coarse:
        line += (f"; {len(coarse)} see only large shifts (threshold > 0.8; lengthen "
                 f"[drift] window_frames to see smaller ones): "
                 + ", ".join(c.split(" (")[0] for c in coarse))
    if off:
        line += f"; no data for {', '.join(off)} (not checked)"
    log.info("%s", line)
    for c in coarse:
        log.debug("%s: high threshold %s", what, c)


def _per_feature(data: Array, k: int, psi_bins: int,
                 calibrate: Callable[[Array, Array], tuple[float, ...]] | None
                 ) -> tuple[dict[str, Any], Array, Array, Array]:
    """Statistics, sketches, PSI edges and fractions (and thresholds) of every feature."""
    n_features = data.shape[1]
    out: dict[str, Any] = {name: np.full(n_features, np.nan) for name in _STAT_NAMES}
    sketches = np.full((n_features, k), np.nan)
    edges = np.full((n_features, psi_bins - 1), np.nan)
    fractions = np.full((n_features, psi_bins), np.nan)
    for f in range(n_features):
        col = data[:, f]
        x = col[~np.isnan(col)]
        if x.shape[0] == 0:
            continue  # not checked; the summary line names it
        xs = np.sort(x)
        sketches[f] = sketch(xs, k)
        _summarise_feature(xs, f, out, edges, fractions, psi_bins)
        if calibrate is not None:
            (out["threshold"][f], out["rho1"][f], out["n_eff"][f], out["null_mean"][f],
             out["null_max"][f]) = calibrate(x, sketches[f])
    return out, sketches, edges, fractions


def build_reference(
    values: Array,
    names: Sequence[str],
    *,
    window_frames: int,
    eval_stride_frames: int,
    fps: float,
    model_sha256: str,
    model_path: str,
    origin: str,
    source: str,
    created: float,
    class_hist: Array | None = None,
    target_false_alarms_per_week: float = 1.0,
    persistence_s: float = 60.0,
    min_ks: float = 0.15,
    min_wasserstein: float = 0.25,
    sketch_size: int = 2048,
    psi_bins: int = 10,
    view: Mapping[str, Any] | None = None,
    kind: str = "device",
    independent: bool = False,
) -> Reference:
    """Summarise ``values`` (frames x features, time order) and calibrate drift thresholds.

    ``independent`` values (training images, no time order): thresholds are left to
    :func:`agent.drift.calibrate.calibrate` on the device's frames (``calibrated`` False).
    """
    data = np.asarray(values, dtype=np.float64)
    _check_build_args(data, names, origin, window_frames=window_frames,
                      eval_stride_frames=eval_stride_frames, fps=fps,
                      target_false_alarms_per_week=target_false_alarms_per_week,
                      sketch_size=sketch_size)
    n_frames = data.shape[0]
    _check_length(n_frames, window_frames, independent)
    if kind == "training":
        min_wasserstein = max(min_wasserstein, TRAINING_MIN_EFFECT)
    persistence_evals, alpha, c_alpha = error_budget(
        fps, eval_stride_frames, persistence_s, int((~np.isnan(data).all(axis=0)).sum()),
        target_false_alarms_per_week)
    null_stride = max(1, min(eval_stride_frames, window_frames // 4))  # then the features:
    out, sketches, edges, fractions = _per_feature(
        data, min(sketch_size, n_frames), psi_bins, None if independent else
        lambda x, sk: calibrate_feature(x, sk, window_frames, null_stride, c_alpha, min_ks))
    if not independent:
        log_calibration(names, out["threshold"], out["rho1"], out["n_eff"],
                        f"reference from {source}")
    return Reference(
        names=tuple(names), sketch=sketches, psi_edges=edges, psi_ref=fractions,
        clear_threshold=CLEAR_RATIO * out["threshold"], **out,
        model_sha256=model_sha256, model_path=model_path, created=float(created), origin=origin,
        source=source, frames=int(n_frames), fps=float(fps), window_frames=int(window_frames),
        eval_stride_frames=int(eval_stride_frames), persistence_evals=persistence_evals,
        target_false_alarms_per_week=float(target_false_alarms_per_week), alpha=alpha,
        min_ks=float(min_ks), min_wasserstein=float(min_wasserstein),
        class_hist=None if class_hist is None else np.asarray(class_hist, dtype=np.float64),
        view=dict(view or {}), kind=kind, calibrated=not independent,
    )
