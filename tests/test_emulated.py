"""Emulated feeds: deterministic, camera-like, and each scenario changes what it says it does."""

from __future__ import annotations

import doctest

import cv2
import numpy as np
import pytest

import agent.emulated
from agent.emulated import SCENARIOS, EmulatedFeed, parse_emulated_uri
from agent.errors import SourceError

SIZE = (320, 240)
FPS = 10.0
ONSET = 2.0  # seconds: frames 0..19 are before the onset


def feed(scenario: str, seed: int = 1, **kw) -> EmulatedFeed:
    """A small, low-fps feed: cheap to render in tests."""
    return EmulatedFeed(scenario, seed=seed, fps=FPS, size=SIZE, onset=ONSET, **kw)


def gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference between two frames."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of small grey thumbnails: 1 for the same scene, low for another one."""
    x = cv2.resize(gray(a), (64, 48), interpolation=cv2.INTER_AREA).ravel()
    y = cv2.resize(gray(b), (64, 48), interpolation=cv2.INTER_AREA).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def test_docstring_example_runs():
    result = doctest.testmod(agent.emulated)
    assert result.attempted >= 4 and result.failed == 0


def test_same_seed_same_frames_in_any_order():
    a, b = feed("stationary", seed=7), feed("stationary", seed=7)
    backwards = [b.frame_at(i) for i in (40, 13, 5, 0)]
    forwards = [a.frame_at(i) for i in (0, 5, 13, 40)]
    for x, y in zip(forwards, reversed(backwards)):
        assert x.shape == (SIZE[1], SIZE[0], 3) and x.dtype == np.uint8
        assert np.array_equal(x, y)
    streamed = [a.read() for _ in range(6)]
    assert np.array_equal(streamed[5], forwards[1])
    assert a.index == 6


def test_other_seed_other_frames_same_scene():
    a, b = feed("stationary", seed=1), feed("stationary", seed=2)
    for i in (3, 50, 120):
        fa, fb = a.frame_at(i), b.frame_at(i)
        assert not np.array_equal(fa, fb)
        assert abs(float(fa.mean()) - float(fb.mean())) < 8.0
        assert correlation(fa, fb) > 0.85


def test_stationary_feed_is_autocorrelated_not_iid():
    f = EmulatedFeed("stationary", seed=3, fps=30.0, size=SIZE)
    starts = range(0, 900, 90)
    assert min(mad(f.frame_at(i), f.frame_at(i + 1)) for i in starts) > 0.5  # sensor noise

    def smooth(i: int) -> np.ndarray:  # the scene without the sensor noise
        return cv2.GaussianBlur(f.frame_at(i), (0, 0), 2.0)

    near = np.median([mad(smooth(i), smooth(i + 1)) for i in starts])
    far = np.median([mad(smooth(i), smooth(i + 300)) for i in starts])
    assert far > 3.0 * near


def test_camera_moves_a_little_over_time():
    f = feed("stationary", seed=4, jpeg_every=0)
    # Registration between frames 30 s apart: a few pixels at most, not zero.
    a, b = gray(f.frame_at(1)), gray(f.frame_at(301))
    (dx, dy), _ = cv2.phaseCorrelate(a, b)
    assert 0.05 < np.hypot(dx, dy) < 8.0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_before_onset_every_scenario_is_stationary(scenario):
    stationary, other = feed("stationary"), feed(scenario)
    for i in (0, 9, 19):
        assert np.array_equal(stationary.frame_at(i), other.frame_at(i))


def brightness(f: np.ndarray) -> float:
    return float(gray(f).mean())


def sharpness(f: np.ndarray) -> float:
    return float(cv2.Laplacian(gray(f), cv2.CV_32F).var())


def contrast(f: np.ndarray) -> float:
    return float(gray(f).std())


def grain(f: np.ndarray) -> float:
    g = gray(f)
    return float(np.abs(g - cv2.medianBlur(g.astype(np.uint8), 3)).mean())


def blue_over_red(f: np.ndarray) -> float:
    return float(f[..., 0].mean() / max(1.0, f[..., 2].mean()))


def dark_fraction(f: np.ndarray) -> float:
    return float((gray(f) < 30).mean())


# scenario -> (measure, seconds after onset, lowest and highest allowed ratio after/before)
CHANGES = {
    "stationary": (brightness, 30.0, 0.93, 1.07),
    "dusk": (brightness, 125.0, 0.08, 0.25),
    "night": (brightness, 1.0, 0.05, 0.2),
    "blur": (sharpness, 1.0, 0.0, 0.2),
    "fog": (contrast, 1.0, 0.3, 0.5),
    "noise": (grain, 1.0, 3.0, 100.0),
    "color_cast": (blue_over_red, 1.0, 1.6, 2.6),
    "occlusion": (dark_fraction, 1.0, 1.5, 100.0),
    "black": (brightness, 1.0, 0.0, 0.02),
}


@pytest.mark.parametrize("scenario", sorted(CHANGES))
def test_scenario_changes_the_right_thing(scenario):
    measure, after_s, low, high = CHANGES[scenario]
    f = feed(scenario)
    first = int(ONSET * FPS + after_s * FPS)
    before = np.mean([measure(f.frame_at(i)) for i in range(0, 20, 4)])
    after = np.mean([measure(f.frame_at(i)) for i in range(first, first + 20, 4)])
    assert low <= after / before <= high, (scenario, before, after)


def test_dusk_darkens_gradually_and_gets_noisier():
    f = feed("dusk", jpeg_every=0)
    levels = [brightness(f.frame_at(int((ONSET + s) * FPS))) for s in (0, 30, 60, 90, 120)]
    assert all(a > b for a, b in zip(levels, levels[1:]))
    # Auto-gain: relative to the signal, the grain grows as the light goes.
    early, late = f.frame_at(int(ONSET * FPS)), f.frame_at(int((ONSET + 125) * FPS))
    assert grain(late) / brightness(late) > 3 * grain(early) / brightness(early)


def test_occlusion_covers_about_forty_percent():
    f = feed("occlusion")
    before, after = f.frame_at(10), f.frame_at(40)
    assert 0.25 < dark_fraction(after) - dark_fraction(before) < 0.5


def test_frozen_repeats_one_frame_exactly():
    f = feed("frozen")
    onset = int(ONSET * FPS)
    assert not np.array_equal(f.frame_at(onset - 2), f.frame_at(onset - 1))
    held = f.frame_at(onset)
    for i in (onset + 1, onset + 7, onset + 500):
        assert np.array_equal(f.frame_at(i), held)


def test_black_is_near_zero():
    frame = feed("black").frame_at(50)
    assert frame.max() <= 3


def test_bumped_camera_sees_another_scene():
    f = feed("bumped")
    before, after = f.frame_at(15), f.frame_at(45)
    assert correlation(before, after) < 0.5
    assert mad(before, after) > 30.0
    # The new view is still a live camera: consecutive frames differ but little.
    assert 0.5 < mad(after, f.frame_at(46)) < 10.0


def test_read_stops_after_duration_loops_and_closes():
    f = EmulatedFeed("stationary", fps=10.0, size=(64, 48), duration=1.5)
    frames = [f.read() for _ in range(15)]
    assert all(x is not None for x in frames)
    assert f.read() is None and f.read() is None
    looped = EmulatedFeed("stationary", fps=10.0, size=(64, 48), duration=1.0, loop=True)
    got = [looped.read() for _ in range(12)]
    assert np.array_equal(got[10], got[0])
    looped.close()
    assert looped.read() is None


@pytest.fixture(scope="module")
def face_score(model_path):
    """Runs the real BlazeFace model: the best face score of a frame, in 0..1."""
    from tflite_runtime.interpreter import Interpreter

    interpreter = Interpreter(str(model_path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = next(
        d["index"] for d in interpreter.get_output_details() if d["name"] == "classificators"
    )

    def score(frame: np.ndarray) -> float:
        small = cv2.resize(frame, (128, 128), interpolation=cv2.INTER_AREA)
        x = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
        interpreter.set_tensor(inp, x[None])
        interpreter.invoke()
        logit = float(interpreter.get_tensor(out).max())
        return 1.0 / (1.0 + np.exp(-logit))

    return score


@pytest.mark.parametrize(
    "scenario, low, high",
    [("stationary", 0.8, 1.0), ("black", 0.0, 0.0), ("bumped", 0.0, 0.2),
     ("occlusion", 0.0, 0.2)],
)
def test_real_face_model_on_frames_after_onset(face_score, scenario, low, high):
    f = feed(scenario, seed=5)
    frames = [f.frame_at(int(ONSET * FPS) + 37 * k) for k in range(15)]
    hits = np.mean([face_score(x) > 0.5 for x in frames])
    assert low <= hits <= high


def test_parse_uri_sets_every_parameter():
    f = parse_emulated_uri("emulated:fog?seed=3&fps=12.5&size=160x120&onset=4&duration=2")
    assert (f.scenario, f.seed, f.fps, f.size, f.onset, f.duration) == (
        "fog", 3, 12.5, (160, 120), 4.0, 2.0)
    assert f.name == "emulated:fog" and not f.live
    assert f.read().shape == (120, 160, 3)
    assert parse_emulated_uri("emulated:night", size=(80, 60)).frame_at(0).shape == (60, 80, 3)


@pytest.mark.parametrize(
    "uri, words",
    [
        ("emulated:sunny", ["'sunny'", "stationary", "bumped"]),
        ("emulated:", ["''", "stationary"]),
        ("emulated:dusk?speed=2", ["'speed'", "seed", "duration"]),
        ("emulated:dusk?size=640", ["size", "WxH"]),
        ("emulated:dusk?fps=fast", ["fps", "number"]),
        ("emulated:dusk?seed=1&seed=2", ["twice", "seed"]),
        ("emulated:dusk?seed=-1", ["seed", ">= 0"]),
        ("emulated:dusk?fps=0", ["fps", "> 0"]),
        ("emulated:dusk?duration=0", ["duration"]),
        ("emulated:dusk?size=8x8", ["8x8", "32x32"]),
        # allocated at once: a typo must be refused, not ask for 30 GB
        ("emulated:black?size=100000x100000", ["100000x100000", "7680x7680"]),
        ("emulated:dusk?fps=inf", ["fps", "at most 1000"]),
        ("emulated:dusk?fps=nan", ["fps", "> 0"]),
        ("emulated:dusk?onset=inf", ["onset"]),
        ("emulated:dusk?duration=nan", ["duration"]),
        ("emulated:dusk?seed", ["seed"]),
    ],
)
def test_parse_uri_errors_say_what_and_how(uri, words):
    with pytest.raises(SourceError) as err:
        parse_emulated_uri(uri)
    for word in words:
        assert word in str(err.value)
