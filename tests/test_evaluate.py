"""Which drifted features an alert names, and in what order (pure, over FeatureDrift values)."""

from __future__ import annotations

import math
from typing import List

from agent.drift.detector import FeatureDrift
from agent.evaluate import _moved, _named, _ranked_by_effect


def fd(name: str, effect: float, *, drifted: bool = True, change: float = 1.0) -> FeatureDrift:
    return FeatureDrift(name, True, 0.8, 1.0, effect, 0.5, 0.35, drifted, True, 450, None,
                        {"mean": 1.0}, {"mean": 1.0 + change})


def names(features: List[FeatureDrift]) -> List[str]:
    return [f.feature for f in features]


def test_night_names_brightness_first_although_its_threshold_is_not_crossed() -> None:
    # Night at the first firing: brightness moved 40 robust SDs but its threshold is capped
    # near 1 by its autocorrelation; entropy's tiny reference SD makes its move look larger.
    members = [fd("entropy", 96.9), fd("brightness", 40.3, drifted=False),
               fd("noise", 2.9), fd("saturation", 15.1), fd("motion", 2.5, drifted=False)]
    got = names(_ranked_by_effect(_moved(members)))
    assert got[0] == "brightness"
    assert "motion" not in got  # neither drifted nor moved decisively
    assert set(got) == {"brightness", "entropy", "saturation", "noise"}


def test_smaller_moves_rank_by_effect_and_calm_groups_name_nothing() -> None:
    assert names(_ranked_by_effect([fd("sharpness", 1.8), fd("edge_density", 4.9)])) == [
        "edge_density", "sharpness"]
    assert _moved([fd("brightness", 40.0, drifted=False)]) == []
    assert names(_ranked_by_effect([fd("noise", math.nan), fd("contrast", 0.5)])) == [
        "contrast", "noise"]


def test_the_message_lists_six_and_counts_the_rest() -> None:
    many = [fd(f"f{i}", 10.0 - i) for i in range(9)]
    assert _named(many) == "f0, f1, f2, f3, f4, f5, +3 more"
    assert _named(many[:2]) == "f0, f1"
    assert _named([]) == "none"


def test_more_noise_is_a_cause_less_noise_a_consequence_of_smoothing() -> None:
    noisier = [fd("sharpness", 9.0), fd("noise", 8.0)]
    assert names(_ranked_by_effect(noisier)) == ["noise", "sharpness"]
    blurred = [fd("noise", 8.0, change=-0.5), fd("sharpness", 9.0, change=-0.9)]
    assert names(_ranked_by_effect(blurred)) == ["sharpness", "noise"]
