"""Population Stability Index on quantile bins of the reference.

PSI = sum_i (c_i - r_i) * ln(c_i / r_i), where r_i and c_i are the fractions of the reference
and of the current window in bin i. Bins are the ``bins`` quantile bins of the reference (edges at
its k/bins quantiles, duplicate edges merged, so constant data gives a single bin); a value equal
to an edge falls in the bin above it. Empty bins are floored at 1e-4 so the log stays finite.
Every term is >= 0 (c - r and ln(c/r) share their sign), hence PSI >= 0; a common reading is
< 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._clean import finite_values

__all__ = ["PSI_FLOOR", "psi", "psi_edges", "psi_sorted"]

PSI_FLOOR = 1e-4

Floats = npt.NDArray[np.float64]


def _clean(values: npt.ArrayLike, name: str) -> Floats:
    return finite_values(values, name, "psi")


def psi_edges(reference: npt.ArrayLike, bins: int = 10) -> tuple[Floats, Floats]:
    """Interior bin edges (reference quantiles) and floored reference bin fractions."""
    if bins < 2:
        raise ValueError(f"psi: bins must be >= 2, got {bins}")
    ref = np.sort(_clean(reference, "reference"))
    edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
    return edges, _fractions(edges, ref)


def _fractions(edges: Floats, sorted_values: npt.NDArray[np.floating[Any]]) -> Floats:
    n = sorted_values.shape[0]
    below = np.searchsorted(sorted_values, edges, side="left")
    counts = np.diff(np.concatenate(([0], below, [n])))
    return np.maximum(counts / n, PSI_FLOOR)


def psi_sorted(edges: Floats, ref_fractions: Floats, cur_sorted: npt.NDArray[np.floating[Any]]) -> float:
    """PSI of a sorted, NaN-free, non-empty window against precomputed edges and fractions."""
    cur = _fractions(edges, cur_sorted)
    return float(np.sum((cur - ref_fractions) * np.log(cur / ref_fractions)))


def psi(reference: npt.ArrayLike, current: npt.ArrayLike, bins: int = 10) -> float:
    """PSI of ``current`` against ``reference`` on the reference's quantile bins; NaN dropped.

    >>> rng = np.random.default_rng(0)
    >>> ref = rng.normal(size=2000)
    >>> round(psi(ref, rng.normal(size=1000)), 3)  # same distribution: stable (< 0.1)
    0.007
    >>> round(psi(ref, rng.normal(0.5, size=1000)), 3)  # half a sigma away: large (> 0.25)
    0.305
    >>> psi(ref, ref)
    0.0
    """
    edges, ref_fractions = psi_edges(reference, bins)
    return psi_sorted(edges, ref_fractions, np.sort(_clean(current, "current")))
