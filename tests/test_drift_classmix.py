"""Class-mix drift from the reference sketch of predicted classes."""

from __future__ import annotations

import doctest

import numpy as np
from scipy.spatial.distance import jensenshannon

import agent.drift.classmix as classmix
from agent.drift.classmix import class_mix


def test_doctests() -> None:
    assert doctest.testmod(classmix).failed == 0


def test_agrees_with_scipy_and_ignores_missing_predictions() -> None:
    rng = np.random.default_rng(3)
    ref = np.sort(rng.choice(5, size=2048, p=[0.4, 0.3, 0.15, 0.1, 0.05]).astype(float))
    cur = rng.choice(5, size=900, p=[0.1, 0.1, 0.2, 0.3, 0.3]).astype(float)
    cur[::7] = np.nan  # frames with no prediction
    js, rf, cf = class_mix(ref, cur)
    expected = jensenshannon(np.bincount(ref.astype(int), minlength=5),
                             np.bincount(cur[np.isfinite(cur)].astype(int), minlength=5), base=2) ** 2
    assert abs(js - expected) < 1e-12
    assert abs(rf.sum() - 1) < 1e-12 and abs(cf.sum() - 1) < 1e-12


def test_same_mix_is_near_zero_and_a_new_class_is_large() -> None:
    ref = np.repeat([0.0, 1.0], [1024, 1024])
    assert class_mix(ref, np.repeat([0.0, 1.0], [450, 450]))[0] < 1e-9
    assert class_mix(ref, np.full(900, 3.0))[0] == 1.0


def test_nothing_to_compare() -> None:
    assert class_mix(np.full(10, np.nan), np.zeros(5)) is None
    assert class_mix(np.repeat([0.0, 1.0], 5), np.full(5, np.nan)) is None
