"""Input cleaning shared by the drift metrics."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def finite_values(values: npt.ArrayLike, name: str, metric: str) -> npt.NDArray[np.float64]:
    """``values`` as a flat float64 array without NaN; ValueError naming the metric when empty."""
    arr: npt.NDArray[np.float64] = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        raise ValueError(f"{metric}: {name} is empty after dropping NaN (pass at least one value)")
    return arr
