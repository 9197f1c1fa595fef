"""A fixed-memory ring buffer of per-frame feature rows with timestamps.

``push`` is on the per-frame hot path: it copies one row into preallocated storage and
never allocates. The readers (``last``, ``since``, ``column``) return chronological copies
and run on the periodic checks, not per frame.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.float32]
Stamps = npt.NDArray[np.float64]


class RingBuffer:
    """The last ``capacity`` float32 rows of ``len(names)`` features, each with a float64 timestamp.

    >>> rb = RingBuffer(("a", "b"), capacity=3)
    >>> for i in range(5):
    ...     rb.push(float(i), np.array([i, -i], np.float32))
    >>> ts, values = rb.last(2)
    >>> ts.tolist(), values[:, 0].tolist(), rb.count, rb.size
    ([3.0, 4.0], [3.0, 4.0], 5, 3)
    >>> ts, values = rb.since(3.5)  # timestamps >= 3.5
    >>> ts.tolist(), rb.column("b").tolist()
    ([4.0], [-2.0, -3.0, -4.0])
    """

    def __init__(self, names: Sequence[str], capacity: int) -> None:
        names = tuple(names)
        if not names:
            raise ValueError("names must list at least one feature")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {names!r}")
        if int(capacity) < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._names = names
        self._index = {n: i for i, n in enumerate(names)}
        self._capacity = int(capacity)
        self._data: Rows = np.zeros((self._capacity, len(names)), dtype=np.float32)
        self._ts: Stamps = np.zeros(self._capacity, dtype=np.float64)
        self._count = 0

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names, one per column."""
        return self._names

    @property
    def capacity(self) -> int:
        """Maximum number of rows held."""
        return self._capacity

    @property
    def count(self) -> int:
        """Rows pushed since creation or the last clear()."""
        return self._count

    @property
    def size(self) -> int:
        """Rows currently held: min(count, capacity)."""
        return min(self._count, self._capacity)

    @property
    def nbytes(self) -> int:
        """Bytes held by the value and timestamp arrays."""
        return int(self._data.nbytes + self._ts.nbytes)

    def push(self, ts: float, row: npt.ArrayLike) -> None:
        """Append one row (len(names) values) stamped ``ts``; overwrites the oldest when full."""
        i = self._count % self._capacity
        self._data[i] = row
        self._ts[i] = ts
        self._count += 1

    def _order(self, n: int) -> npt.NDArray[np.int64]:
        """Storage indices of the newest ``n`` rows, oldest first."""
        end = self._count
        return np.arange(end - n, end) % self._capacity

    def last(self, n: int) -> tuple[Stamps, Rows]:
        """Copies of the newest ``n`` timestamps and rows (fewer if fewer held), oldest first."""
        n = max(0, min(int(n), self.size))
        idx = self._order(n)
        return self._ts[idx], self._data[idx]

    def since(self, t0: float) -> tuple[Stamps, Rows]:
        """Copies of the rows with timestamp >= t0, oldest first (timestamps must not decrease)."""
        size = self.size
        start = self._count - size
        lo, hi = 0, size
        cap = self._capacity
        while lo < hi:  # binary search over the chronological view without building it
            mid = (lo + hi) // 2
            if self._ts[(start + mid) % cap] < t0:
                lo = mid + 1
            else:
                hi = mid
        return self.last(size - lo)

    def column(self, name: str) -> Rows:
        """A chronological copy of one feature's held values."""
        try:
            j = self._index[name]
        except KeyError:
            raise KeyError(f"unknown feature {name!r} (valid: {', '.join(self._names)})") from None
        values: Rows = self._data[self._order(self.size), j]
        return values

    def clear(self) -> None:
        """Forget every row (the storage is kept)."""
        self._count = 0
