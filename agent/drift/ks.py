"""Two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value, without scipy.

``ks_2samp`` agrees with ``scipy.stats.ks_2samp(a, b, method="asymp")``: the statistic is
computed the same way and the p-value is ``kstwo.sf(d, round(n1*n2/(n1+n2)))``, i.e. the
two-sided one-sample Kolmogorov distribution of Simard & L'Ecuyer (2011).

The Kolmogorov-distribution code below is ported from SciPy (``scipy/stats/_ksstats.py``,
``_kolmogn`` and helpers, by Paul van Mulbregt) and the one-sided Smirnov survival function
follows the Birnbaum-Tingey sum of ``xsf/cephes/kolmogorov.h``. SciPy is distributed under
the BSD 3-Clause License, Copyright (c) 2001-2002 Enthought, Inc. 2003, SciPy Developers.
Differences: the Smirnov sum is evaluated in float64 log space instead of double-double, and
n!/n^n is applied in log space; both agree with SciPy far below 1e-9.

``ks_statistic_sorted`` is the fast path used by the detector: statistic only, inputs sorted.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._clean import finite_values

__all__ = ["KSResult", "kolmogorov_sf", "ks_2samp", "ks_grid", "ks_pvalue", "ks_statistic_grid",
           "ks_statistic_sorted"]

_E128 = 128
_EP128 = float(np.ldexp(1.0, _E128))
_EM128 = float(np.ldexp(1.0, -_E128))
_SQRT2PI = math.sqrt(2 * math.pi)
_LOG_2PI = math.log(2 * math.pi)
_MIN_LOG = -708
_MINLOG_CEPHES = -7.08396418532264106224e2
_SQRT3 = math.sqrt(3)
_PI2 = math.pi**2
_PI4 = math.pi**4
_PI6 = math.pi**6
_SMIRNOV_MAX_COMPUTE_N = 1000000
_STIRLING_COEFFS = [-2.955065359477124183e-2, 6.4102564102564102564e-3,
                    -1.9175269175269175269e-3, 8.4175084175084175084e-4,
                    -5.952380952380952381e-4, 7.9365079365079365079e-4,
                    -2.7777777777777777778e-3, 8.3333333333333333333e-2]


class KSResult(NamedTuple):
    """Two-sample KS statistic (sup of the ECDF difference) and its asymptotic p-value."""

    statistic: float
    pvalue: float


def _clean(values: np.ndarray, name: str) -> np.ndarray:
    return finite_values(values, name, "ks_2samp")


def ks_2samp(reference: np.ndarray, current: np.ndarray) -> KSResult:
    """Two-sided two-sample KS test; matches scipy's ``ks_2samp(method="asymp")``; NaN dropped."""
    data1 = np.sort(_clean(reference, "reference"))
    data2 = np.sort(_clean(current, "current"))
    n1, n2 = data1.size, data2.size
    data_all = np.concatenate([data1, data2])
    cdf1 = np.searchsorted(data1, data_all, side="right") / n1
    cdf2 = np.searchsorted(data2, data_all, side="right") / n2
    cddiffs = cdf1 - cdf2
    min_s = float(np.clip(-cddiffs.min(), 0, 1))
    max_s = float(cddiffs.max())
    d = max(min_s, max_s)
    return KSResult(d, ks_pvalue(d, n1, n2))


def ks_pvalue(statistic: float, n1: float, n2: float) -> float:
    """Asymptotic two-sided p-value of a two-sample KS statistic for sample sizes n1, n2."""
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = round(m * n / (m + n)) if m + n > 0 else 0
    # np.round rounds half to even, as scipy does; Python's round() does the same.
    if en < 1:
        return float("nan")
    return kolmogorov_sf(int(en), float(statistic))


def kolmogorov_sf(n: int, x: float) -> float:
    """P(D_n > x) for the two-sided one-sample KS statistic (scipy ``kstwo.sf(x, n)``)."""
    if math.isnan(x):
        return float("nan")
    if x <= 0.5 / n:  # scipy's kstwo support starts at 0.5/n
        return 1.0
    return _clip(_kolmogn(n, x, cdf=False))


def ks_statistic_sorted(
    ref_sorted: np.ndarray,
    cur_sorted: np.ndarray,
    ref_cdf_at_ref: np.ndarray | None = None,
) -> float:
    """KS statistic of two sorted, NaN-free, non-empty 1-D samples (fast path, no p-value).

    ``ref_cdf_at_ref`` (``searchsorted(ref, ref, "right") / len(ref)``) may be precomputed.
    """
    m, n = ref_sorted.shape[0], cur_sorted.shape[0]
    if ref_cdf_at_ref is None:
        ref_cdf_at_ref = np.searchsorted(ref_sorted, ref_sorted, side="right") / m
    # ECDF difference evaluated at every point of both samples, as scipy does on data_all.
    at_ref = ref_cdf_at_ref - np.searchsorted(cur_sorted, ref_sorted, side="right") / n
    at_cur = (np.searchsorted(ref_sorted, cur_sorted, side="right") / m
              - np.searchsorted(cur_sorted, cur_sorted, side="right") / n)
    d = max(at_ref.max(), at_cur.max(), -at_ref.min(), -at_cur.min())
    return float(min(max(d, 0.0), 1.0))


def ks_grid(ref_sorted: np.ndarray, size: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid for ``ks_statistic_grid``: ``size`` evenly spaced points of a sorted reference
    sample with the reference ECDF at each point and just below it."""
    m = ref_sorted.shape[0]
    # Evenly spaced ranks including the minimum and maximum, so separation still gives 1.
    idx = np.unique(np.round(np.linspace(0, m - 1, min(size, m))).astype(np.int64))
    grid = ref_sorted[idx]
    return (grid, np.searchsorted(ref_sorted, grid, side="right") / m,
            np.searchsorted(ref_sorted, grid, side="left") / m)


def ks_statistic_grid(grid: np.ndarray, cdf_at: np.ndarray, cdf_below: np.ndarray,
                      cur_sorted: np.ndarray) -> float:
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
# Kolmogorov distribution (ported from scipy/stats/_ksstats.py, BSD-3-Clause, see module doc)
# ---------------------------------------------------------------------------------------------


def _clip(p: float) -> float:
    return float(min(max(p, 0.0), 1.0))


def _select(cdfprob: float, sfprob: float, cdf: bool) -> float:
    return _clip(cdfprob if cdf else sfprob)


def _log_nfactorial_div_n_pow_n(n: int) -> float:
    rn = 1.0 / n
    return float(np.log(n) / 2 - n + _LOG_2PI / 2 + rn * np.polyval(_STIRLING_COEFFS, rn / n))


def _kolmogn_dmtw(n: int, d: float) -> float:
    """Pr(D_n <= d) by the Marsaglia-Tsang-Wang form of Durbin's matrix algorithm."""
    if d >= 1.0:
        return 1.0
    nd = n * d
    if nd <= 0.5:
        return 0.0
    k = int(np.ceil(nd))
    h = k - nd
    m = 2 * k - 1
    H = np.zeros([m, m])
    intm = np.arange(1, m + 1)
    v = 1.0 - h**intm
    w = np.empty(m)
    fac = 1.0
    for j in intm:
        w[j - 1] = fac
        fac /= j
        v[j - 1] *= fac
    tt = max(2 * h - 1.0, 0) ** m - 2 * h**m
    v[-1] = (1.0 + tt) * fac
    for i in range(1, m):
        H[i - 1:, i] = w[:m - i + 1]
    H[:, 0] = v
    H[-1, :] = np.flip(v, axis=0)
    Hpwr = np.eye(m)
    nn = n
    expnt = 0
    Hexpnt = 0
    while nn > 0:
        if nn % 2:
            Hpwr = np.matmul(Hpwr, H)
            expnt += Hexpnt
        H = np.matmul(H, H)
        Hexpnt *= 2
        if np.abs(H[k - 1, k - 1]) > _EP128:
            H /= _EP128
            Hexpnt += _E128
        nn = nn // 2
    p = float(Hpwr[k - 1, k - 1])
    if p <= 0.0:
        return 0.0
    # Multiply by n!/n^n in log space (scipy loops n times with rescaling).
    logp = math.log(p) + expnt * math.log(2.0) + _log_nfactorial_div_n_pow_n(n)
    return math.exp(logp) if logp < 700 else float("inf")


def _pomeranz_j1j2(i: int, n: int, ll: int, ceilf: int, roundf: int) -> tuple[int, int]:
    if i == 0:
        j1, j2 = -ll - ceilf - 1, ll + ceilf - 1
    else:
        ip1div2, ip1mod2 = divmod(i + 1, 2)
        if ip1mod2 == 0:
            if ip1div2 == n + 1:
                j1, j2 = n - ll - ceilf - 1, n + ll + ceilf - 1
            else:
                j1, j2 = ip1div2 - 1 - ll - roundf - 1, ip1div2 + ll - 1 + ceilf - 1
        else:
            j1, j2 = ip1div2 - 1 - ll - 1, ip1div2 + ll + roundf - 1
    return max(j1 + 2, 0), min(j2, n)


def _kolmogn_pomeranz(n: int, x: float) -> float:
    """Pr(D_n <= x) by the Pomeranz (1974) recursion."""
    t = n * x
    ll = int(np.floor(t))
    f = 1.0 * (t - ll)
    g = min(f, 1.0 - f)
    ceilf = 1 if f > 0 else 0
    roundf = 1 if f > 0.5 else 0
    npwrs = 2 * (ll + 1)
    gpower = np.empty(npwrs)
    twogpower = np.empty(npwrs)
    onem2gpower = np.empty(npwrs)
    gpower[0] = twogpower[0] = onem2gpower[0] = 1.0
    expnt = 0
    g_n, two_g_n, one_m2g_n = g / n, 2 * g / n, (1 - 2 * g) / n
    for m in range(1, npwrs):
        gpower[m] = gpower[m - 1] * g_n / m
        twogpower[m] = twogpower[m - 1] * two_g_n / m
        onem2gpower[m] = onem2gpower[m - 1] * one_m2g_n / m
    V0 = np.zeros([npwrs])
    V1 = np.zeros([npwrs])
    V1[0] = 1
    V0s, V1s = 0, 0
    j1, j2 = _pomeranz_j1j2(0, n, ll, ceilf, roundf)
    for i in range(1, 2 * n + 2):
        k1 = j1
        V0, V1 = V1, V0
        V0s, V1s = V1s, V0s
        V1.fill(0.0)
        j1, j2 = _pomeranz_j1j2(i, n, ll, ceilf, roundf)
        if i == 1 or i == 2 * n + 1:
            pwrs = gpower
        else:
            pwrs = twogpower if i % 2 else onem2gpower
        ln2 = j2 - k1 + 1
        if ln2 > 0:
            conv = np.convolve(V0[k1 - V0s:k1 - V0s + ln2], pwrs[:ln2])
            conv_start = j1 - k1
            conv_len = j2 - j1 + 1
            V1[:conv_len] = conv[conv_start:conv_start + conv_len]
            if 0 < np.max(V1) < _EM128:
                V1 *= _EP128
                expnt -= _E128
            V1s = V0s + j1 - k1
    ans = float(V1[n - V1s])
    for m in range(1, n + 1):
        if abs(ans) > _EP128:
            ans *= _EM128
            expnt += _E128
        ans *= m
    if expnt != 0:
        ans = float(np.ldexp(ans, expnt))
    return _clip(ans)


def _kolmogn_pelzgood(n: int, x: float) -> float:
    """Pelz-Good approximation to Pr(D_n <= x)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    z = np.sqrt(n) * x
    zsquared, zthree, zfour, zsix = z**2, z**3, z**4, z**6
    qlog = -_PI2 / 8 / zsquared
    if qlog < _MIN_LOG:
        return 0.0
    q = np.exp(qlog)
    k1a = -zsquared
    k1b = _PI2 / 4
    k2a = 6 * zsix + 2 * zfour
    k2b = (2 * zfour - 5 * zsquared) * _PI2 / 4
    k2c = _PI4 * (1 - 2 * zsquared) / 16
    k3d = _PI6 * (5 - 30 * zsquared) / 64
    k3c = _PI4 * (-60 * zsquared + 212 * zfour) / 16
    k3b = _PI2 * (135 * zfour - 96 * zsix) / 4
    k3a = -30 * zsix - 90 * z**8
    K0to3 = np.zeros(4)
    maxk = int(np.ceil(16 * z / np.pi))
    for k in range(maxk, 0, -1):
        m = 2 * k - 1
        msquared, mfour, msix = m**2, m**4, m**6
        qpower = np.power(q, 8 * k)
        coeffs = np.array([1.0,
                           k1a + k1b * msquared,
                           k2a + k2b * msquared + k2c * mfour,
                           k3a + k3b * msquared + k3c * mfour + k3d * msix])
        K0to3 *= qpower
        K0to3 += coeffs
    K0to3 *= q
    K0to3 *= _SQRT2PI
    K0to3 /= np.array([z, 6 * zfour, 72 * z**7, 6480 * z**10])
    q = np.exp(-_PI2 / 2 / zsquared)
    ks = np.arange(maxk, 0, -1)
    ksquared = ks**2
    sqrt3z = _SQRT3 * z
    kspi = np.pi * ks
    qpwers = q**ksquared
    k2extra = np.sum(ksquared * qpwers) * _PI2 * _SQRT2PI / (-36 * zthree)
    K0to3[2] += k2extra
    k3extra = np.sum((sqrt3z + kspi) * (sqrt3z - kspi) * ksquared * qpwers)
    K0to3[3] += k3extra * _PI2 * _SQRT2PI / (216 * zsix)
    K0to3 /= np.power(n * 1.0, np.arange(4) / 2.0)
    return float(np.sum(K0to3))


def _smirnov_sf(n: int, x: float) -> float:
    """One-sided Smirnov survival function P(D_n^+ >= x) (scipy.special.smirnov)."""
    if n == 1:
        return x
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    nx = n * x
    nxfl = math.floor(nx)
    if nxfl == 0 or (nxfl == 1 and nx == 1.0):
        return 1.0 - x * (1.0 + x) ** (n - 1)
    if -2 * n * x * x < _MINLOG_CEPHES:
        return 0.0
    if nxfl >= n - 1:
        return (1.0 - x) ** n
    if n > _SMIRNOV_MAX_COMPUTE_N:
        logp = -((6.0 * n * x + 1) ** 2) / 18.0 / n
        if logp < -math.log(2):
            return math.exp(logp)
        return 1.0 - (-math.expm1(logp))
    # Birnbaum-Tingey: sf = x * sum_{v: 1-x-v/n > 0} C(n,v) (x+v/n)^(v-1) (1-x-v/n)^(n-v)
    v = np.arange(0, n + 1, dtype=np.float64)
    rest = (n - v - nx) / n
    v = v[rest > 0]
    rest = rest[rest > 0]
    logc = np.concatenate([[0.0], np.cumsum(np.log((n - v[1:] + 1) / v[1:]))])
    logt = logc + (v - 1) * np.log(x + v / n) + (n - v) * np.log(rest) + math.log(x)
    top = float(logt.max())
    return _clip(math.exp(top) * float(np.sum(np.exp(logt - top))))


def _kolmogn(n: int, x: float, cdf: bool = True) -> float:
    """CDF (or SF) of the two-sided one-sample KS statistic (Simard & L'Ecuyer 2011)."""
    if x >= 1.0:
        return _select(1.0, 0.0, cdf)
    if x <= 0.0:
        return _select(0.0, 1.0, cdf)
    t = n * x
    if t <= 1.0:
        if t <= 0.5:
            return _select(0.0, 1.0, cdf)
        if n <= 140:
            prob = float(np.prod(np.arange(1, n + 1) * (1.0 / n) * (2 * t - 1)))
        else:
            prob = math.exp(_log_nfactorial_div_n_pow_n(n) + n * math.log(2 * t - 1))
        return _select(prob, 1.0 - prob, cdf)
    if t >= n - 1:
        prob = 2 * (1.0 - x) ** n
        return _select(1 - prob, prob, cdf)
    if x >= 0.5:
        prob = 2 * _smirnov_sf(n, x)
        return _select(1.0 - prob, prob, cdf)
    nxsquared = t * x
    if n <= 140:
        if nxsquared <= 0.754693:
            prob = _kolmogn_dmtw(n, x)
            return _select(prob, 1.0 - prob, cdf)
        if nxsquared <= 4:
            prob = _kolmogn_pomeranz(n, x)
            return _select(prob, 1.0 - prob, cdf)
        prob = 2 * _smirnov_sf(n, x)
        return _select(1.0 - prob, prob, cdf)
    if not cdf:
        if nxsquared >= 370.0:
            return 0.0
        if nxsquared >= 2.2:
            return _clip(2 * _smirnov_sf(n, x))
    if nxsquared >= 18.0:
        cdfprob = 1.0
    elif n <= 100000 and n * x**1.5 <= 1.4:
        cdfprob = _kolmogn_dmtw(n, x)
    else:
        cdfprob = _kolmogn_pelzgood(n, x)
    return _select(cdfprob, 1.0 - cdfprob, cdf)
