"""ImageStats: agrees with the reference functions, reacts to blur/noise/exposure, fixed cost."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import stats
from agent.stats import IMAGE_FEATURES, STAT_SPECS, ImageStats, naive_stats
from agent.testdata import photo_path

IDX = {n: i for i, n in enumerate(IMAGE_FEATURES)}
# Independent per-channel noise of sigma 10 gives luma noise of 10 * |BT.601 weights|.
LUMA_SIGMA_10 = 10.0 * math.sqrt(0.114**2 + 0.587**2 + 0.299**2)


def _photo(name: str = "astronaut.png", size: tuple[int, int] = (640, 480)) -> np.ndarray:
    img = cv2.imread(str(photo_path(name)), cv2.IMREAD_COLOR)
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _compute(frame: np.ndarray, s: ImageStats | None = None) -> dict[str, float]:
    s = s or ImageStats()
    out = np.full(len(IMAGE_FEATURES), -1.0, np.float32)
    s.compute(frame, out)
    return {n: float(v) for n, v in zip(IMAGE_FEATURES, out)}


def test_feature_names_are_unique_and_documented() -> None:
    assert len(set(IMAGE_FEATURES)) == len(IMAGE_FEATURES)
    assert tuple(spec[0] for spec in STAT_SPECS) == IMAGE_FEATURES


def test_uniform_colour_frame() -> None:
    frame = np.empty((480, 640, 3), np.uint8)
    frame[:] = (30, 100, 200)
    v = _compute(frame)
    assert v["brightness"] == pytest.approx(stats.brightness(stats.to_gray(frame)), abs=0.01)
    for name in ("contrast", "sharpness", "noise", "entropy", "edge_density", "overexposed",
                 "underexposed"):
        assert v[name] == pytest.approx(0.0, abs=1e-6), name
    assert (v["mean_b"], v["mean_g"], v["mean_r"]) == pytest.approx((30, 100, 200), abs=1.0)
    assert v["saturation"] == pytest.approx(stats.saturation(frame), abs=0.01)
    assert v["colorfulness"] == pytest.approx(stats.colorfulness(frame), rel=0.02)
    assert math.isnan(v["diff"]) and math.isnan(v["motion"])


def test_frame_at_sample_size_matches_reference_functions() -> None:
    # At exactly the sample size the patches tile the frame: the sample is the frame itself.
    frame = _photo("coffee.png", (96, 72))
    prev = _photo("chelsea.png", (96, 72))
    s = ImageStats(sample_size=(96, 72), run_length=8)
    ys, xs = s.sample_coords(frame.shape)
    assert sorted((ys * 96 + xs).ravel().tolist()) == list(range(96 * 72))
    _compute(prev, s)
    v = _compute(frame, s)
    gray, pgray = stats.to_gray(frame), stats.to_gray(prev)
    # Edge density is defined per 3 x run_length patch (no gradient across two patches).
    patches = [gray[y : y + 3, x : x + 8] for y in range(0, 72, 3) for x in range(0, 96, 8)]
    assert v["brightness"] == pytest.approx(stats.brightness(gray), abs=1e-3)
    assert v["contrast"] == pytest.approx(stats.contrast(gray), rel=1e-4)
    assert v["entropy"] == pytest.approx(stats.luma_entropy(gray), abs=1e-4)
    assert v["overexposed"] == pytest.approx(stats.overexposed(gray), abs=1e-6)
    assert v["underexposed"] == pytest.approx(stats.underexposed(gray), abs=1e-6)
    expected = float(np.mean([stats.edge_density(p) for p in patches]))
    assert v["edge_density"] == pytest.approx(expected, abs=1e-6)
    # Sharpness and noise: the middle row of every patch, inside its run.
    lap = cv2.Laplacian(gray, cv2.CV_64F, ksize=1)[1::3].reshape(24, 12, 8)[:, :, 1:-1]
    assert v["sharpness"] == pytest.approx(float(lap.var()), rel=1e-4)
    imm = cv2.filter2D(gray, cv2.CV_64F, stats._IMMERKAER_KERNEL)[1::3].reshape(24, 12, 8)
    assert v["noise"] == pytest.approx(float(np.abs(imm[:, :, 1:-1]).mean()) * stats._IMMERKAER,
                                       rel=1e-4)
    assert v["diff"] == pytest.approx(stats.mean_abs_diff(gray, pgray), abs=1e-3)
    assert v["motion"] == pytest.approx(stats.motion_fraction(gray, pgray), abs=1e-6)


def test_agrees_with_naive_full_frame_statistics_on_a_photo() -> None:
    frame = _photo()
    v = _compute(frame)
    ref = naive_stats(frame, None)
    assert set(ref) == set(IMAGE_FEATURES)
    assert v["brightness"] == pytest.approx(ref["brightness"], abs=3.0)
    assert v["contrast"] == pytest.approx(ref["contrast"], rel=0.05)
    assert v["entropy"] == pytest.approx(ref["entropy"], abs=0.15)
    assert v["saturation"] == pytest.approx(ref["saturation"], abs=0.03)
    assert v["colorfulness"] == pytest.approx(ref["colorfulness"], rel=0.05)
    for c in ("mean_b", "mean_g", "mean_r"):
        assert v[c] == pytest.approx(ref[c], abs=5.0)
    assert v["overexposed"] == pytest.approx(ref["overexposed"], abs=0.02)
    assert v["underexposed"] == pytest.approx(ref["underexposed"], abs=0.02)


def test_blur_lowers_sharpness_and_noise_raises_noise() -> None:
    frame = _photo()
    clean = _compute(frame)
    blurred = _compute(cv2.GaussianBlur(frame, (0, 0), 4))
    rng = np.random.default_rng(1)
    noisy = np.clip(frame + rng.normal(0, 10, frame.shape), 0, 255).astype(np.uint8)
    nv = _compute(noisy)
    assert blurred["sharpness"] < 0.05 * clean["sharpness"]
    assert nv["noise"] > clean["noise"] + 3.0
    assert nv["noise"] == pytest.approx(LUMA_SIGMA_10, rel=0.35)  # Immerkaer recovers sigma
    assert blurred["edge_density"] < clean["edge_density"]


@pytest.mark.parametrize("big", [(1280, 960), (1920, 1440)])
def test_values_comparable_across_frame_sizes(big: tuple[int, int]) -> None:
    small, large = _compute(_photo(size=(640, 480))), _compute(_photo(size=big))
    assert large["brightness"] == pytest.approx(small["brightness"], abs=3.0)
    assert large["contrast"] == pytest.approx(small["contrast"], rel=0.05)
    assert large["colorfulness"] == pytest.approx(small["colorfulness"], rel=0.1)
    assert large["entropy"] == pytest.approx(small["entropy"], abs=0.1)
    assert large["edge_density"] == pytest.approx(small["edge_density"], abs=0.05)
    assert 0.5 < large["sharpness"] / small["sharpness"] < 2.0
    rng = np.random.default_rng(2)
    for size in ((640, 480), big):
        f = _photo(size=size)
        noisy = np.clip(f + rng.normal(0, 10, f.shape), 0, 255).astype(np.uint8)
        assert _compute(noisy)["noise"] == pytest.approx(LUMA_SIGMA_10, rel=0.35)


def test_diff_and_motion_track_the_previous_frame() -> None:
    frame = _photo()
    s = ImageStats()
    first = _compute(frame, s)
    same = _compute(frame, s)
    brighter = _compute(cv2.add(frame, np.full_like(frame, 30)), s)
    assert math.isnan(first["diff"])
    assert same["diff"] == 0.0 and same["motion"] == 0.0
    assert 20.0 < brighter["diff"] <= 30.0 and brighter["motion"] > 0.6
    s.reset()
    assert math.isnan(_compute(frame, s)["diff"])


def test_exposure_fractions() -> None:
    white = np.full((480, 640, 3), 255, np.uint8)
    black = np.zeros((480, 640, 3), np.uint8)
    assert _compute(white)["overexposed"] == 1.0
    assert _compute(black)["underexposed"] == 1.0


def test_frame_size_change_and_bad_frames() -> None:
    s = ImageStats()
    a = _compute(_photo(size=(640, 480)), s)
    b = _compute(_photo(size=(320, 240)), s)
    assert b["brightness"] == pytest.approx(a["brightness"], abs=3.0)
    with pytest.raises(ValueError, match="BGR uint8"):
        _compute(np.zeros((480, 640), np.uint8), s)
    with pytest.raises(ValueError, match="too small"):
        _compute(np.zeros((20, 20, 3), np.uint8), s)
    with pytest.raises(ValueError):
        ImageStats(run_length=2)


def test_writes_into_a_row_view() -> None:
    row = np.zeros(len(IMAGE_FEATURES) + 5, np.float32)
    ImageStats().compute(_photo(), row[: len(IMAGE_FEATURES)])
    assert row[IDX["brightness"]] > 50 and np.all(row[len(IMAGE_FEATURES):] == 0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), shift=st.integers(-40, 40))
def test_bounded_and_shift_equivariant(seed: int, shift: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 196, (120, 160, 3), dtype=np.uint8)
    a = _compute(base)
    b = _compute((base.astype(np.int16) + shift).astype(np.uint8))
    for name in ("saturation", "overexposed", "underexposed", "edge_density"):
        assert 0.0 <= a[name] <= 1.0
    assert 0.0 <= a["entropy"] <= 8.0
    assert b["brightness"] == pytest.approx(a["brightness"] + shift, abs=0.6)
    assert b["contrast"] == pytest.approx(a["contrast"], abs=0.6)
    assert b["sharpness"] == pytest.approx(a["sharpness"], rel=1e-6)
    assert b["noise"] == pytest.approx(a["noise"], rel=1e-6)
