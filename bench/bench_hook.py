"""Per-frame hook cost: ``Monitor.observe`` at 640x480 and 1920x1080, against the naive way.

Each observe call gets a pre-generated emulated frame (a cycle of distinct frames, so the
sampled pixels come from memory, not cache), the real BlazeFace outputs precomputed for
that frame, its latency and a synthetic 30 fps timestamp. Calls that ran the periodic
drift/rules evaluation or closed a summary window are kept out of the median and p95 and
reported apart. The two sizes are timed in alternating blocks so that a busy machine
slows both alike. The naive baseline is ``agent.stats.naive_stats``: the same image
statistics with OpenCV over the full frame. The parts alone (stats, decoder, push on a
few cached frames) are in bench/bench_stats.py; this one times the whole hook as it runs.

It then times ``observe`` inside the real loop (a fresh emulated frame, the model, then the
hook), which is what ``edgewatch run`` pays per frame.

Run: .venv/bin/python bench/bench_hook.py [--calls 5000] [--frames 200] [--loop-frames 900]
Targets: median <= 100 us at 640x480; median at 1920x1080 <= 1.2x the 640x480 median.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from typing import List, Optional, Tuple

import numpy as np
from _common import (
    FPS,
    Frame,
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

from agent.config import Config
from agent.inference import Model
from agent.monitor import Monitor
from agent.stats import naive_stats, to_gray

SIZES = ((640, 480), (1920, 1080))
TARGET_US = 100.0
TARGET_SCALE = 1.2


class HookCase:
    """One frame size: its frames, precomputed outputs, monitor and collected timings."""

    def __init__(self, size: Tuple[int, int], config: Config, model: Model, n_frames: int) -> None:
        self.size = size
        self.label = f"{size[0]}x{size[1]}"
        t = time.perf_counter()
        self.frames = make_frames(feed_uri(*size), n_frames)
        self.gen_s = time.perf_counter() - t
        self.outputs = precompute_outputs(model, self.frames)
        self.grays = [to_gray(f) for f in self.frames]
        self.monitor = build_monitor(config, model)
        self.i = 0  # frame counter: timestamp i / FPS, frame i % len(frames)
        self.steady: List[int] = []
        self.periodic: List[int] = []
        self.naive: List[int] = []
        self.naive_i = 0

    def prime(self, calls: int) -> None:
        """Untimed calls: build the decoder, finish the warm-up reference, warm the caches."""
        self.observe_block(calls, record=False)

    def observe_block(self, calls: int, record: bool = True) -> None:
        """Time ``calls`` observe calls, one perf_counter_ns pair around each."""
        mon, frames, outputs = self.monitor, self.frames, self.outputs
        n = len(frames)
        perf = time.perf_counter_ns
        for _ in range(calls):
            k = self.i % n
            outs, lat = outputs[k]
            ts = self.i / FPS
            # Periodic work moves these two; read them to sort the timing, not to steer it.
            before = (getattr(mon, "_next_eval", None), getattr(mon, "_window_start", None))
            t0 = perf()
            mon.observe(frames[k], outs, lat, ts)
            dt = perf() - t0
            self.i += 1
            if record:
                after = (getattr(mon, "_next_eval", None), getattr(mon, "_window_start", None))
                if after != before and before[0] is not None:
                    self.periodic.append(dt)
                else:
                    self.steady.append(dt)

    def naive_block(self, calls: int) -> None:
        """Time ``calls`` naive full-frame statistics on the same frames."""
        n = len(self.frames)
        perf = time.perf_counter_ns
        for _ in range(calls):
            k = self.naive_i % n
            prev: Optional[Frame] = self.grays[(k - 1) % n]
            t0 = perf()
            naive_stats(self.frames[k], prev)
            self.naive.append(perf() - t0)
            self.naive_i += 1


def in_loop(size: Tuple[int, int], config: Config, model: Model, frames: int) -> List[int]:
    """Observe timings inside a real source -> model -> observe loop (steady calls only).

    Each frame comes fresh from the emulated camera and has just been resized by the
    model's input step, as in ``edgewatch run``: this is the cost the loop actually pays.
    """
    from agent.sources import open_source

    mon = build_monitor(config, model)
    source = open_source(feed_uri(*size))
    perf = time.perf_counter_ns
    steady: List[int] = []
    try:
        for i in range(frames):
            frame = source.read()
            if frame is None:
                break
            outs, lat = model(frame)
            before = (mon._next_eval, mon._window_start)
            t0 = perf()
            mon.observe(frame, outs, lat, i / FPS)
            dt = perf() - t0
            if (mon._next_eval, mon._window_start) == before or before[0] is None:
                steady.append(dt)
    finally:
        source.close()
    return steady[1:]  # the first call builds the decoder


def print_hook_figures(cases: List[HookCase], config: Config, args: argparse.Namespace) -> None:
    """Median/p95 per size beside the naive statistics, and the two targets' PASS/FAIL."""
    st = config.stats
    print(f"\nMonitor.observe: stats sample {st.sample_width}x{st.sample_height}"
          f", ring buffer {st.capacity} frames, drift on (reference learned in the "
          f"untimed first {args.prime} calls), rules on; {args.calls} timed calls per size, "
          f"30 fps timestamps")
    medians = {}
    for case in cases:
        med, p95 = us_stats(np.array(case.steady, np.int64))
        nmed, _ = us_stats(np.array(case.naive, np.int64))
        pmed, pmax = (us_stats(np.array(case.periodic, np.int64))[0],
                      max(case.periodic, default=0) / 1e3)
        medians[case.label] = med
        print(f"  {case.label:>9}: median {med:6.1f} us, p95 {p95:6.1f} us  "
              f"({len(case.steady)} calls; {len(case.periodic)} periodic calls excluded: "
              f"median {pmed / 1e3:.1f} ms, max {pmax / 1e3:.1f} ms)")
        print(f"  {'':>9}  naive full-frame OpenCV stats: median {nmed:8.1f} us "
              f"= {nmed / med:.0f}x the whole hook ({len(case.naive)} calls)")
    base, big = medians["640x480"], medians["1920x1080"]
    print()
    print(f"target median <= {TARGET_US:.0f} us at 640x480: {base:.1f} us  "
          f"{verdict(base <= TARGET_US)}")
    print(f"target 1920x1080 <= {TARGET_SCALE}x 640x480: {big:.1f} / {base:.1f} us = "
          f"{big / base:.2f}x  {verdict(big <= TARGET_SCALE * base)}")


def print_in_loop(config: Config, model: Model, frames: int) -> None:
    """The hook's cost inside the real camera -> model -> observe loop (information)."""
    if not frames:
        return
    print(f"\nin the loop (fresh emulated frame -> model -> observe, {frames} "
          "frames per size):")
    loop_med = {}
    for size in SIZES:
        med, p95 = us_stats(np.array(in_loop(size, config, model, frames),
                                     np.int64))
        loop_med[size] = med
        print(f"  {size[0]}x{size[1]}: median {med:6.1f} us, p95 {p95:6.1f} us")
    base, big = loop_med[SIZES[0]], loop_med[SIZES[1]]
    # Info, not the target: after invoke() the model has evicted the hook's code and
    # data from the CPU caches, so the same call costs more here than on its own.
    print(f"(info) in the loop, 1920x1080 / 640x480 = {big / base:.2f}x; the model's "
          "invoke() leaves the hook's code and data out of cache")


def print_memory(mon: Monitor, config: Config, model: Model) -> None:
    """The monitor's fixed memory now and during a warm-up."""
    learning = mon.nbytes > mon.ring.nbytes
    fresh = build_monitor(config, model).nbytes
    print(f"monitor fixed memory (Monitor.nbytes): {mon.nbytes / 1e3:.0f} kB "
          f"{'while still learning its reference' if learning else 'after warm-up'} "
          f"(ring buffer {mon.ring.nbytes / 1e3:.0f} kB); "
          f"{fresh / 1e6:.2f} MB during a warm-up (ring + warm-up buffer)")


def main(argv: Optional[List[str]] = None) -> int:
    """Time the hook at both sizes and print the figures with PASS/FAIL beside each target."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=5000,
                   help="timed observe calls per size (default 5000)")
    p.add_argument("--frames", type=int, default=200, help="distinct frames per size (default 200)")
    p.add_argument("--naive", type=int, default=150,
                   help="naive full-frame calls per size (default 150)")
    p.add_argument("--prime", type=int, default=1900,
                   help="untimed calls first, past the 60 s warm-up at 30 fps (default 1900)")
    p.add_argument("--rounds", type=int, default=5, help="alternating blocks per size (default 5)")
    p.add_argument("--loop-frames", type=int, default=900,
                   help="frames per size timed inside the real camera -> model loop (default 900)")
    args = p.parse_args(argv)
    quiet()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(f"{tmp}/unused.db")
        model = load_model(config)
        cases = []
        for size in SIZES:
            case = HookCase(size, config, model, args.frames)
            print(f"{case.label}: {len(case.frames)} distinct emulated frames "
                  f"({sum(f.nbytes for f in case.frames) / 1e6:.0f} MB) generated in "
                  f"{case.gen_s:.1f} s, BlazeFace outputs precomputed")
            cases.append(case)
        for case in cases:
            case.prime(args.prime)
        block = max(1, args.calls // args.rounds)
        naive_block = max(1, args.naive // args.rounds)
        gc.collect()
        for r in range(args.rounds):
            order = cases if r % 2 == 0 else cases[::-1]
            for case in order:
                case.observe_block(block if r < args.rounds - 1 else args.calls - block * r)
            for case in order:
                last = args.naive - naive_block * r
                case.naive_block(naive_block if r < args.rounds - 1 else last)

        print_hook_figures(cases, config, args)
        print_in_loop(config, model, args.loop_frames)
        print_memory(cases[0].monitor, config, model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
