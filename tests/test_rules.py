"""Rule checks: pure functions over recent frames, pinned on constructed windows."""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import numpy.typing as npt
import pytest

from agent.config import RulesConfig
from agent.monitor import FEATURES
from agent.records import Observation
from agent.rules import check_frames, check_stall

CFG = RulesConfig()
REF = {"sharpness": {"p50": 400.0, "p95": 500.0, "mad": 40.0},
       "latency_ms": {"p50": 2.0, "p95": 3.0, "mad": 0.2},
       "brightness": {"p50": 120.0, "p95": 125.0, "mad": 2.0},
       "contrast": {"p50": 50.0, "p95": 52.0, "mad": 1.0}}


def ref(name: str) -> Optional[Dict[str, float]]:
    return REF.get(name)


def window(n: int = 150, fps: float = 30.0, cols: Optional[Dict[str, float]] = None,
           **more: float) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    ts = 1000 + np.arange(n) / fps
    values = np.zeros((n, len(FEATURES)), np.float32)
    base = dict(brightness=120, contrast=50, sharpness=400, overexposed=0.01, diff=2.0,
                latency_ms=2.0)
    base.update(cols or {}, **more)
    for name, v in base.items():
        values[:, FEATURES.index(name)] = v
    values += np.random.default_rng(0).normal(0, 0.01, values.shape).astype(np.float32)
    return ts, values


def breaches(obs: List[Observation]) -> Dict[str, bool]:
    return {o.feature: o.breach for o in obs}


def test_normal_window_breaches_nothing() -> None:
    ts, v = window()
    got = breaches(check_frames(FEATURES, ts, v, CFG, reference=ref, expected_fps=30))
    assert got and not any(got.values()), got


@pytest.mark.parametrize("cols, fps, feature", [
    ({"brightness": 3.0}, 30, "black_frames"),
    ({"overexposed": 0.95}, 30, "saturated_frames"),
    ({"diff": 0.0}, 30, "frozen_frames"),
    ({"sharpness": 40.0}, 30, "blur"),
    ({}, 10, "fps"),
    ({"latency_ms": 12.0}, 30, "latency_ms"),
    ({"brightness": 60.0, "contrast": 20.0}, 30, "outlier_frames"),
])
def test_each_rule_fires_on_its_fault(cols: Dict[str, float], fps: float, feature: str) -> None:
    ts, v = window(fps=fps, cols=cols)
    got = breaches(check_frames(FEATURES, ts, v, CFG, reference=ref, expected_fps=30))
    assert got[feature], got
    assert [f for f, b in got.items() if b and f != feature] in ([], ["outlier_frames"])


def test_rules_needing_a_reference_skip_without_one() -> None:
    ts, v = window(sharpness=1.0)
    got = breaches(check_frames(FEATURES, ts, v, CFG, reference=None, expected_fps=None))
    assert "blur" not in got and "latency_ms" not in got and "fps" not in got
    assert set(got) == {"black_frames", "saturated_frames", "frozen_frames"}


def test_nan_and_tiny_windows() -> None:
    ts, v = window(n=1)
    assert check_frames(FEATURES, ts, v, CFG) == []
    ts, v = window()
    v[:, FEATURES.index("brightness")] = np.nan
    assert "black_frames" not in breaches(check_frames(FEATURES, ts, v, CFG))


def test_stall() -> None:
    assert not check_stall(100.0, 0.0, 104.0, CFG).breach
    stalled = check_stall(100.0, 0.0, 106.0, CFG)
    assert stalled.breach and stalled.severity == "critical" and "6 s ago" in stalled.summary
    assert check_stall(None, 0.0, 10.0, CFG).breach  # no frame since start


def test_every_feature_reported_is_exported() -> None:
    """The rules' observations name only RULE_FEATURES (what controls may name)."""
    from agent.rules import RULE_FEATURES

    seen: Set[str] = set()
    for cols, fps in [({}, 30), ({"brightness": 3.0, "sharpness": 40.0}, 10)]:
        ts, v = window(fps=fps, cols=cols)
        seen |= {o.feature for o in check_frames(FEATURES, ts, v, CFG, reference=ref,
                                                 expected_fps=30)}
    seen.add(check_stall(None, 0.0, 1.0, CFG).feature)
    assert seen == set(RULE_FEATURES)


@pytest.mark.parametrize("gain", [0.45, 0.15])
def test_a_dimmer_or_hazier_scene_is_not_blur(gain: float) -> None:
    # Less light (or fog) scales the Laplacian with contrast squared: no detail was lost.
    ts, v = window(contrast=50.0 * gain, sharpness=400.0 * gain * gain)
    assert not breaches(check_frames(FEATURES, ts, v, CFG, reference=ref))["blur"]


def test_blur_is_judged_on_sharpness_relative_to_contrast() -> None:
    ts, v = window(contrast=47.0, sharpness=60.0)  # defocus: detail gone, contrast kept
    obs = {o.feature: o for o in check_frames(FEATURES, ts, v, CFG, reference=ref)}
    assert obs["blur"].breach and obs["blur"].value == pytest.approx(0.17, abs=0.01)
    ts, v = window(contrast=1.0, sharpness=0.5)  # a flat frame: black_frames' business
    assert "blur" not in breaches(check_frames(FEATURES, ts, v, CFG, reference=ref))
