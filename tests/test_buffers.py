"""RingBuffer: fixed memory, chronological reads, property tests against a plain list."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.buffers import RingBuffer

NAMES = ("a", "b", "c")


def _row(i: int) -> np.ndarray:
    return np.array([i, -i, i * 0.5], np.float32)


def test_empty_buffer_reads_nothing() -> None:
    rb = RingBuffer(NAMES, 4)
    ts, values = rb.last(10)
    assert ts.shape == (0,) and values.shape == (0, 3)
    assert rb.size == 0 and rb.count == 0
    assert rb.since(0.0)[0].shape == (0,)


def test_wraps_and_keeps_newest_rows() -> None:
    rb = RingBuffer(NAMES, 4)
    for i in range(10):
        rb.push(float(i), _row(i))
    assert (rb.count, rb.size, rb.capacity) == (10, 4, 4)
    ts, values = rb.last(100)
    assert ts.tolist() == [6.0, 7.0, 8.0, 9.0]
    assert values[:, 1].tolist() == [-6.0, -7.0, -8.0, -9.0]
    assert rb.column("c").tolist() == [3.0, 3.5, 4.0, 4.5]
    assert rb.nbytes == 4 * 3 * 4 + 4 * 8


def test_last_returns_a_copy() -> None:
    rb = RingBuffer(NAMES, 4)
    rb.push(1.0, _row(1))
    _, values = rb.last(1)
    values[0, 0] = 99.0
    assert rb.last(1)[1][0, 0] == 1.0


def test_push_writes_in_place_without_new_storage() -> None:
    rb = RingBuffer(NAMES, 8)
    data_id = id(rb._data)
    ptr = rb._data.__array_interface__["data"][0]
    for i in range(20):
        rb.push(float(i), _row(i))
    assert id(rb._data) == data_id
    assert rb._data.__array_interface__["data"][0] == ptr


def test_since_uses_timestamps_across_the_wrap() -> None:
    rb = RingBuffer(NAMES, 5)
    for i in range(12):
        rb.push(100.0 + i, _row(i))
    ts, values = rb.since(109.0)
    assert ts.tolist() == [109.0, 110.0, 111.0]
    assert values[:, 0].tolist() == [9.0, 10.0, 11.0]
    assert rb.since(0.0)[0].tolist() == [107.0, 108.0, 109.0, 110.0, 111.0]
    assert rb.since(1000.0)[0].size == 0


def test_clear_and_errors() -> None:
    rb = RingBuffer(NAMES, 3)
    rb.push(1.0, _row(1))
    rb.clear()
    assert rb.size == 0 and rb.last(3)[0].size == 0
    with pytest.raises(KeyError, match="valid: a, b, c"):
        rb.column("zzz")
    with pytest.raises(ValueError):
        RingBuffer(NAMES, 0)
    with pytest.raises(ValueError):
        RingBuffer(("a", "a"), 3)


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 12),
    steps=st.lists(st.floats(0, 5, allow_nan=False), max_size=40),
    n=st.integers(0, 50),
    t0=st.floats(-1, 250, allow_nan=False),
)
def test_matches_the_tail_of_a_plain_list(capacity: int, steps: list[float], n: int,
                                          t0: float) -> None:
    rb = RingBuffer(NAMES, capacity)
    pushed: list[tuple[float, np.ndarray]] = []
    t = 0.0
    for i, dt in enumerate(steps):
        t += dt
        rb.push(t, _row(i))
        pushed.append((t, _row(i)))
    held = pushed[-capacity:]
    assert rb.count == len(pushed) and rb.size == len(held)
    tail = held[-n:] if n else []
    ts, values = rb.last(n)
    assert ts.tolist() == [p[0] for p in tail]
    assert values.reshape(-1, 3).tolist() == [p[1].tolist() for p in tail]
    ts, values = rb.since(t0)
    expect = [p for p in held if p[0] >= t0]
    assert ts.tolist() == [p[0] for p in expect]
    assert values[:, 0].tolist() == [p[1][0] for p in expect]
