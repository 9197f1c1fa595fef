"""Benchmark one drift evaluation against a loop of scipy.stats.ks_2samp, in the same run.

16 features of AR(1) data (rho = 0.98, like slowly changing image statistics), a reference of
108,000 frames (one hour at 30 fps, kept as a 2048-point sketch per feature) and windows of 4096
frames. Prints the median milliseconds of one full ``evaluate`` (KS, PSI, Wasserstein and
summaries for all 16 features) beside 16 calls of ``scipy.stats.ks_2samp`` on the raw reference
data (statistic and p-value only), their ratio, and PASS/FAIL against the 2 ms target (never
fails on timing). Run: .venv/bin/python bench/bench_drift.py
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.signal import lfilter

from agent.drift import build_reference, evaluate

FEATURES = 16
REFERENCE_FRAMES = 108_000
WINDOW = 4096
TARGET_MS = 2.0


def ar1(seed: int, frames: int, rho: float = 0.98) -> npt.NDArray[np.float32]:
    """Seeded AR(1) series (frames, FEATURES) with unit marginal variance, float32."""
    noise = np.random.default_rng(seed).normal(size=(frames, FEATURES)) * math.sqrt(1 - rho**2)
    return np.asarray(lfilter([1.0], [1.0, -rho], noise, axis=0), dtype=np.float32)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    """Build the reference, time both ways on a few windows, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60, help="timed evaluate calls")
    parser.add_argument("--scipy-repeats", type=int, default=5, help="timed scipy loops")
    args = parser.parse_args()

    reference_data = ar1(1, REFERENCE_FRAMES)
    start = time.perf_counter()
    reference = build_reference(
        reference_data, [f"f{i}" for i in range(FEATURES)], window_frames=WINDOW,
        eval_stride_frames=WINDOW // 4, fps=30.0, model_sha256="0" * 64, model_path="bench",
        origin="baseline", source="AR(1) rho=0.98", created=0.0)
    build_s = time.perf_counter() - start
    stream = ar1(2, 8 * WINDOW)
    windows = [stream[i * WINDOW:(i + 1) * WINDOW] for i in range(8)]
    state = {"i": 0}

    def one_evaluate() -> None:
        state["i"] += 1
        evaluate(reference, windows[state["i"] % len(windows)])

    def scipy_loop() -> None:
        state["i"] += 1
        window = windows[state["i"] % len(windows)]
        for f in range(FEATURES):
            stats.ks_2samp(reference_data[:, f], window[:, f], method="asymp")

    ours = median_ms(one_evaluate, args.repeats)
    theirs = median_ms(scipy_loop, args.scipy_repeats)
    print(f"reference: {REFERENCE_FRAMES} frames x {FEATURES} features -> sketch "
          f"{reference.sketch.shape[1]} values/feature, {len(reference.to_bytes()) / 1024:.0f} KiB,"
          f" built (with calibration) in {build_s:.2f} s")
    print(f"edgewatch evaluate (KS+PSI+Wasserstein+summaries, {FEATURES} x {WINDOW}): "
          f"{ours:.2f} ms median")
    print(f"scipy.stats.ks_2samp loop ({FEATURES} features, raw reference):      "
          f"{theirs:.2f} ms median")
    print(f"speed-up: {theirs / ours:.1f}x")
    verdict = "PASS" if ours <= TARGET_MS else "FAIL"
    print(f"target: evaluate <= {TARGET_MS:.1f} ms median on the 2-core device: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
