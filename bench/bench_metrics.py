"""Replay fps with the device's Prometheus metrics on against off, and what a scrape costs.

``agent.loop.replay`` of the same emulated 640x480 feed through the real BlazeFace model,
alternating metrics off and on (``[metrics] enabled`` on a free port plus a ``textfile``)
for a few rounds on one loaded model. While metrics are on, a scraper process (as Prometheus
is) GETs ``/metrics`` every ``--scrape-every`` seconds (1 s: 15 times Prometheus's default rate) and
times each answer. Two figures per mode: the wall-clock fps of the frame loop (not opening
or closing the store), and the process's CPU time per frame over the whole replay, every
thread included (serving the scrapes too; not the scraper's own work). On a host
shared with other work the wall-clock fps swings with their load; the CPU time does not.
Then the number of metric families and series (samples) in one scrape, and its size, and the
metrics' own work measured directly on a running agent (one scrape's collect and format, one
textfile write, one histogram fold of a second's frames): a bound on the slowdown that does
not depend on the host's other load, since the frame loop itself does nothing for metrics.

Run: .venv/bin/python bench/bench_metrics.py [--rounds 6] [--frames 3000] [--scrape-every 1]
Target (issue 11): replay fps with metrics on >= 98% of off.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

from _common import FPS, feed_uri, load_model, machine_line, make_config, quiet, verdict
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.inference import Model
from agent.loop import drive, replay, synthetic_times
from agent.service import Agent
from agent.sources import open_source

SIZE = (640, 480)
TARGET_RATIO = 0.98


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SCRAPER = r"""
import sys, time, urllib.request
url, every, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
while True:
    time.sleep(every)
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = answer.read()
    except OSError:  # not listening yet (the replay is starting) or already closed
        continue
    print(f"{(time.perf_counter() - t0) * 1e3:.3f}", flush=True)
    with open(out, "wb") as f:
        f.write(body)
"""


class Scraper:
    """GETs ``url`` every ``every_s`` seconds from another process, as Prometheus does (a
    scraper thread in the agent's own process would compete for its interpreter lock)."""

    def __init__(self, url: str, every_s: float) -> None:
        self.url = url
        self.every = every_s
        self.times_ms: List[float] = []
        self.last = ""
        self._out = tempfile.mktemp(suffix=".prom")
        self._proc: Optional[subprocess.Popen[str]] = None

    def __enter__(self) -> Scraper:
        self._proc = subprocess.Popen([sys.executable, "-c", _SCRAPER, self.url, str(self.every),
                                       self._out], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=30)
        self.times_ms = [float(line) for line in out.split()]
        if os.path.exists(self._out):
            with open(self._out, encoding="utf-8") as f:
                self.last = f.read()
            os.unlink(self._out)


def one_run(model: Model, config: Config, frames: int) -> Tuple[float, float]:
    """Seconds of the replay's frame loop, and CPU seconds of the whole replay (all threads)."""
    cpu0 = time.process_time()
    result = replay(config, open_source(feed_uri(*SIZE)), fps=FPS, max_frames=frames,
                    model=model)
    assert result.frames == frames, result
    return result.seconds, time.process_time() - cpu0


def _cpu_ms(fn: Callable[[], object], n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e3


def metrics_work(model: Model, tmp: str, fps: float) -> Tuple[float, float, float]:
    """CPU ms of one scrape (collect + format), one textfile write, one fold of ``fps`` frames."""
    config = make_config(os.path.join(tmp, "work.db"),
                         metrics={"textfile": os.path.join(tmp, "work.prom")})
    agent = Agent.start(config, model_info=model.info(), output_spec=model.output_details,
                        expected_fps=FPS, live=False)
    try:
        source = open_source(feed_uri(*SIZE))
        try:
            drive(synthetic_times(source, 1.7e9, FPS, 2500), model, agent.monitor.observe)
        finally:
            source.close()
        metrics = agent.metrics
        assert metrics is not None
        scrape = _cpu_ms(lambda: generate_latest(metrics.registry), 200)
        textfile = _cpu_ms(metrics.write_textfile, 200)
        ring, latency = agent.monitor.ring, metrics.collector.latency
        row = ring.last(1)[1][0]
        per_fold = int(fps)

        def fold() -> None:
            for _ in range(per_fold):  # a second's frames, then fold them in
                ring.push(0.0, row)
            latency.update()

        push_only = _cpu_ms(lambda: [ring.push(0.0, row) for _ in range(per_fold)], 50)
        return scrape, textfile, max(0.0, _cpu_ms(fold, 50) - push_only)
    finally:
        agent.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--scrape-every", type=float, default=1.0)
    args = parser.parse_args()
    quiet()
    print(machine_line())
    tmp = tempfile.mkdtemp(prefix="bench-metrics-")
    model = load_model(make_config(os.path.join(tmp, "load.db")))
    wall: Dict[str, List[float]] = {"off": [], "on": []}
    cpu: Dict[str, List[float]] = {"off": [], "on": []}
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
                _record(wall, cpu, mode, one_run(model, make_config(db), args.frames))
                continue
            port = free_port()
            config = make_config(db, metrics={"enabled": True, "port": port,
                                              "textfile": os.path.join(tmp, "edgewatch.prom")})
            with Scraper(f"http://127.0.0.1:{port}/metrics", args.scrape_every) as scraper:
                _record(wall, cpu, mode, one_run(model, config, args.frames))
            scrapes += scraper.times_ms
            text = scraper.last or text
        n = args.frames
        print(f"    round {r + 1}: off {n / wall['off'][-1]:6.1f} fps, on "
              f"{n / wall['on'][-1]:6.1f} fps ({wall['off'][-1] / wall['on'][-1]:.1%}); CPU "
              f"{cpu['off'][-1] / n * 1e3:.3f} vs {cpu['on'][-1] / n * 1e3:.3f} ms/frame")
    total = args.rounds * args.frames
    off_fps, on_fps = total / sum(wall["off"]), total / sum(wall["on"])
    off_cpu, on_cpu = sum(cpu["off"]) / total, sum(cpu["on"]) / total
    print(f"    all rounds: wall clock off {off_fps:.1f} fps, on {on_fps:.1f} fps "
          f"({on_fps / off_fps:.1%}); CPU off {off_cpu * 1e3:.3f} ms/frame, on "
          f"{on_cpu * 1e3:.3f} ms/frame (on = {off_cpu / on_cpu:.1%} of off's fps per core)")
    if scrapes:
        print(f"scrape time: median {statistics.median(scrapes):.1f} ms, max "
              f"{max(scrapes):.1f} ms over {len(scrapes)} scrapes")
    if text:
        families = list(text_string_to_metric_families(text))
        series = sum(len(f.samples) for f in families)
        print(f"one scrape: {len(families)} metric families, {series} series, "
              f"{len(text.encode()) / 1024:.1f} KiB")
    scrape, textfile, fold = metrics_work(model, tmp, on_fps)
    per_s = scrape / args.scrape_every + textfile + fold  # the textfile: at most 1/s
    print(f"metrics' own work: {scrape:.2f} ms CPU a scrape, {textfile:.2f} ms a textfile write, "
          f"{fold:.2f} ms folding in {on_fps:.0f} frames' latency; {per_s:.1f} ms a second at "
          f"one scrape and one write a second = {per_s / 10:.2f}% of a core")
    print(f"target metrics on >= {TARGET_RATIO:.0%} of off (wall clock, this host's load "
          f"included): {on_fps / off_fps:.1%}  {verdict(on_fps / off_fps >= TARGET_RATIO)}")
    bound = 1 - per_s / 1000  # the frame loop loses at most the time the metrics take
    print(f"target metrics on >= {TARGET_RATIO:.0%} of off (bound from the work above): "
          f"{bound:.1%}  {verdict(bound >= TARGET_RATIO)}")


def _record(wall: Dict[str, List[float]], cpu: Dict[str, List[float]], mode: str,
            run: Tuple[float, float]) -> None:
    wall[mode].append(run[0])
    cpu[mode].append(run[1])


if __name__ == "__main__":
    sys.exit(main())
