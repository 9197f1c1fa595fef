"""Replay fps with the device's Prometheus metrics on against off, and what a scrape costs.

``agent.loop.replay`` of the same emulated 640x480 feed through the real BlazeFace model,
alternating metrics off and on (``[metrics] enabled`` on a free port plus a ``textfile``)
for a few rounds on one loaded model. While metrics are on, a scraper thread GETs
``/metrics`` every ``--scrape-every`` seconds (1 s: 15 times Prometheus's default rate) and
times each answer. The fps covers the frame loop only (not opening or closing the store).
Then the number of metric families and series (samples) in one scrape, and its size.

Run: .venv/bin/python bench/bench_metrics.py [--rounds 3] [--frames 3000] [--scrape-every 1]
Target (issue 11): replay fps with metrics on >= 98% of off.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from typing import List

from _common import FPS, feed_uri, load_model, machine_line, make_config, quiet, verdict
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.inference import Model
from agent.loop import replay
from agent.sources import open_source

SIZE = (640, 480)
TARGET_RATIO = 0.98


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    """GETs ``url`` every ``every_s`` seconds on its own thread, timing each answer."""

    def __init__(self, url: str, every_s: float) -> None:
        self.url = url
        self.every = every_s
        self.times_ms: List[float] = []
        self.last = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    self.last = answer.read().decode()
            except OSError:  # not listening yet (the replay is starting) or already closed
                continue
            self.times_ms.append((time.perf_counter() - t0) * 1e3)


def one_run(model: Model, config: Config, frames: int) -> float:
    """Seconds of the replay's frame loop."""
    result = replay(config, open_source(feed_uri(*SIZE)), fps=FPS, max_frames=frames,
                    model=model)
    assert result.frames == frames, result
    return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--scrape-every", type=float, default=1.0)
    args = parser.parse_args()
    quiet()
    print(machine_line())
    tmp = tempfile.mkdtemp(prefix="bench-metrics-")
    model = load_model(make_config(os.path.join(tmp, "load.db")))
    off_s: List[float] = []
    on_s: List[float] = []
    scrapes: List[float] = []
    text = ""
    print(f"emulated {SIZE[0]}x{SIZE[1]} feed, BlazeFace ({model.runtime}), {args.rounds} rounds "
          f"x {args.frames} frames each, metrics off/on alternating; scraped every "
          f"{args.scrape_every:g} s while on")
    for r in range(args.rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for mode in order:
            db = os.path.join(tmp, f"{mode}-{r}.db")
            if mode == "off":
                off_s.append(one_run(model, make_config(db), args.frames))
                continue
            port = free_port()
            config = make_config(db, metrics={"enabled": True, "port": port,
                                              "textfile": os.path.join(tmp, "edgewatch.prom")})
            with Scraper(f"http://127.0.0.1:{port}/metrics", args.scrape_every) as scraper:
                on_s.append(one_run(model, config, args.frames))
            scrapes += scraper.times_ms
            text = scraper.last or text
        print(f"    round {r + 1}: off {args.frames / off_s[-1]:6.1f} fps, on "
              f"{args.frames / on_s[-1]:6.1f} fps ({off_s[-1] / on_s[-1]:.1%})")
    off_fps = args.rounds * args.frames / sum(off_s)
    on_fps = args.rounds * args.frames / sum(on_s)
    ratio = on_fps / off_fps
    print(f"    all rounds: off {off_fps:.1f} fps, on {on_fps:.1f} fps")
    if scrapes:
        print(f"scrape time: median {statistics.median(scrapes):.1f} ms, max "
              f"{max(scrapes):.1f} ms over {len(scrapes)} scrapes")
    if text:
        families = list(text_string_to_metric_families(text))
        series = sum(len(f.samples) for f in families)
        print(f"one scrape: {len(families)} metric families, {series} series, "
              f"{len(text.encode()) / 1024:.1f} KiB")
    print(f"target metrics on >= {TARGET_RATIO:.0%} of off: {ratio:.1%}  "
          f"{verdict(ratio >= TARGET_RATIO)}")


if __name__ == "__main__":
    sys.exit(main())
