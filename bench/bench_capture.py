"""Capture's cost on the loop: the hook with capture on (nothing due) vs off, and a capture.

1. ``Monitor.observe`` at 640x480 with ``[capture]`` off and with it on but no capture due
   (no alert open, no normal or unsure frame due), timed in alternating blocks on the same
   frames and precomputed BlazeFace outputs. Target: no measurable difference.
2. One capture on the loop: ``Capture.offer`` for a frame that is due (an unsure frame
   every second of frame time), which copies the frame, its row and the outputs into a free
   slot and hands it to the storage thread. Between calls the bench waits, untimed, for the
   storage thread to free a slot, so every timed call is a capture, not a drop.
   Target: median < 200 us at 640x480 (the JPEG encode is off the loop).
3. For scale: what the storage thread spends per capture (JPEG encode and write), off the loop.

Run: .venv/bin/python bench/bench_capture.py [--calls 3000] [--captures 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, List, Tuple

import cv2
import numpy as np
from _common import (
    build_monitor,
    feed_uri,
    load_model,
    machine_line,
    make_config,
    make_frames,
    precompute_outputs,
    quiet,
    us_stats,
    verdict,
)

from agent.capture import Capture
from agent.config import Config
from agent.monitor import Monitor
from agent.observe import LAYOUT
from agent.samplestore import SampleWriter
from agent.store import Store

SIZE = (640, 480)
TARGET_US = 200.0
BLOCK = 100


def _capture(config: Config, store: Store, folder: Path) -> Capture:
    c = config.capture
    writer = SampleWriter(folder, max_mb=c.max_mb, normal_frames=c.normal_frames)
    return Capture(c, store, writer, camera="bench", layout=LAYOUT,
                   score_threshold=config.model.score_threshold)


def hook_on_vs_off(calls: int, frames: List[Any], outs: List[Tuple[List[Any], float]],
                   off: Monitor, on: Monitor) -> Tuple[np.ndarray, np.ndarray]:
    """Per-call ns of observe with capture off and on (nothing due), alternating blocks."""
    times = {id(off): [], id(on): []}  # type: ignore[var-annotated]
    ts = 1_700_000_000.0
    i = 0
    while i < calls:
        for mon in (off, on):
            for k in range(BLOCK):
                j = (i + k) % len(frames)
                t = time.perf_counter_ns()
                mon.observe(frames[j], outs[j][0], outs[j][1], ts + (i + k) / 30.0)
                times[id(mon)].append(time.perf_counter_ns() - t)
        i += BLOCK
    return np.asarray(times[id(off)], np.int64), np.asarray(times[id(on)], np.int64)


def capture_calls(capture: Capture, n: int, frames: List[Any],
                  outs: List[Tuple[List[Any], float]]) -> np.ndarray:
    """Per-call ns of offer() for frames that are due (unsure), waiting untimed for a slot."""
    row = np.full(len(LAYOUT.names), np.nan, np.float32)
    row[LAYOUT.index("top_score")] = capture._threshold + 0.01  # near the threshold: unsure
    row[LAYOUT.index("det_count")] = 1
    taken: List[int] = []
    ts = 1_800_000_000.0
    capture.offer(frames[0], outs[0][0], row, ts)  # the pool is allocated on the first frame
    for i in range(n):
        while all(s.busy for s in capture._slots):
            time.sleep(0.001)  # untimed: wait for the storage thread
        before = capture.counts["captured"]
        ts += 1.0
        t = time.perf_counter_ns()
        capture.offer(frames[i % len(frames)], outs[i % len(outs)][0], row, ts)
        elapsed = time.perf_counter_ns() - t
        if capture.counts["captured"] > before:
            taken.append(elapsed)
    return np.asarray(taken, np.int64)


def main() -> None:
    """Print the figures and the verdicts."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--captures", type=int, default=300)
    args = ap.parse_args()
    quiet()
    print(machine_line())
    tmp = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    base = make_config(str(tmp / "h.db"), capture={"normal_frames": 0, "unsure_per_hour": 0})
    model = load_model(base)
    frames = make_frames(feed_uri(*SIZE), 60)
    outs = precompute_outputs(model, frames)
    with Store(str(tmp / "h.db")) as store:
        off = build_monitor(base, model)
        on = build_monitor(base, model)
        on.tap = _capture(base, store, tmp / "samples")
        off_ns, on_ns = hook_on_vs_off(args.calls, frames, outs, off, on)
        (m_off, p_off), (m_on, p_on) = us_stats(off_ns), us_stats(on_ns)
        print(f"hook 640x480, capture off:             median {m_off:7.1f} us  p95 {p_off:7.1f} us")
        print(f"hook 640x480, capture on, nothing due: median {m_on:7.1f} us  p95 {p_on:7.1f} us"
              f"  (difference {m_on - m_off:+.1f} us)")
        due = base.with_values(capture__unsure_per_hour=3600, capture__max_mb=50,
                               capture__per_hour=100_000)
        capture = _capture(due, store, tmp / "samples")
        taken = capture_calls(capture, args.captures, frames, outs)
        med, p95 = us_stats(taken)
        print(f"capture on the loop 640x480: median {med:.1f} us  p95 {p95:.1f} us  "
              f"({len(taken)} captures, {capture.counts['dropped']} dropped) "
              f"target < {TARGET_US:.0f} us: {verdict(med < TARGET_US)}")
        store.submit(lambda db: None).result(60)  # the storage thread has caught up
    enc = []
    for f in frames[:30]:
        t = time.perf_counter_ns()
        cv2.imencode(".jpg", f, [int(cv2.IMWRITE_JPEG_QUALITY), 85])
        enc.append(time.perf_counter_ns() - t)
    print(f"storage thread, JPEG encode 640x480 q85 (off the loop): median "
          f"{us_stats(np.asarray(enc, np.int64))[0]:.0f} us")


if __name__ == "__main__":
    main()
