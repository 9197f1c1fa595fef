"""Drift measures for categorical counts (e.g. the predicted-class mix).

``js_divergence`` is the Jensen-Shannon divergence in bits (0 identical, 1 disjoint support).
``chi2_test`` is the chi-square test of homogeneity on the 2 x K table of reference and current
counts (categories empty in both are dropped; no continuity correction); its p-value uses the
regularised upper incomplete gamma function Q(k/2, x/2), evaluated by its power series for
x < a + 1 and by a Lentz continued fraction otherwise (Numerical Recipes, section 6.2).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["chi2_sf", "chi2_test", "gammaincc", "js_divergence"]

_EPS = 1e-15
_MAX_ITER = 10000

Floats = npt.NDArray[np.float64]


def _counts(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike, name: str) -> tuple[Floats, Floats]:
    p = np.nan_to_num(np.asarray(p_counts, dtype=np.float64).ravel(), nan=0.0)
    q = np.nan_to_num(np.asarray(q_counts, dtype=np.float64).ravel(), nan=0.0)
    if p.shape != q.shape:
        raise ValueError(f"{name}: count vectors differ in length ({p.size} vs {q.size})")
    if (p < 0).any() or (q < 0).any():
        raise ValueError(f"{name}: counts must be >= 0")
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError(f"{name}: a count vector is empty (all zero); pass at least one count")
    return p, q


def js_divergence(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two count vectors; NaN counts = 0.

    >>> js_divergence([10, 10, 0], [5, 5, 0])  # same proportions
    0.0
    >>> js_divergence([1, 0], [0, 1])  # disjoint support
    1.0
    >>> round(js_divergence([50, 30, 20], [20, 30, 50]), 4)
    0.0958
    """
    p, q = _counts(p_counts, q_counts, "js_divergence")
    p = p / p.sum()
    q = q / q.sum()
    m = (p + q) / 2

    def _kl(a: Floats) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return min(max(0.5 * _kl(p) + 0.5 * _kl(q), 0.0), 1.0)


def gammaincc(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) for a > 0, x >= 0."""
    if a <= 0:
        raise ValueError(f"gammaincc: a must be > 0, got {a}")
    if x <= 0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        # P(a, x) = e^-x x^a / Gamma(a+1) * sum x^k / ((a+1)...(a+k))
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITER):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return min(max(1.0 - total * math.exp(log_prefix), 0.0), 1.0)
    # Q(a, x) = e^-x x^a / Gamma(a) * 1/(x+1-a- 1(1-a)/(x+3-a- 2(2-a)/(x+5-a- ...)))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return min(max(math.exp(log_prefix) * h, 0.0), 1.0)


def chi2_sf(statistic: float, dof: float) -> float:
    """Chi-square survival function P(X > statistic) with ``dof`` degrees of freedom."""
    return gammaincc(dof / 2.0, statistic / 2.0)


def chi2_test(ref_counts: npt.ArrayLike, cur_counts: npt.ArrayLike) -> tuple[float, float]:
    """Chi-square homogeneity test of two count vectors -> (statistic, p-value).

    >>> stat, p = chi2_test([50, 30, 20], [20, 30, 50])
    >>> round(stat, 3), f"{p:.2e}"
    (25.714, '2.61e-06')
    """
    r, c = _counts(ref_counts, cur_counts, "chi2_test")
    keep = (r + c) > 0
    table = np.vstack([r[keep], c[keep]])
    if table.shape[1] < 2:
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    return stat, chi2_sf(stat, table.shape[1] - 1)
