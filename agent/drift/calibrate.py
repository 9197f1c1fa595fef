"""Thresholds for a training reference, calibrated on the device's own frames.

A folder of training images is a sample of the distribution the model was trained on, but it
has no time order: the camera's autocorrelation and normal variation, which set how far a window
of live frames strays from the reference by chance (see :mod:`agent.drift.reference`), cannot be
learned from it. So a training reference keeps its distribution (sketch, statistics, PSI bins)
and takes its thresholds from a calibration period of the device's frames:

- the null distances are those of windows of the device's frames against the device's own
  sketch (the camera's variability, with its autocorrelation), extrapolated exactly as for a
  time-series reference;
- the training sample's own sampling noise is added (``c_alpha / sqrt(images)``, in quadrature);
- the location is never taken from the device: live windows are compared with the *training*
  distribution. If the scene already differs from the training data at deployment, the first
  drift test after calibration says so (a ``data_drift`` alert against the training reference),
  rather than calibration absorbing the difference;
- a feature must move at least ``TRAINING_MIN_EFFECT`` robust SDs (normalised Wasserstein
  distance) to count as drifted: training images are independent and encoded unlike the
  camera's frames (JPEG), which alone moves saturation by up to about 2 robust SDs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.drift.reference import (
    CLEAR_RATIO,
    TRAINING_MIN_EFFECT,
    Reference,
    calibrate_feature,
    error_budget,
    log_calibration,
    sketch,
)
from agent.errors import BaselineError

__all__ = ["calibrate"]

Array = npt.NDArray[Any]


def calibrate(training: Reference, values: Array, *, fps: float, window_frames: int,
              eval_stride_frames: int, persistence_s: float,
              target_false_alarms_per_week: float) -> Reference:
    """``training`` with thresholds calibrated on ``values`` (device frames x its features)."""
    data = np.asarray(values, dtype=np.float64)
    n_frames, n_features = data.shape
    if n_features != len(training.names):
        raise ValueError(f"calibrate: values have {n_features} columns, the reference "
                         f"{len(training.names)} features")
    if n_frames < 2 * window_frames:
        raise BaselineError(f"calibration collected only {n_frames} frames; need "
                            f"{2 * window_frames} (2 x drift.window_frames): raise "
                            "[drift] calibration_s or lower [drift] window_frames")
    valid = ~np.isnan(data).all(axis=0) & ~np.isnan(training.sketch[:, 0])
    persistence_evals, alpha, c_alpha = error_budget(
        fps, eval_stride_frames, persistence_s, int(valid.sum()), target_false_alarms_per_week)
    null_stride = max(1, min(eval_stride_frames, window_frames // 4))
    cols = {k: np.full(n_features, np.nan) for k in ("threshold", "rho1", "n_eff", "null_mean",
                                                     "null_max")}
    for f in np.flatnonzero(valid).tolist():
        x = data[:, f][~np.isnan(data[:, f])]
        own = sketch(np.sort(x), min(training.sketch.shape[1], x.shape[0]))
        (cols["threshold"][f], cols["rho1"][f], cols["n_eff"][f], cols["null_mean"][f],
         cols["null_max"][f]) = calibrate_feature(x, own, window_frames, null_stride, c_alpha,
                                                  training.min_ks, extra_n=training.frames)
    log_calibration(training.names, cols["threshold"], cols["rho1"], cols["n_eff"],
                    f"training reference calibrated on {n_frames} device frames")
    return dataclasses.replace(
        training, threshold=cols["threshold"], rho1=cols["rho1"], n_eff=cols["n_eff"],
        null_mean=cols["null_mean"], null_max=cols["null_max"],
        clear_threshold=CLEAR_RATIO * cols["threshold"], calibrated=True,
        fps=float(fps), window_frames=int(window_frames),
        eval_stride_frames=int(eval_stride_frames), persistence_evals=persistence_evals,
        alpha=alpha, target_false_alarms_per_week=float(target_false_alarms_per_week),
        min_wasserstein=max(training.min_wasserstein, TRAINING_MIN_EFFECT))
