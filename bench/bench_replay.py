"""Replay throughput with monitoring against a plain model loop, and resident memory over time.

(a) ``agent.service.replay`` (source -> model -> monitor -> SQLite store, MQTT off) against a
    plain loop that only reads the same emulated 640x480 feed and calls ``model(frame)``,
    alternating the two for a few rounds on one loaded model. Both fps cover the frame
    loop only (not opening the store or closing it).
(b) The same ``replay`` for many frames at 30 fps synthetic timestamps, so windows close and
    drift and rules run as live, with RSS read at frame 10,000 and at the end. To keep it
    short the frames come from a cycle of pre-generated emulated frames instead of being
    generated each time; the cycle's bytes are reported and subtracted.

Run: .venv/bin/python bench/bench_replay.py [--frames 200000] [--rounds 3] [--round-frames 3000]
Targets: replay fps >= 90% of the plain loop; RSS growth < 1 MB from frame 10,000 to the end;
total RSS < 120 MB with the model loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from _common import (
    FPS,
    THREADS,
    Frame,
    feed_uri,
    load_model,
    machine_line,
    make_config,
    make_frames,
    quiet,
    rss_mb,
    verdict,
)

from agent.inference import Model
from agent.service import replay
from agent.sources import open_source

SIZE = (640, 480)
TARGET_RATIO = 0.90
TARGET_GROWTH_MB = 1.0
TARGET_TOTAL_MB = 120.0
FIRST_CHECK = 10_000


def plain_loop(model: Model, uri: str, frames: int) -> float:
    """Seconds to read ``frames`` frames from ``uri`` and run the model on each."""
    source = open_source(uri)
    try:
        t0 = time.perf_counter()
        for _ in range(frames):
            frame = source.read()
            if frame is None:
                break
            model(frame)
        return time.perf_counter() - t0
    finally:
        source.close()


def throughput(model: Model, tmp: str, rounds: int, frames: int) -> None:
    """Print (a): replay fps against the plain loop, alternating which goes first."""
    uri = feed_uri(*SIZE)
    plain_s: List[float] = []
    replay_s: List[float] = []
    print(f"(a) throughput: emulated {SIZE[0]}x{SIZE[1]} feed generated per frame, BlazeFace "
          f"({model.runtime}), {rounds} rounds x {frames} frames each, alternating")
    def run_plain(r: int) -> None:
        plain_s.append(plain_loop(model, uri, frames))

    def run_replay(r: int) -> None:
        config = make_config(os.path.join(tmp, f"replay-{r}.db"))
        result = replay(config, open_source(uri), fps=FPS, max_frames=frames, model=model)
        assert result.frames == frames, result
        replay_s.append(result.seconds)

    for r in range(rounds):
        for run in ((run_plain, run_replay) if r % 2 == 0 else (run_replay, run_plain)):
            run(r)
        print(f"    round {r + 1}: plain {frames / plain_s[-1]:6.1f} fps, "
              f"replay with monitoring {frames / replay_s[-1]:6.1f} fps "
              f"({plain_s[-1] / replay_s[-1]:.1%})")
    plain_fps = rounds * frames / sum(plain_s)
    replay_fps = rounds * frames / sum(replay_s)
    ratio = replay_fps / plain_fps
    cost_ms = (sum(replay_s) - sum(plain_s)) / (rounds * frames) * 1e3
    print(f"    all rounds: plain {plain_fps:.1f} fps, replay {replay_fps:.1f} fps; monitoring + "
          f"store cost {cost_ms:.3f} ms/frame")
    print(f"target replay >= {TARGET_RATIO:.0%} of plain: {ratio:.1%}  "
          f"{verdict(ratio >= TARGET_RATIO)}")


class CycleSource:
    """A finite source that repeats pre-generated frames and reads RSS at chosen frame counts."""

    def __init__(self, frames: Sequence[Frame], total: int,
                 checkpoints: Sequence[int]) -> None:
        self._frames = list(frames)
        self._total = total
        self._checks = sorted(set(c for c in checkpoints if 0 < c <= total))
        self.index = 0
        self.rss: Dict[int, float] = {}
        self._t0 = time.perf_counter()

    @property
    def fps(self) -> Optional[float]:
        """Nominal rate of the synthetic timestamps."""
        return FPS

    @property
    def name(self) -> str:
        """A human name."""
        return f"cycle of {len(self._frames)} emulated frames"

    @property
    def live(self) -> bool:
        """Not a camera."""
        return False

    def read(self) -> Optional[Frame]:
        """The next frame of the cycle; None after ``total`` frames (RSS read before each check)."""
        i = self.index
        if self._checks and i == self._checks[0]:
            self._checks.pop(0)
            self.rss[i] = rss_mb()
            print(f"    frame {i:>9,}: RSS {self.rss[i]:6.1f} MB  "
                  f"({i / (time.perf_counter() - self._t0):.0f} fps)", flush=True)
        if i >= self._total:
            return None
        self.index = i + 1
        return self._frames[i % len(self._frames)]

    def close(self) -> None:
        """Nothing to release."""


def memory(model: Model, tmp: str, total: int, cycle: int) -> None:
    """Print (b): RSS over a long replay at 30 fps timestamps with the real store."""
    frames = make_frames(feed_uri(*SIZE), cycle)
    cycle_mb = sum(f.nbytes for f in frames) / 1e6
    checks = [FIRST_CHECK] + [total * k // 4 for k in range(1, 5)]
    config = make_config(os.path.join(tmp, "memory.db"))
    print(f"\n(b) memory: replay of {total:,} frames at {FPS:.0f} fps synthetic timestamps "
          f"({total / FPS / 3600:.2f} h of frame time), real SQLite store, MQTT off, "
          f"drift warm-up {config.drift.warmup_s:.0f} s, windows of {config.store.window_s:.0f} s")
    print(f"    frames reused from a cycle of {len(frames)} pre-generated emulated frames "
          f"({cycle_mb:.1f} MB held by the benchmark, not the agent), not generated each time")
    source = CycleSource(frames, total, checks)
    print(f"    before replay (model loaded, cycle generated): RSS {rss_mb():.1f} MB")
    result = replay(config, source, fps=FPS, model=model)
    first = source.rss.get(FIRST_CHECK)
    last = source.rss.get(total)
    db_mb = os.path.getsize(config.store.path) / 1e6
    print(f"    {result.frames:,} frames in {result.seconds:.0f} s "
          f"({result.frames / result.seconds:.0f} fps), {result.alerts} alert transitions, "
          f"db {db_mb:.2f} MB")
    if first is None or last is None:
        print(f"fewer than {FIRST_CHECK:,} frames: no growth figure "
              f"(use --frames >= {FIRST_CHECK})")
        return
    growth = last - first
    agent_total = last - cycle_mb
    print(f"target RSS growth < {TARGET_GROWTH_MB:.0f} MB from frame {FIRST_CHECK:,} to {total:,}: "
          f"{first:.1f} -> {last:.1f} MB = {growth:+.2f} MB  {verdict(growth < TARGET_GROWTH_MB)}")
    print(f"target total RSS < {TARGET_TOTAL_MB:.0f} MB with the model loaded: {last:.1f} MB, "
          f"{agent_total:.1f} MB without the benchmark's frame cycle  "
          f"{verdict(agent_total < TARGET_TOTAL_MB)}")


def main(argv: Optional[List[str]] = None) -> int:
    """Run (a) and (b) and print the figures with PASS/FAIL beside each target."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--frames", type=int, default=200_000,
                   help="frames for the memory run (default 200000; 0 skips it)")
    p.add_argument("--cycle", type=int, default=30,
                   help="pre-generated frames the memory run cycles through (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds (default 3; 0 skips)")
    p.add_argument("--threads", type=int, default=THREADS,
                   help=f"interpreter threads (default {THREADS}; the config default 2 stalls on a "
                   "busy 2-core machine)")
    p.add_argument("--round-frames", type=int, default=3000,
                   help="frames per loop per throughput round (default 3000)")
    args = p.parse_args(argv)
    quiet()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(os.path.join(tmp, "unused.db"), threads=args.threads)
        model = load_model(config)
        print(f"model loaded: RSS {rss_mb():.1f} MB, "
              f"{config.model.num_threads} interpreter thread(s)")
        if args.rounds > 0:
            throughput(model, tmp, args.rounds, args.round_frames)
        if args.frames > 0:
            memory(model, tmp, args.frames, args.cycle)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
