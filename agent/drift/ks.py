"""Two-sample Kolmogorov-Smirnov statistic and its p-value, written from the published methods.

The statistic of ``ks_2samp`` is the sup of the difference of the two empirical CDFs, taken at
every point of both samples. Its p-value is the two-sided one-sample Kolmogorov law at the
rounded harmonic size ``en = round(n1 * n2 / (n1 + n2))``: ``P(D_en >= d)``. That is the same
convention as ``scipy.stats.ks_2samp(method="asymp")``, which the tests use as the oracle
(SciPy is a test-only dependency; nothing here imports it).

``kolmogorov_sf(n, x) = P(D_n >= x)`` follows the choice of method by region of Simard and
L'Ecuyer, "Computing the Two-Sided Kolmogorov-Smirnov Distribution", Journal of Statistical
Software 39(11), 2011, section 3:

- exact closed forms of Ruben and Gambino (1982) for ``n x <= 1`` and ``n x >= n - 1``;
- ``2 P(D_n^+ >= x)`` for ``x >= 1/2`` (exact there, the two one-sided events are disjoint)
  and, in the upper tail (``n x^2 >= 4`` for n <= 140, ``>= 2.2`` above), as Miller's (1956)
  approximation. The one-sided probability is the exact Birnbaum-Tingey (1951) sum, evaluated
  term by term in log space;
- elsewhere for n <= 140, and for ``n x^(3/2) < 1.4`` up to n = 100000, the exact Durbin matrix
  of Marsaglia, Tsang and Wang, "Evaluating Kolmogorov's Distribution", Journal of Statistical
  Software 8(18), 2003: ``P(D_n < x) = n!/n^n * (H^n)[k, k]``. (Simard and L'Ecuyer use
  Pomeranz's recursion for ``0.754693 <= n x^2 < 4``; Durbin's matrix is exact there too and
  costs under a millisecond at its size, m <= 47, so one exact method serves both.);
- otherwise the Pelz-Good (1976) asymptotic series to order ``n^(-3/2)``, with the terms as
  given by Simard and L'Ecuyer (their equations for K0..K3).

``ks_statistic_sorted`` (statistic only, inputs sorted) and ``ks_grid``/``ks_statistic_grid``
(statistic at a grid of reference quantiles) are the detector's fast paths; it needs no p-value.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import numpy.typing as npt

from ._clean import finite_values

__all__ = ["KSResult", "kolmogorov_sf", "ks_2samp", "ks_grid", "ks_pvalue", "ks_statistic_grid",
           "ks_statistic_sorted"]

Floats = npt.NDArray[np.float64]

# Region boundaries of Simard and L'Ecuyer (2011), section 3.
_SMALL_N = 140
_DURBIN_MAX_N = 100_000
_DURBIN_NX32 = 1.4  # n x^(3/2) below this: Durbin's matrix (n > 140)
_MILLER_NX2_SMALL_N = 4.0  # n x^2 from which Miller's approximation is used (n <= 140)
_MILLER_NX2 = 2.2  # the same for n > 140
_ZERO_NX2 = 370.0  # P(D_n >= x) < 1e-300 beyond this (n > 140)
# exp(-_LOG_NEGLIGIBLE) ~ 1e-26: series terms smaller than this relative to the first are dropped.
_LOG_NEGLIGIBLE = 60.0


class KSResult(NamedTuple):
    """Two-sample KS statistic (sup of the ECDF difference) and its p-value."""

    statistic: float
    pvalue: float


def ks_2samp(reference: npt.ArrayLike, current: npt.ArrayLike) -> KSResult:
    """Two-sided two-sample KS test, as ``scipy.stats.ks_2samp(method="asymp")``; NaN dropped.

    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=500), rng.normal(0.3, size=400)
    >>> r = ks_2samp(a, b)
    >>> round(r.statistic, 4), f"{r.pvalue:.2e}"
    (0.1575, '2.82e-05')
    >>> ks_2samp(a, a)
    KSResult(statistic=0.0, pvalue=1.0)
    """
    data1 = np.sort(finite_values(reference, "reference", "ks_2samp"))
    data2 = np.sort(finite_values(current, "current", "ks_2samp"))
    d = ks_statistic_sorted(data1, data2)
    return KSResult(d, ks_pvalue(d, data1.size, data2.size))


def ks_pvalue(statistic: float, n1: float, n2: float) -> float:
    """Two-sided p-value of a two-sample KS statistic for sample sizes n1, n2 (may be fractional).

    >>> round(ks_pvalue(0.1, 300, 200), 6)  # P(D_120 >= 0.1)
    0.169461
    """
    total = float(n1) + float(n2)
    # Python's round() rounds half to even, as numpy (and so scipy) does.
    en = round(float(n1) * float(n2) / total) if total > 0 else 0
    if en < 1:
        return float("nan")
    return kolmogorov_sf(int(en), float(statistic))


def kolmogorov_sf(n: int, x: float) -> float:
    """``P(D_n >= x)`` for the two-sided one-sample KS statistic of n points (scipy's
    ``kstwo.sf(x, n)``); see the module docstring for the method in each region.

    >>> kolmogorov_sf(1, 0.75)  # D_1 = max(U, 1 - U) is uniform on [1/2, 1]
    0.5
    >>> round(kolmogorov_sf(1000, 0.05), 6)
    0.013012
    """
    if math.isnan(x):
        return float("nan")
    t = n * x
    if t <= 0.5:  # D_n >= 1/(2n) always
        return 1.0
    if x >= 1.0:
        return 0.0
    if t <= 1.0:  # Ruben and Gambino: P(D_n < x) = n! (2x - 1/n)^n
        return _clip(-math.expm1(_log_factorial_over_power(n) + n * math.log(2 * t - 1)))
    if t >= n - 1:  # Ruben and Gambino
        return _clip(2 * (1.0 - x) ** n)
    nx2 = t * x
    if x >= 0.5 or nx2 >= (_MILLER_NX2_SMALL_N if n <= _SMALL_N else _MILLER_NX2):
        return 0.0 if n > _SMALL_N and nx2 >= _ZERO_NX2 else _clip(2 * smirnov_sf(n, x))
    if n <= _SMALL_N or (n <= _DURBIN_MAX_N and n * x**1.5 < _DURBIN_NX32):
        return _clip(1.0 - _durbin_cdf(n, x))
    return _clip(1.0 - _pelz_good_cdf(n, x))


def smirnov_sf(n: int, x: float) -> float:
    """``P(D_n^+ >= x)`` for the one-sided KS statistic (Birnbaum and Tingey 1951), exactly.

    P = x * sum_{0 <= j < n(1-x)} C(n, j) (1 - x - j/n)^(n-j) (x + j/n)^(j-1); every term is
    positive, so the sum is taken in log space with no cancellation.

    >>> round(smirnov_sf(1, 0.25), 12)  # D_1^+ = 1 - U
    0.75
    """
    if x <= 0.0:
        return 1.0
    if x >= 1.0 or 2.0 * n * x * x > 745.0:  # P <= exp(-2 n x^2) (Hoeffding), below float range
        return 0.0
    j = np.arange(0, math.ceil(n * (1.0 - x)), dtype=np.float64)
    rest = (n - j - n * x) / n  # 1 - x - j/n
    keep = rest > 0
    j, rest = j[keep], rest[keep]
    # log C(n, j) by a running sum of log((n - j + 1) / j), exact enough for n in the millions.
    log_binom = np.concatenate([[0.0], np.cumsum(np.log((n - j[1:] + 1) / j[1:]))])
    log_terms = log_binom + (n - j) * np.log(rest) + (j - 1) * np.log(x + j / n) + math.log(x)
    top = float(log_terms.max())
    return _clip(math.exp(top) * float(np.exp(log_terms - top).sum()))


def ks_statistic_sorted(
    ref_sorted: Floats,
    cur_sorted: Floats,
    ref_cdf_at_ref: Optional[Floats] = None,
) -> float:
    """KS statistic of two sorted, NaN-free, non-empty 1-D samples (fast path, no p-value).

    ``ref_cdf_at_ref`` (``searchsorted(ref, ref, "right") / len(ref)``) may be precomputed.

    >>> round(ks_statistic_sorted(np.array([1.0, 2.0, 3.0]), np.array([2.5, 9.0])), 6)
    0.666667
    """
    m, n = ref_sorted.shape[0], cur_sorted.shape[0]
    if ref_cdf_at_ref is None:
        ref_cdf_at_ref = np.searchsorted(ref_sorted, ref_sorted, side="right") / m
    # ECDF difference evaluated at every point of both samples (the ECDFs jump only there).
    at_ref = ref_cdf_at_ref - np.searchsorted(cur_sorted, ref_sorted, side="right") / n
    at_cur = (np.searchsorted(ref_sorted, cur_sorted, side="right") / m
              - np.searchsorted(cur_sorted, cur_sorted, side="right") / n)
    d = max(at_ref.max(), at_cur.max(), -at_ref.min(), -at_cur.min())
    return float(min(max(d, 0.0), 1.0))


def ks_grid(ref_sorted: Floats, size: int = 512) -> tuple[Floats, Floats, Floats]:
    """Grid for ``ks_statistic_grid``: ``size`` evenly spaced points of a sorted reference
    sample with the reference ECDF at each point and just below it."""
    m = ref_sorted.shape[0]
    # Evenly spaced ranks including the minimum and maximum, so separation still gives 1.
    idx = np.unique(np.round(np.linspace(0, m - 1, min(size, m))).astype(np.int64))
    grid = ref_sorted[idx]
    return (grid, np.searchsorted(ref_sorted, grid, side="right") / m,
            np.searchsorted(ref_sorted, grid, side="left") / m)


def ks_statistic_grid(grid: Floats, cdf_at: Floats, cdf_below: Floats,
                      cur_sorted: Floats) -> float:
    """KS distance evaluated only at a grid of reference quantiles (see ``ks_grid``).

    It is a lower bound of the full statistic, short of it by at most the mass of either
    sample between two neighbouring grid points (about 1/size under no drift); with a grid of
    512 points it is four times cheaper than ``ks_statistic_sorted`` against 2048 points.
    Identical samples give 0 and fully separated samples give 1, as for the full statistic.
    """
    n = cur_sorted.shape[0]
    at = np.abs(cdf_at - np.searchsorted(cur_sorted, grid, side="right") * (1.0 / n)).max()
    below = np.abs(cdf_below - np.searchsorted(cur_sorted, grid, side="left") * (1.0 / n)).max()
    return float(min(max(at, below), 1.0))


# ---------------------------------------------------------------------------------------------
# Kolmogorov distribution kernels
# ---------------------------------------------------------------------------------------------


def _clip(p: float) -> float:
    return float(min(max(p, 0.0), 1.0))


def _log_factorial_over_power(n: int) -> float:
    """log(n! / n^n)."""
    return math.lgamma(n + 1) - n * math.log(n)


def _durbin_matrix(n: int, x: float) -> tuple[Floats, int]:
    """Marsaglia-Tsang-Wang's m x m matrix H for ``x = (k - h)/n``, 0 <= h < 1, and k."""
    k = math.ceil(n * x)
    h = k - n * x
    m = 2 * k - 1
    i = np.arange(m)
    lag = i[:, None] - i[None, :] + 1  # H[i, j] = 1/(i - j + 1)! below the superdiagonal
    fact = np.array([math.factorial(v) for v in range(m + 1)], dtype=np.float64)
    H: Floats = np.where(lag >= 0, 1.0 / fact[np.clip(lag, 0, m)], 0.0)
    powers = h ** np.arange(1, m + 1, dtype=np.float64)  # h^1 .. h^m
    H[:, 0] -= powers / fact[1:]  # (1 - h^(i+1)) / (i+1)!
    H[m - 1, :] -= powers[::-1] / fact[m:0:-1]  # (1 - h^(m-j)) / (m-j)!
    if 2 * h - 1 > 0:
        H[m - 1, 0] += (2 * h - 1) ** m / fact[m]
    return H, k


def _rescaled(a: Floats) -> tuple[Floats, int]:
    """``a / 2^e`` with its largest entry in [0.5, 1), and e (exact: a power-of-two scale)."""
    _, e = math.frexp(float(np.abs(a).max()) or 1.0)
    return np.ldexp(a, -e), e


def _durbin_cdf(n: int, x: float) -> float:
    """``P(D_n < x)`` by Durbin's matrix, H^n by repeated squaring (Marsaglia-Tsang-Wang 2003).

    The entries of H are non-negative, so the product loses no precision to cancellation;
    powers of two keep it within float range, and n!/n^n is applied in log space.
    """
    base, k = _durbin_matrix(n, x)
    result: Floats = np.eye(base.shape[0])
    base_exp = result_exp = 0
    power = n
    while True:
        if power & 1:
            result, e = _rescaled(result @ base)
            result_exp += base_exp + e
        power >>= 1
        if not power:
            break
        base, e = _rescaled(base @ base)
        base_exp = 2 * base_exp + e
    corner = float(result[k - 1, k - 1])
    if corner <= 0.0:
        return 0.0
    log_p = math.log(corner) + result_exp * math.log(2.0) + _log_factorial_over_power(n)
    return _clip(math.exp(min(log_p, 0.0)))


def _pelz_good_cdf(n: int, x: float) -> float:
    """``P(D_n <= x)`` by the Pelz-Good series K0 + K1/sqrt(n) + K2/n + K3/n^(3/2), z = x sqrt(n).

    With u_k = pi^2 (k - 1/2)^2 / (2 z^2) and v_k = pi^2 k^2 / (2 z^2), k = 1, 2, ...:
      K0 = sqrt(2 pi)/z sum e^-u_k
      K1 = sqrt(pi/2)/(3 z^4) sum (pi^2 (k-1/2)^2 - z^2) e^-u_k
      K2 = sqrt(pi/2)/(36 z^7) sum (6z^6 + 2z^4 + pi^2 (2z^4 - 5z^2)(k-1/2)^2
                                    + pi^4 (1 - 2z^2)(k-1/2)^4) e^-u_k
           - sqrt(pi/2)/(18 z^3) sum pi^2 k^2 e^-v_k
      K3 = sqrt(pi/2)/(3240 z^10) sum (-30z^6 - 90z^8 + pi^2 (135z^4 - 96z^6)(k-1/2)^2
                                       + pi^4 (212z^4 - 60z^2)(k-1/2)^4
                                       + pi^6 (5 - 30z^2)(k-1/2)^6) e^-u_k
           + sqrt(pi/2)/(108 z^6) sum (3 pi^2 k^2 z^2 - pi^4 k^4) e^-v_k
    """
    z = x * math.sqrt(n)
    z2 = z * z
    if math.pi**2 / (8 * z2) > 700.0:  # e^-u_1 underflows: the CDF is 0 in float64
        return 0.0
    # Terms until e^-u_k < e^-60: the polynomial factors grow far slower than that decays.
    kmax = int(math.ceil(z * math.sqrt(2 * (_LOG_NEGLIGIBLE + 20)) / math.pi)) + 2
    k = np.arange(1, kmax + 1, dtype=np.float64)
    a2 = (math.pi * (k - 0.5)) ** 2  # pi^2 (k - 1/2)^2
    b2 = (math.pi * k) ** 2  # pi^2 k^2
    eu = np.exp(-a2 / (2 * z2))
    ev = np.exp(-b2 / (2 * z2))
    z4, z6, z8 = z2 * z2, z2**3, z2**4
    s = math.sqrt(math.pi / 2)
    k0 = 2 * s / z * float(eu.sum())
    k1 = s / (3 * z4) * float(((a2 - z2) * eu).sum())
    poly2 = (6 * z6 + 2 * z4) + (2 * z4 - 5 * z2) * a2 + (1 - 2 * z2) * a2**2
    k2 = s / (36 * z**7) * float((poly2 * eu).sum()) - s / (18 * z**3) * float((b2 * ev).sum())
    poly3 = ((-30 * z6 - 90 * z8) + (135 * z4 - 96 * z6) * a2 + (212 * z4 - 60 * z2) * a2**2
             + (5 - 30 * z2) * a2**3)
    k3 = (s / (3240 * z**10) * float((poly3 * eu).sum())
          + s / (108 * z6) * float(((3 * z2 - b2) * b2 * ev).sum()))
    root = math.sqrt(n)
    return _clip(k0 + k1 / root + k2 / n + k3 / (n * root))
