"""PSI, normalised Wasserstein and categorical measures: scipy agreement and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from agent.drift.categorical import chi2_sf, chi2_test, gammaincc, js_divergence
from agent.drift.psi import PSI_FLOOR, psi, psi_edges, psi_sorted
from agent.drift.wasserstein import robust_scale, wasserstein, wasserstein_sorted

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
samples = st.lists(finite, min_size=1, max_size=80).map(np.array)
counts = st.lists(st.integers(0, 1000), min_size=2, max_size=12)


def test_psi_matches_formula():
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(size=5000), rng.normal(0.5, 1.2, size=3000)
    edges = np.quantile(ref, np.arange(1, 10) / 10)
    r = np.maximum(np.bincount(np.searchsorted(edges, ref, side="right"), minlength=10) / 5000,
                   PSI_FLOOR)
    c = np.maximum(np.bincount(np.searchsorted(edges, cur, side="right"), minlength=10) / 3000,
                   PSI_FLOOR)
    assert psi(ref, cur) == pytest.approx(float(np.sum((c - r) * np.log(c / r))), rel=1e-12)
    e, rf = psi_edges(ref)
    assert psi_sorted(e, rf, np.sort(cur)) == psi(ref, cur)
    assert psi(ref, cur) > 0.1
    assert psi(ref, rng.normal(size=3000)) < 0.02


def test_psi_constant_and_bad_input():
    assert psi(np.ones(100), np.ones(10)) == 0.0
    value = psi(np.ones(100), np.zeros(10))
    assert math.isfinite(value) and value > 1.0
    with pytest.raises(ValueError, match="current is empty"):
        psi(np.ones(3), np.array([np.nan]))
    with pytest.raises(ValueError, match="bins must be >= 2"):
        psi(np.ones(3), np.ones(3), bins=1)


@pytest.mark.parametrize("m,n", [(1, 1), (3, 7), (2048, 4096), (4096, 2048), (1000, 999),
                                 (2048, 900), (700, 2100), (100, 1600), (512, 512)])
def test_wasserstein_matches_scipy(m, n):
    rng = np.random.default_rng(m * n)
    u, v = rng.gamma(2.0, size=m), rng.normal(size=n)
    assert float(wasserstein_sorted(np.sort(u), np.sort(v))) == pytest.approx(
        stats.wasserstein_distance(u, v), rel=1e-10, abs=1e-12)
    assert wasserstein(u, v, scale=1.0) == pytest.approx(stats.wasserstein_distance(u, v),
                                                         rel=1e-10, abs=1e-12)


def test_wasserstein_divisible_sizes_with_ties_and_infinities():
    # The n = 2m fast path pairs each sketch value with two window values; ties and infinite
    # values must give what the general formula gives (inf, not NaN, for -inf and +inf).
    rng = np.random.default_rng(3)
    u = np.sort(np.round(rng.normal(size=64)))
    v = np.sort(np.round(rng.normal(size=128)))
    assert float(wasserstein_sorted(u, v)) == pytest.approx(stats.wasserstein_distance(u, v),
                                                            rel=1e-12)
    v_inf = np.sort(np.concatenate([v[:-2], [-np.inf, np.inf]]))
    assert float(wasserstein_sorted(u, v_inf)) == np.inf
    # One value facing both -inf and +inf: inf - inf must not turn the distance into NaN.
    assert float(wasserstein_sorted(np.array([0.0]), np.array([-np.inf, np.inf]))) == np.inf
    assert float(wasserstein_sorted(u, np.sort(v + 0.5))) == pytest.approx(
        stats.wasserstein_distance(u, v + 0.5), rel=1e-12)


def test_wasserstein_batched_rows():
    rng = np.random.default_rng(1)
    u, v = np.sort(rng.normal(size=(4, 300)), axis=1), np.sort(rng.normal(size=(4, 200)), axis=1)
    batch = wasserstein_sorted(u, v)
    assert batch.shape == (4,)
    for i in range(4):
        assert batch[i] == pytest.approx(stats.wasserstein_distance(u[i], v[i]), rel=1e-10)


def test_wasserstein_normalisation():
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 3.0, size=20000)
    assert robust_scale(ref) == pytest.approx(3.0, rel=0.03)
    assert wasserstein(ref, ref + 1.5) == pytest.approx(0.5, rel=0.03)
    assert robust_scale(np.r_[np.zeros(90), np.arange(1, 11)]) == pytest.approx(
        float(np.std(np.r_[np.zeros(90), np.arange(1, 11)])))  # IQR 0 -> std
    assert robust_scale(np.ones(10)) == 1.0
    assert wasserstein(np.ones(10), np.full(5, 3.0)) == 2.0
    with pytest.raises(ValueError, match="reference is empty"):
        wasserstein(np.array([np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="scale must be > 0"):
        wasserstein(np.ones(2), np.ones(2), scale=0.0)


@settings(max_examples=150, deadline=None)
@given(samples, samples)
def test_metric_properties(a, b):
    assert psi(a, b) >= 0.0
    assert psi(a, a) == 0.0
    assert wasserstein(a, b, scale=1.0) == pytest.approx(wasserstein(b, a, scale=1.0),
                                                         rel=1e-9, abs=1e-9)
    assert wasserstein(a, a) == 0.0
    assert wasserstein(a, b) >= 0.0


@settings(max_examples=150, deadline=None)
@given(counts, st.data())
def test_js_properties(p, data):
    q = data.draw(st.lists(st.integers(0, 1000), min_size=len(p), max_size=len(p)))
    p_arr, q_arr = np.array(p), np.array(q)
    if p_arr.sum() == 0 or q_arr.sum() == 0:
        with pytest.raises(ValueError, match="empty"):
            js_divergence(p_arr, q_arr)
        return
    js = js_divergence(p_arr, q_arr)
    assert 0.0 <= js <= 1.0
    assert js == pytest.approx(js_divergence(q_arr, p_arr), abs=1e-12)
    assert js_divergence(p_arr, p_arr) == 0.0
    assert js == pytest.approx(jensenshannon(p_arr, q_arr, base=2) ** 2, abs=1e-9)


def test_js_extremes_and_errors():
    assert js_divergence([5, 0], [0, 3]) == 1.0
    assert js_divergence([1, np.nan, 1], [1, 0, 1]) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        js_divergence([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=">= 0"):
        js_divergence([1, -2], [1, 2])


def test_gammaincc_matches_scipy():
    rng = np.random.default_rng(5)
    for _ in range(3000):
        k = float(rng.uniform(0.05, 300))
        x = float(rng.uniform(0, 3 * k + 20))
        assert chi2_sf(x, k) == pytest.approx(float(stats.chi2.sf(x, k)), abs=1e-12, rel=1e-9)
    assert gammaincc(1.0, 0.0) == 1.0
    with pytest.raises(ValueError, match="a must be > 0"):
        gammaincc(0.0, 1.0)


@pytest.mark.parametrize("seed", range(8))
def test_chi2_test_matches_scipy_contingency(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    ref, cur = rng.integers(0, 400, size=k), rng.integers(0, 60, size=k)
    ref[0] = cur[0] = 0  # a category empty in both is dropped
    ref[1] += 1
    stat, p = chi2_test(ref, cur)
    keep = (ref + cur) > 0
    exp = stats.chi2_contingency(np.vstack([ref[keep], cur[keep]]), correction=False)
    assert stat == pytest.approx(exp[0], rel=1e-12)
    assert p == pytest.approx(exp[1], abs=1e-12, rel=1e-9)


def test_chi2_degenerate():
    assert chi2_test([10, 0], [5, 0]) == (0.0, 1.0)
    stat, p = chi2_test([1000, 0, 0], [0, 0, 1000])
    assert stat > 1000 and p < 1e-100
