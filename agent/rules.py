"""Rule-based camera-fault, performance and anomaly checks over the recent frames.

Pure functions: they take the last few seconds of the ring buffer (timestamps and the
feature matrix) and return :class:`~agent.records.Observation` values (one per rule
that has its data, breach or not); the alert
manager applies each rule's ``for`` duration. Rules need no reference except where
they compare with it (blur, latency, outliers), and then skip quietly without one.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import numpy.typing as npt

from .config import RulesConfig
from .records import Observation, Window

SummaryFn = Callable[[str], Optional[Dict[str, float]]]
Values = npt.NDArray[np.floating[Any]]

#: The features the rules report on (what ``alerts disable``/``snooze`` may name).
RULE_FEATURES: tuple[str, ...] = ("black_frames", "saturated_frames", "frozen_frames", "blur",
                                  "stalled", "fps", "latency_ms", "outlier_frames")

_FLAT_CONTRAST = 2.0  # luma std below which a frame has no detail to call blurred
# Features whose robust z-scores count as per-frame outliers (image statistics only).
OUTLIER_FEATURES = ("brightness", "contrast", "sharpness", "saturation", "colorfulness",
                    "entropy", "noise", "edge_density", "mean_b", "mean_g", "mean_r")


def _window(ts: npt.NDArray[np.float64]) -> Window:
    return Window(float(ts[0]), float(ts[-1]), int(ts.size))


def _col(names: Sequence[str], values: Values, name: str) -> Optional[Values]:
    if name not in names:
        return None
    col = values[:, list(names).index(name)]
    col = col[np.isfinite(col)]
    return col if col.size else None


def check_frames(
    names: Sequence[str],
    ts: npt.NDArray[np.float64],
    values: Values,
    cfg: RulesConfig,
    *,
    reference: Optional[SummaryFn] = None,
    expected_fps: Optional[float] = None,
) -> List[Observation]:
    """Camera-fault, performance and outlier observations for one recent window.

    One observation per rule that has the data it needs, breach or not.
    """
    if ts.size < 2:
        return []
    win = _window(ts)

    def col(name: str) -> Optional[Values]:
        return _col(names, values, name)

    ref = reference or _no_reference
    found = [
        _black(col("brightness"), cfg, win),
        _saturated(col("overexposed"), cfg, win),
        _frozen(col("diff"), cfg, win),
        _blur(col("sharpness"), col("contrast"), ref("sharpness"), ref("contrast"), cfg, win),
        _fps(ts, expected_fps, cfg, win),
        _latency(col("latency_ms"), ref("latency_ms"), cfg, win),
    ]
    out = [o for o in found if o is not None]
    if reference is not None:
        out.extend(_outliers(names, values, cfg, reference, win))
    return out


def _no_reference(name: str) -> Optional[Dict[str, float]]:
    return None


def _black(brightness: Optional[Values], cfg: RulesConfig, win: Window) -> Optional[Observation]:
    if brightness is None:
        return None
    dark = float(np.mean(brightness < cfg.black_brightness))
    med = float(np.median(brightness))
    return Observation(
        kind="camera_fault", feature="black_frames", metric="dark_fraction",
        value=dark, threshold=0.9, breach=dark >= 0.9, clear=dark < 0.5,
        severity="critical", for_s=cfg.black_for_s, clear_for_s=cfg.black_for_s,
        summary=(f"black frames: {dark:.0%} of frames darker than {cfg.black_brightness:g} "
                 f"(median brightness {med:.1f}; expected under 90%)"),
        expected={"max_dark_fraction": 0.9, "black_brightness": cfg.black_brightness},
        observed={"dark_fraction": dark, "brightness_p50": med}, window=win)


def _saturated(over: Optional[Values], cfg: RulesConfig, win: Window) -> Optional[Observation]:
    if over is None:
        return None
    med = float(np.median(over))
    return Observation(
        kind="camera_fault", feature="saturated_frames", metric="overexposed_p50",
        value=med, threshold=cfg.saturated_fraction, breach=med >= cfg.saturated_fraction,
        clear=med < cfg.saturated_fraction * 0.5, severity="critical",
        for_s=cfg.saturated_for_s, clear_for_s=cfg.saturated_for_s,
        summary=(f"saturated frames: median {med:.0%} of pixels overexposed "
                 f"(expected under {cfg.saturated_fraction:.0%})"),
        expected={"max_overexposed": cfg.saturated_fraction},
        observed={"overexposed_p50": med}, window=win)


def _frozen(diff: Optional[Values], cfg: RulesConfig, win: Window) -> Optional[Observation]:
    if diff is None or diff.size < 2:
        return None
    top = float(np.max(diff[1:]))
    return Observation(
        kind="camera_fault", feature="frozen_frames", metric="max_diff",
        value=top, threshold=cfg.frozen_diff, breach=top < cfg.frozen_diff,
        clear=top >= cfg.frozen_diff * 2, severity="critical",
        for_s=cfg.frozen_for_s, clear_for_s=cfg.frozen_for_s,
        summary=(f"frozen camera: largest frame-to-frame change {top:.3f} over "
                 f"{win.frames} frames (expected above {cfg.frozen_diff:g})"),
        expected={"min_diff": cfg.frozen_diff}, observed={"max_diff": top}, window=win)


def _blur(sharp: Optional[Values], con: Optional[Values], ref: Optional[Dict[str, float]],
          ref_con: Optional[Dict[str, float]], cfg: RulesConfig,
          win: Window) -> Optional[Observation]:
    """Sharpness relative to contrast, as a fraction of the reference's.

    The Laplacian's variance scales with the square of the contrast, so a dimmer, hazier or
    lower-gain scene loses sharpness without any blur. Divided by contrast squared it is
    the share of the image's energy at fine scales, which only defocus (or a smeared lens)
    takes away; dusk, fog and night leave it unchanged or raise it (sensor noise).
    """
    if sharp is None or con is None or not ref or not ref_con:
        return None
    ref_sharp, ref_c = float(ref.get("p50", 0.0)), float(ref_con.get("p50", 0.0))
    c50 = float(np.median(con))
    if ref_sharp <= 0 or ref_c < _FLAT_CONTRAST or c50 < _FLAT_CONTRAST:
        return None  # a flat (black, covered) frame has no detail to judge: black_frames does
    p50 = float(np.median(sharp))
    ratio = (p50 / (c50 * c50)) / (ref_sharp / (ref_c * ref_c))
    return Observation(
        kind="camera_fault", feature="blur", metric="sharpness_ratio",
        value=ratio, threshold=cfg.blur_ratio, breach=ratio < cfg.blur_ratio,
        clear=ratio > min(1.0, cfg.blur_ratio * 2), severity="warning",
        for_s=cfg.blur_for_s, clear_for_s=cfg.blur_for_s,
        summary=(f"blurred image: sharpness relative to contrast is {ratio:.0%} of the "
                 f"reference's (sharpness {p50:.1f} at contrast {c50:.1f}; reference "
                 f"{ref_sharp:.1f} at {ref_c:.1f}; expected above {cfg.blur_ratio:.0%})"),
        expected={"sharpness_p50": ref_sharp, "contrast_p50": ref_c,
                  "min_ratio": cfg.blur_ratio},
        observed={"sharpness_p50": p50, "contrast_p50": c50, "ratio": ratio}, window=win)


def _fps(ts: npt.NDArray[np.float64], expected_fps: Optional[float], cfg: RulesConfig,
         win: Window) -> Optional[Observation]:
    span = float(ts[-1] - ts[0])
    if not expected_fps or span <= 0:
        return None
    fps = (ts.size - 1) / span
    floor = cfg.min_fps_ratio * expected_fps
    return Observation(
        kind="performance", feature="fps", metric="fps", value=fps, threshold=floor,
        breach=fps < floor, clear=fps >= floor * 1.1, severity="warning",
        for_s=cfg.fps_for_s, clear_for_s=cfg.fps_for_s,
        summary=f"frame rate degraded: {fps:.1f} fps (expected at least {floor:.1f} fps)",
        expected={"fps": expected_fps, "min_fps": floor}, observed={"fps": fps}, window=win)


def _latency(lat: Optional[Values], ref: Optional[Dict[str, float]], cfg: RulesConfig,
             win: Window) -> Optional[Observation]:
    if lat is None or not ref or ref.get("p50", 0) <= 0:
        return None
    # The median, not a tail quantile: on a shared CPU the tail jumps with every
    # neighbour's burst, while a tripled median means inference really is slower.
    p50 = float(np.median(lat))
    limit = cfg.latency_ratio * float(ref["p50"])
    return Observation(
        kind="performance", feature="latency_ms", metric="latency_p50",
        value=p50, threshold=limit, breach=p50 > limit, clear=p50 <= limit / 1.2,
        severity="warning", for_s=cfg.latency_for_s, clear_for_s=cfg.latency_for_s,
        summary=(f"inference latency degraded: median {p50:.1f} ms (reference median "
                 f"{ref['p50']:.1f} ms, limit {limit:.1f} ms)"),
        expected={"latency_p50_ms": ref["p50"], "limit_ms": limit},
        observed={"latency_p50_ms": p50, "latency_p95_ms": float(np.percentile(lat, 95))},
        window=win)


def _outliers(names: Sequence[str], values: Values, cfg: RulesConfig,
              reference: SummaryFn, win: Window) -> List[Observation]:
    cols, centre, scale = [], [], []
    for name in OUTLIER_FEATURES:
        ref = reference(name) if name in names else None
        if not ref or not ref.get("mad") or ref["mad"] <= 0:
            continue
        cols.append(list(names).index(name))
        centre.append(ref["p50"])
        scale.append(1.4826 * ref["mad"])
    if not cols:
        return []
    z = np.abs(values[:, cols] - np.asarray(centre)) / np.asarray(scale)
    z = np.nan_to_num(z, nan=0.0)
    frame_out = np.any(z > cfg.outlier_z, axis=1)
    rate = float(np.mean(frame_out))
    worst = [names[c] for c in np.asarray(cols)[np.argsort(-np.mean(z > cfg.outlier_z, axis=0))[:3]]]
    return [Observation(
        kind="anomaly", feature="outlier_frames", metric="outlier_rate", value=rate,
        threshold=cfg.outlier_rate, breach=rate >= cfg.outlier_rate,
        clear=rate < cfg.outlier_rate / 2, severity="warning",
        for_s=cfg.outlier_for_s, clear_for_s=cfg.outlier_for_s,
        summary=(f"anomalous frames: {rate:.0%} of frames have a robust z-score over "
                 f"{cfg.outlier_z:g} (mostly {', '.join(worst)}; expected under "
                 f"{cfg.outlier_rate:.0%})"),
        expected={"max_rate": cfg.outlier_rate, "z": cfg.outlier_z},
        observed={"rate": rate, "features": worst}, window=win)]


def check_stall(last_frame_ts: Optional[float], started: float, now: float,
                cfg: RulesConfig) -> Observation:
    """The source has delivered no frame for ``stall_s`` seconds."""
    since = last_frame_ts if last_frame_ts is not None else started
    age = max(0.0, now - since)
    return Observation(
        kind="camera_fault", feature="stalled", metric="frame_age_s", value=age,
        threshold=cfg.stall_s, breach=age > cfg.stall_s, clear=age <= cfg.stall_s,
        severity="critical", for_s=0.0, clear_for_s=0.0,
        summary=f"no frames: the last frame arrived {age:.0f} s ago (expected within {cfg.stall_s:g} s)",
        expected={"max_frame_age_s": cfg.stall_s}, observed={"frame_age_s": age},
        window=Window(since, now, 0))
