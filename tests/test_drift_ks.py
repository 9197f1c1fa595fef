"""KS statistic and p-value: agreement with scipy (the test-only oracle) and invariants.

The statistic must equal scipy's exactly and the p-value agree within 1e-6 (within 1e-9 where
scipy is exact too; for n > 1e6 scipy approximates the one-sided law, agent.drift.ks does not).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from agent.drift.ks import (
    kolmogorov_sf,
    ks_2samp,
    ks_grid,
    ks_pvalue,
    ks_statistic_grid,
    ks_statistic_sorted,
    smirnov_sf,
)

SIZES = [(1, 2), (2, 2), (3, 7), (10, 10), (17, 40), (50, 49), (140, 141), (141, 300),
         (500, 73), (1000, 1000), (2048, 4096), (4096, 900), (10000, 37), (20000, 15000)]


def _pairs():
    rng = np.random.default_rng(12345)
    for n1, n2 in SIZES:
        for shift in (0.0, 0.1, 0.5, 3.0):
            a = rng.normal(size=n1)
            b = rng.normal(loc=shift, size=n2)
            yield n1, n2, shift, False, a, b
            # Ties: rounded values share many points between and within samples.
            yield n1, n2, shift, True, np.round(a, 1), np.round(b, 1)


@pytest.mark.parametrize("n1,n2,shift,ties,a,b", list(_pairs()),
                         ids=lambda v: str(v) if not isinstance(v, np.ndarray) else "")
def test_ks_2samp_agrees_with_scipy(n1, n2, shift, ties, a, b):
    ours = ks_2samp(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert ours.statistic == ref.statistic
    assert abs(ours.pvalue - ref.pvalue) <= 1e-6


def test_ks_2samp_random_sizes_agree_with_scipy():
    rng = np.random.default_rng(7)
    for _ in range(300):
        n1, n2 = (int(v) for v in rng.integers(1, 6000, size=2))
        a = rng.standard_t(3, size=n1)
        b = rng.standard_t(3, size=n2) * rng.uniform(0.8, 1.2) + rng.uniform(-0.3, 0.3)
        ours, ref = ks_2samp(a, b), stats.ks_2samp(a, b, method="asymp")
        assert ours.statistic == ref.statistic
        assert abs(ours.pvalue - ref.pvalue) <= 1e-6, (n1, n2)


@pytest.mark.parametrize("n", [1, 2, 5, 30, 140, 141, 1000, 50000, 100000, 100001, 2000000])
def test_kolmogorov_sf_matches_kstwo(n):
    # Every region of Simard and L'Ecuyer's table: n x <= 1, Durbin (n x^2 below 0.75 and up
    # to 4), Miller's tail, Pelz-Good, x >= 1/2 and n x >= n - 1; ends of the support included.
    xs = np.concatenate([np.linspace(0.0, 1.0, 41), np.geomspace(0.5 / n, 1.0, 60),
                         [0.5 / n, 1.0 / n, 1 - 1.0 / n]])
    tol = 1e-6 if n > 1_000_000 else 1e-9
    for x in xs:
        assert kolmogorov_sf(n, float(x)) == pytest.approx(
            float(stats.kstwo.sf(x, n)), abs=tol, rel=1e-7 if tol < 1e-6 else 0), (n, x)


@pytest.mark.parametrize("n", [1, 2, 7, 140, 1000, 100000])
def test_smirnov_sf_matches_scipy(n):
    from scipy import special

    for x in np.geomspace(0.1 / n, 0.999, 50 if n <= 1000 else 15):  # O(n) per point
        assert smirnov_sf(n, float(x)) == pytest.approx(float(special.smirnov(n, x)),
                                                        abs=1e-12, rel=1e-9), (n, x)


def test_ks_pvalue_uses_rounded_harmonic_size():
    assert ks_pvalue(0.1, 300, 200) == pytest.approx(float(stats.kstwo.sf(0.1, 120)), abs=1e-12)


def test_empty_and_nan_inputs():
    with pytest.raises(ValueError, match="reference is empty"):
        ks_2samp(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="current is empty after dropping NaN"):
        ks_2samp(np.array([1.0]), np.array([np.nan, np.nan]))
    with_nan = ks_2samp(np.array([1.0, np.nan, 2.0, 3.0]), np.array([2.5, np.nan, 4.0]))
    assert with_nan == ks_2samp(np.array([1.0, 2.0, 3.0]), np.array([2.5, 4.0]))


def test_constant_samples():
    assert ks_2samp(np.ones(50), np.ones(20)).statistic == 0.0
    assert ks_2samp(np.ones(50), np.ones(20)).pvalue == 1.0
    assert ks_2samp(np.ones(50), np.full(20, 2.0)).statistic == 1.0
    assert ks_2samp(np.ones(50), np.full(20, 2.0)).pvalue < 1e-6


def test_grid_statistic_is_close_lower_bound():
    rng = np.random.default_rng(3)
    ref = np.sort(rng.normal(size=2048))
    grid = ks_grid(ref, 512)
    for shift in (0.0, 0.05, 0.3, 10.0, -10.0):
        cur = np.sort(rng.normal(loc=shift, size=4096))
        full = ks_statistic_sorted(ref, cur)
        approx = ks_statistic_grid(*grid, cur)
        assert approx <= full + 1e-12
        assert full - approx <= 4 / 512
    assert ks_statistic_grid(*grid, ref) == 0.0
    assert ks_statistic_grid(*grid, np.sort(ref + 100)) == 1.0


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
samples = st.lists(finite, min_size=1, max_size=60).map(np.array)


@settings(max_examples=200, deadline=None)
@given(samples, samples)
def test_ks_properties(a, b):
    d = ks_2samp(a, b)
    assert 0.0 <= d.statistic <= 1.0
    assert 0.0 <= d.pvalue <= 1.0 or np.isnan(d.pvalue)
    assert d.statistic == ks_2samp(b, a).statistic
    assert ks_2samp(a, a).statistic == 0.0
    # Order-independent and shift-equivariant (exactly, for integer shifts of float32 data).
    assert ks_2samp(a[::-1], b).statistic == d.statistic
    grid = ks_grid(np.sort(a), 16)
    assert 0.0 <= ks_statistic_grid(*grid, np.sort(b)) <= d.statistic + 1e-12


def test_drift_package_does_not_import_scipy():
    import ast
    from pathlib import Path

    import agent.drift

    for path in Path(agent.drift.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "scipy" for n in names), path
