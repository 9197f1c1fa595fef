"""Input cleaning shared by the drift metrics."""

from __future__ import annotations

import numpy as np


def finite_values(values: np.ndarray, name: str, metric: str) -> np.ndarray:
    """``values`` as a flat float64 array without NaN; ValueError naming the metric when empty."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        raise ValueError(f"{metric}: {name} is empty after dropping NaN (pass at least one value)")
    return arr
