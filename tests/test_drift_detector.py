"""The window evaluator: golden false-alarm and detection tests on seeded AR(1) streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import ar1
from scipy import stats

from agent.drift import build_reference, evaluate
from agent.drift.reference import Reference

FEATURES = 16
FRAMES = 108_000  # one hour at 30 fps
WINDOW = 4096
STRIDE = 1024
NAMES = [f"f{i}" for i in range(FEATURES)]


def max_streaks(ref: Reference, stream: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Longest run of consecutive drifted evaluations per feature, and every drifted vector."""
    streak = np.zeros(FEATURES, dtype=int)
    longest = np.zeros(FEATURES, dtype=int)
    flags = []
    for start in range(0, stream.shape[0] - WINDOW + 1, STRIDE):
        report = evaluate(ref, stream[start:start + WINDOW])
        drifted = np.array([fd.drifted for fd in report.features])
        flags.append(drifted)
        streak = np.where(drifted, streak + 1, 0)
        longest = np.maximum(longest, streak)
    return longest, flags


@pytest.fixture(scope="module")
def ref() -> Reference:
    return build_reference(ar1(4, FRAMES, FEATURES), NAMES, window_frames=WINDOW,
                           eval_stride_frames=STRIDE,
                           fps=30.0, model_sha256="0" * 64, model_path="m.tflite",
                           origin="baseline", source="AR(1) seed 4", created=0.0)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_stationary_stream_never_alerts(ref, seed):
    longest, flags = max_streaks(ref, ar1(seed, FRAMES, FEATURES))
    assert len(flags) == (FRAMES - WINDOW) // STRIDE + 1
    assert longest.max() < ref.persistence_evals  # no P consecutive exceedances: no alert
    assert longest.max() == 0  # and, with this margin, not a single exceedance


def test_mean_shift_is_flagged_within_one_window(ref):
    onset = FRAMES // 2
    stream = ar1(21, FRAMES, FEATURES)
    stream[onset:] += 1.5  # 1.5 marginal standard deviations
    _, flags = max_streaks(ref, stream)
    starts = np.arange(len(flags)) * STRIDE
    flags_arr = np.array(flags)
    before = starts + WINDOW <= onset
    after = starts >= onset
    assert not flags_arr[before].any()
    assert flags_arr[after].mean() >= 0.95
    # Each feature raises an alert (P consecutive drifted evaluations) no later than one window
    # plus P strides after the onset.
    p = ref.persistence_evals
    deadline = onset + WINDOW + p * STRIDE
    for f in range(FEATURES):
        run = 0
        for i, drifted in enumerate(flags_arr[:, f]):
            run = run + 1 if drifted else 0
            if run >= p:
                assert starts[i] + WINDOW <= deadline, f
                break
        else:
            pytest.fail(f"feature {f} never alerted")


def test_report_contents(ref):
    window = ar1(30, WINDOW, FEATURES)
    window[:, 3] += 3.0
    report = evaluate(ref, window)
    assert report.drifted == ("f3",)
    fd = report.get("f3")
    assert fd.evaluated and fd.drifted and fd.above_clear
    assert fd.ks > fd.threshold and fd.psi > 1.0 and fd.wasserstein > 2.0
    assert fd.pvalue is not None and 0.0 <= fd.pvalue < 1e-3
    assert report.get("f0").pvalue is None
    assert report.score == pytest.approx(fd.ks / fd.threshold)
    assert fd.current["mean"] == pytest.approx(float(window[:, 3].mean()), rel=1e-5)
    assert fd.current["p50"] == pytest.approx(float(np.median(window[:, 3])), rel=1e-5)
    assert fd.reference == ref.summary("f3")
    # The KS distance is taken on a 512-point grid of the reference sketch: within 1/256 of the
    # full two-sample statistic against the sketch.
    full = stats.ks_2samp(ref.sketch[3], window[:, 3]).statistic
    assert full - 1 / 256 <= fd.ks <= full + 1e-12
    assert fd.wasserstein * ref.scale[3] == pytest.approx(
        stats.wasserstein_distance(ref.sketch[3], window[:, 3]), rel=1e-9)


def test_features_subset_and_override(ref):
    window = ar1(31, WINDOW, FEATURES)
    window[:, 5] += 0.8  # a real but moderate shift: under the calibrated threshold
    plain = evaluate(ref, window, features=["f5", "f2"])
    assert plain.names == ("f5", "f2") and plain.drifted == ()
    assert plain.get("f5").wasserstein >= ref.min_wasserstein
    lowered = evaluate(ref, window, features=["f5", "f2"], thresholds_override={"f5": 0.1})
    assert lowered.get("f5").threshold == 0.1
    assert lowered.get("f5").clear_threshold == pytest.approx(0.07)
    assert lowered.drifted == ("f5",)
    with pytest.raises(ValueError, match="unknown feature 'zz'"):
        evaluate(ref, window, features=["zz"])
    with pytest.raises(ValueError, match=r"window shape \(10, 3\) does not match"):
        evaluate(ref, np.zeros((10, 3)))


def test_effect_size_gate_blocks_tiny_shifts():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(200_000, 1))
    ref = build_reference(iid, ["x"], window_frames=WINDOW, eval_stride_frames=STRIDE, fps=30.0,
                          model_sha256="0" * 64, model_path="m", origin="history", source="iid",
                          created=0.0, min_ks=0.0)
    window = rng.normal(loc=0.2, size=(WINDOW, 1))
    fd = evaluate(ref, window).get("x")
    assert fd.ks > fd.threshold  # statistically clear ...
    assert fd.wasserstein < ref.min_wasserstein and not fd.drifted  # ... but too small


def test_nan_constant_empty_and_short_windows(ref):
    window = ar1(32, WINDOW, FEATURES)
    window[:, 0] = np.nan
    window[::2, 1] = np.nan
    window[:, 2] = 0.0
    report = evaluate(ref, window)
    f0, f1, f2 = report.get("f0"), report.get("f1"), report.get("f2")
    assert not f0.evaluated and f0.reason == "no valid values in window" and f0.frames == 0
    assert math.isnan(f0.ks) and not f0.drifted and f0.ratio == 0.0
    assert f1.evaluated and f1.frames == WINDOW // 2
    assert f1.threshold == pytest.approx(min(0.99, ref.threshold[1] * math.sqrt(2)))
    assert f2.evaluated and 0.0 < f2.ks < 1.0 and math.isfinite(f2.psi)
    far = evaluate(ref, np.full((WINDOW, FEATURES), 50.0, dtype=np.float32))
    assert all(fd.ks == 1.0 and fd.drifted for fd in far.features)
    empty = evaluate(ref, np.zeros((0, FEATURES), dtype=np.float32))
    assert empty.frames == 0 and empty.drifted == () and empty.score == 0.0
    assert all(not fd.evaluated for fd in empty.features)


def test_float32_window_matches_float64_window(ref):
    # float32 windows (the ring buffer) are sorted by a radix sort, float64 ones by np.sort:
    # both must give the same report, including NaN with the sign bit set (x86's default NaN,
    # e.g. from inf - inf), signed zeros and values equal to KS grid points.
    window = ar1(33, WINDOW, FEATURES)
    window[:, 0] += 2.0
    window[:100, 1] = np.array([0xFFC00000], dtype=np.uint32).view(np.float32)[0]
    assert np.signbit(window[0, 1]) and np.isnan(window[0, 1])
    window[100:200, 1] = np.nan
    window[:50, 2], window[50:100, 2] = -0.0, 0.0
    window[:256, 5] = ref._grid[5, ::2].astype(np.float32)  # exact grid points: ties
    window[:, 6] = np.round(window[:, 6] * 2) / 2  # many ties
    fast = evaluate(ref, window)
    slow = evaluate(ref, window.astype(np.float64))
    assert fast.drifted == slow.drifted and "f0" in fast.drifted
    for a, b in zip(fast.features, slow.features):
        assert (a.ks, a.frames, a.drifted, a.threshold) == (b.ks, b.frames, b.drifted, b.threshold)
        assert a.psi == pytest.approx(b.psi, rel=1e-12)
        assert a.wasserstein == pytest.approx(b.wasserstein, rel=1e-12)
        assert a.current == pytest.approx(b.current, rel=1e-12)
    assert fast.get("f1").frames == WINDOW - 200
    f1 = window[200:, 1]
    full = stats.ks_2samp(ref.sketch[1], f1).statistic
    assert full - 1 / 256 <= fast.get("f1").ks <= full + 1e-12


def test_reference_feature_without_data():
    data = np.column_stack([np.full(20000, np.nan), ar1(1, 20000, 1)[:, 0]])
    ref = build_reference(data, ["dead", "ok"], window_frames=1024, eval_stride_frames=256,
                          fps=30.0, model_sha256="0" * 64, model_path="m", origin="warmup",
                          source="t", created=0.0)
    report = evaluate(ref, ar1(2, 1024, 2))
    assert report.get("dead").reason == "no reference data"
    assert report.get("ok").evaluated


def test_the_references_clear_threshold_sets_the_hysteresis(ref):
    """``Reference.clear_threshold`` is read: its ratio to the threshold is kept as is."""
    import dataclasses

    from agent.drift.reference import CLEAR_RATIO

    assert np.allclose(ref.clear_threshold, CLEAR_RATIO * ref.threshold)
    wide = dataclasses.replace(ref, clear_threshold=0.5 * ref.threshold)
    window = ar1(31, WINDOW, FEATURES)
    fd = evaluate(wide, window, features=["f3"]).get("f3")
    assert fd.clear_threshold == pytest.approx(0.5 * fd.threshold)
    assert fd.above_clear == (fd.ks >= 0.5 * fd.threshold)
    overridden = evaluate(wide, window, features=["f3"], thresholds_override={"f3": 0.2})
    assert overridden.get("f3").clear_threshold == pytest.approx(0.1)
