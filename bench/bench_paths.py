"""Alerts on every user path: {replay, Monitor.observe, wrap} x {references} x {scenarios}.

The issue's matrix, end to end with the real BlazeFace model and emulated feeds:

* paths: ``agent.loop.replay`` (``edgewatch replay``), ``agent.Monitor.observe`` (the
  in-process monitor; the application runs the model) and ``agent.wrap`` (the application's
  own interpreter: it resizes each frame to the model's input and invokes), plus ``run`` (the
  owned live loop, unpaced, its capture clock replaced by the frames' synthetic time) on the
  unchanged scene and night;
* references: a warm-up on the device, a baseline from a folder of training images of the
  same scene (a few hundred independent images, shuffled: no time order) and a baseline from
  a video of it, both built with ``edgewatch baseline`` as a user would;
* scenarios: the unchanged scene (10 min of frame time), night, dusk, blur, fog, frozen.

One reference or calibration per path and reference: a *preparation* run on the unchanged
scene (long enough for the warm-up or calibration) leaves its SQLite file, which every
scenario of that path and reference starts from (a copy). Frame time is synthetic
(``START_TS`` + i / fps), so a run takes as long as the model takes.

Targets: no alert (device_health and performance, which depend on the host, aside) on the
unchanged scene; each change alerted within 60 s of onset (dusk, a ramp, within 30 s of its
start; frozen within 10 s) by its expected alert, whose first named feature is in the right
family; no camera fault that the change is not.

Run:  .venv/bin/python bench/bench_paths.py                # the whole matrix
      .venv/bin/python bench/bench_paths.py --paths replay --refs warmup --scenarios night
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.config import Config, load_config  # noqa: E402
from agent.emulated import EmulatedFeed  # noqa: E402

FPS = 15.0
SIZE = (160, 120)  # small frames: the model sees 128x128 and the statistics a fixed sample
# Frame time starts a little ahead of the wall clock when a group starts: the live paths'
# stall check compares the wall clock with the frames' timestamps, so frames stamped in the
# past would read as a stalled camera (replays run far faster than real time, so they stay
# ahead). See ``set_start``.
START_TS = float(int(time.time())) + 60.0
SCENARIO_TS = START_TS + 100_000.0  # every scenario starts after its preparation run
PREP_S = 330.0  # unchanged scene before the scenarios: the warm-up or calibration (300 s)
UNCHANGED_S = 600.0
ONSET_S = 40.0  # after the current window (450 frames = 30 s) is full
TRAINING_IMAGES = 600
VIDEO_S = 300.0
PATHS = ("replay", "observe", "wrap")
REFS = ("warmup", "training", "video")
SCENARIOS = ("unchanged", "night", "dusk", "blur", "fog", "frozen")
HOST_KINDS = ("device_health", "performance")
EXPOSURE = ("brightness", "underexposed", "mean_b", "mean_g", "mean_r", "black_frames")
HAZE = ("contrast", "brightness", "saturation", "colorfulness", "entropy")


@dataclass(frozen=True)
class Expect:
    """What a change must raise: the alert, the family of its first feature, the deadline."""

    alerts: Tuple[Tuple[str, str], ...]  # (kind, feature) of the alerts that count
    family: Tuple[str, ...]
    within_s: float
    after_s: float  # how long the scenario runs after onset
    faults: Tuple[str, ...] = ()  # camera faults this change is


_DATA = (("data_drift", "image"),)
EXPECT: Dict[str, Expect] = {
    "night": Expect(_DATA, EXPOSURE, 60.0, 70.0),
    "dusk": Expect(_DATA, EXPOSURE, 30.0, 100.0),
    # The blur rule, or data drift led by the statistics blur takes away (a mild defocus
    # in a small view can stay above the rule's ratio).
    "blur": Expect((("camera_fault", "blur"),) + _DATA, ("blur", "sharpness", "edge_density"),
                   60.0, 70.0, ("blur",)),
    "fog": Expect(_DATA, HAZE, 60.0, 70.0),
    "frozen": Expect((("camera_fault", "frozen_frames"),), ("frozen_frames",), 10.0, 30.0,
                     ("frozen_frames",)),
}


@dataclass
class Outcome:
    """One cell of the matrix."""

    path: str
    ref: str
    scenario: str
    passed: bool = False
    delay_s: Optional[float] = None
    named: str = ""
    problems: List[str] = field(default_factory=list)
    alerts: List[str] = field(default_factory=list)
    seconds: float = 0.0


# ---- inputs ------------------------------------------------------------------------------
def feed_uri(scenario: str, seed: int, seconds: float, onset: float = 0.0) -> str:
    """An emulated feed of ``seconds`` at the bench's rate and size."""
    name = "stationary" if scenario == "unchanged" else scenario
    return (f"emulated:{name}?seed={seed}&fps={FPS:g}&size={SIZE[0]}x{SIZE[1]}"
            f"&onset={onset:g}&duration={seconds:g}")


def model_path() -> str:
    """The real BlazeFace model (models/ in the repository)."""
    return str(REPO / "models" / "face_detection_short_range.tflite")


def config_for(db: Path, reference: str = "") -> Config:
    """The config of every run: defaults, a 30 s window at the bench's rate, no host checks."""
    return load_config({
        "device": {"id": "bench", "camera": "cam0"},
        "model": {"path": model_path(), "num_threads": 1},
        "store": {"path": str(db)},
        "drift": {"window_frames": int(30 * FPS), "reference": reference},
        "health": {"enabled": False},
        "service": {"status_interval_s": 0.0},
    })


def write_training_images(folder: Path, count: int = TRAINING_IMAGES, seed: int = 11) -> Path:
    """``count`` JPEGs (quality 90, as users' training sets are) of the unchanged scene at
    random moments of an hour, shuffled names. JPEG's chroma subsampling alone lowers the
    saturation by about 2 robust SDs: a training reference's larger minimum effect size
    (``TRAINING_MIN_EFFECT``) keeps that codec difference quiet."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    feed = EmulatedFeed("stationary", seed=seed, fps=FPS, size=SIZE)
    rng = random.Random(seed)
    frames = rng.sample(range(int(3600 * FPS)), count)
    for k, i in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{rng.randrange(10**9):09d}_{k}.jpg"), feed.frame_at(i),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def write_video(path: Path, seconds: float = VIDEO_S, seed: int = 12) -> Path:
    """A video of the unchanged scene, lossless (FFV1): MJPG's chroma subsampling alone
    lowers the saturation by 2 robust SDs, a difference between the baseline and the
    live frames that is the codec's, not the scene's."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    feed = EmulatedFeed("stationary", seed=seed, fps=FPS, size=SIZE)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), FPS, SIZE)
    for i in range(int(seconds * FPS)):
        out.write(feed.frame_at(i))
    out.release()
    return path


def build_baseline(source: Path, out: Path, path: str, workdir: Path) -> Tuple[Optional[Path], str]:
    """``edgewatch baseline SOURCE --out FILE`` as a user runs it; (file or None, output)."""
    if out.is_file():
        return out, "cached"
    cfg_file = workdir / "baseline.toml"
    cfg_file.write_text(
        f'[model]\npath = "{model_path()}"\nnum_threads = 1\n'
        f"[drift]\nwindow_frames = {int(30 * FPS)}\n")
    argv = [sys.executable, "-m", "agent.cli", "baseline", str(source), "--out", str(out),
            "--config", str(cfg_file), "--fps", f"{FPS:g}", *BASELINE_VIEW.get(path, [])]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    text = (proc.stdout + proc.stderr).strip()
    return (out if proc.returncode == 0 and out.is_file() else None), text


# The view a baseline is measured in, per path (``wrap`` sees the model's input tensor).
BASELINE_VIEW: Dict[str, List[str]] = {}


# ---- the paths ---------------------------------------------------------------------------
class _Clock:
    """The synthetic frame time the run and wrap paths read."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _frames(uri: str) -> Any:
    from agent.sources import open_source

    return open_source(uri)


def run_replay(cfg: Config, uri: str, start: float) -> None:
    """``edgewatch replay``: the loop's own replay with synthetic time."""
    from agent.loop import replay

    replay(cfg, _frames(uri), fps=FPS, start_ts=start)


def run_observe(cfg: Config, uri: str, start: float) -> None:
    """``with agent.Monitor.from_config(cfg) as m: m.observe(frame, outputs, latency, ts)``."""
    from agent import Monitor
    from agent.inference import Model

    model = Model.from_config(cfg.model)
    source = _frames(uri)
    with Monitor.from_config(cfg) as monitor:
        i = 0
        while (frame := source.read()) is not None:
            outputs, latency = model(frame)
            monitor.observe(frame, outputs, latency, start + i / FPS)
            i += 1
    source.close()


class _TimedObserver:
    """The in-process monitor with the frame's synthetic time (wrap passes no timestamp)."""

    def __init__(self, monitor: Any, clock: _Clock) -> None:
        self._monitor = monitor
        self._clock = clock
        self.config = monitor.config

    def observe(self, frame: Any, outputs: Any = None, latency_s: Optional[float] = None,
                ts: Optional[float] = None) -> None:
        self._monitor.observe(frame, outputs, latency_s, self._clock() if ts is None else ts)

    def hook_error(self, exc: BaseException) -> None:
        self._monitor.hook_error(exc)

    def __getattr__(self, name: str) -> Any:  # the rest of the monitor's API (set_view, ...)
        return getattr(self._monitor, name)


def run_wrap(cfg: Config, uri: str, start: float) -> None:
    """An application's own interpreter, wrapped: resize to the input, [-1, 1], invoke."""
    from agent import Monitor, wrap
    from agent.inference import Model

    interpreter = Model.from_config(cfg.model).interpreter
    inp = interpreter.get_input_details()[0]
    h, w = int(inp["shape"][1]), int(inp["shape"][2])
    clock = _Clock(start)
    source = _frames(uri)
    with Monitor.from_config(cfg) as monitor:
        wrapped = wrap(interpreter, _TimedObserver(monitor, clock))
        i = 0
        while (frame := source.read()) is not None:
            # Resized as the agent resizes for `edgewatch baseline`'s model-input view: an
            # application that resizes otherwise (INTER_AREA) shifts box_area_mean by about
            # 0.5 robust SDs, enough for prediction drift against that view.
            rgb = cv2.cvtColor(cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR),
                               cv2.COLOR_BGR2RGB)
            wrapped.set_tensor(inp["index"], (rgb[None].astype(np.float32) / 127.5) - 1.0)
            clock.t = start + i / FPS
            wrapped.invoke()
            i += 1
    source.close()


def run_owned(cfg: Config, uri: str, start: float) -> None:
    """``edgewatch run`` unpaced: the capture stamps each frame with its synthetic time.

    The capture thread reads the next frame only once the loop has run the model on the
    previous one (so no frame is dropped and frame i is at start + i / fps).
    """
    import agent.loop as loop
    from agent.inference import Model

    class Paced(Model):
        def __call__(self, frame: Any) -> Any:
            out = super().__call__(frame)
            taken.release()
            return out

    class Source:
        live, fps, name = True, None, uri

        def __init__(self) -> None:
            self._inner = _frames(uri)
            self._i = 0

        def read(self) -> Any:
            taken.acquire()
            frame = self._inner.read()
            clock.t = start + self._i / FPS
            self._i += 1
            return frame

        def close(self) -> None:
            self._inner.close()

    taken = threading.Semaphore(1)
    clock = _Clock(start)
    real_time = loop.time  # type: ignore[attr-defined]

    class _Time:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_time, name)

        def time(self) -> float:
            return clock.t

    loop.time = _Time()  # type: ignore[attr-defined,assignment]  # the capture stamps frames
    try:
        loop.run(cfg, model=Paced(cfg.model.path, num_threads=1), source=Source())
    finally:
        loop.time = real_time  # type: ignore[attr-defined]


RUNNERS: Dict[str, Callable[[Config, str, float], None]] = {
    "replay": run_replay, "observe": run_observe, "wrap": run_wrap, "run": run_owned}


# ---- reading the alerts back -------------------------------------------------------------
def read_alerts(db: Path, since: float) -> List[Dict[str, Any]]:
    """Every alert transition to firing at or after ``since`` (from the SQLite history)."""
    import sqlite3

    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute("SELECT payload FROM alerts").fetchall()
    finally:
        conn.close()
    out = []
    for (payload,) in rows:
        p = json.loads(payload)
        fired = p["ts"] if p.get("transition") == "firing" else p["starts_at"]
        if fired < since:
            continue
        observed = p.get("observed") or {}
        named = list(observed.get("drifted") or []) or [p["feature"]]
        out.append({"kind": p["kind"], "feature": p["feature"], "fired": float(fired),
                    "named": named, "message": p.get("message", "")})
    return sorted(out, key=lambda a: a["fired"])


def judge(cell: Outcome, alerts: List[Dict[str, Any]], onset_ts: Optional[float]) -> None:
    """Fill in the cell's verdict from its alerts."""
    counted = [a for a in alerts if a["kind"] not in HOST_KINDS]
    cell.alerts = [f"{a['kind']}/{a['feature']}@{a['fired'] - SCENARIO_TS:+.0f}s "
                   f"[{', '.join(a['named'][:3])}]" for a in counted]
    if onset_ts is None:
        cell.problems += [f"false alert {a}" for a in cell.alerts]
        cell.passed = not cell.problems
        return
    exp = EXPECT[cell.scenario]
    early = [a for a in counted if a["fired"] < onset_ts]
    cell.problems += [f"before onset: {a['kind']}/{a['feature']}" for a in early]
    wrong = {a["feature"] for a in counted if a["kind"] == "camera_fault"
             and a["feature"] not in exp.faults}
    cell.problems += [f"wrong camera fault: {f}" for f in sorted(wrong)]
    hit = next((a for a in counted if a["fired"] >= onset_ts
                and (a["kind"], a["feature"]) in exp.alerts), None)
    if hit is None:
        cell.problems.append("no " + " or ".join(f"{k}/{f}" for k, f in exp.alerts) + " alert")
    else:
        cell.delay_s = round(hit["fired"] - onset_ts, 1)
        cell.named = hit["named"][0]
        if cell.delay_s > exp.within_s:
            cell.problems.append(f"late: {cell.delay_s:g} s > {exp.within_s:g} s")
        if cell.named not in exp.family:
            cell.problems.append(f"named {cell.named} first")
    cell.passed = not cell.problems


# ---- one path and reference --------------------------------------------------------------
def reference_file(path: str, ref: str, workdir: Path) -> Tuple[Optional[Path], str]:
    """The baseline file a path uses for a reference (built on first use), or None and why."""
    if ref == "warmup":
        return None, ""
    view = "model" if path == "wrap" and BASELINE_VIEW.get(path) else "frame"
    source = (write_training_images(workdir / "training") if ref == "training"
              else write_video(workdir / "scene.avi"))
    built, note = build_baseline(source, workdir / f"baseline-{ref}-{view}.npz", path, workdir)
    return built, "" if built is not None else (note.splitlines() or ["?"])[-1]


def prepare(path: str, ref: str, workdir: Path) -> Tuple[Optional[Path], str, str]:
    """The reference file (if any) and the SQLite file every scenario starts from."""
    group = workdir / f"{path}-{ref}"
    group.mkdir(parents=True, exist_ok=True)
    reference = ""
    if ref != "warmup":
        built, why = reference_file(path, ref, workdir)
        if built is None:
            return None, "", f"baseline refused: {why}"
        reference = str(built)
    db = group / "prepared.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    RUNNERS[path](config_for(db, reference), feed_uri("unchanged", 1, PREP_S), START_TS)
    return db, reference, ""


def run_cell(path: str, ref: str, scenario: str, prepared: Path, reference: str,
             workdir: Path, seed: int) -> Outcome:
    """One scenario on a copy of the prepared SQLite file."""
    cell = Outcome(path, ref, scenario)
    db = workdir / f"{path}-{ref}" / f"{scenario}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(prepared, db)
    if scenario == "unchanged":
        uri, onset_ts = feed_uri("unchanged", seed, UNCHANGED_S), None
    else:
        exp = EXPECT[scenario]
        uri = feed_uri(scenario, seed, ONSET_S + exp.after_s, ONSET_S)
        onset_ts = SCENARIO_TS + ONSET_S
    t0 = time.perf_counter()
    try:
        RUNNERS[path](config_for(db, reference), uri, SCENARIO_TS)
    except Exception as exc:  # noqa: BLE001  # a benchmark cell fails, the matrix goes on
        cell.problems.append(f"error: {type(exc).__name__}: {exc}")
        return cell
    finally:
        cell.seconds = round(time.perf_counter() - t0, 1)
    judge(cell, read_alerts(db, SCENARIO_TS), onset_ts)
    return cell


def set_start(start: float) -> None:
    """Frame time of the preparation runs (the scenarios start 100,000 s later)."""
    global START_TS, SCENARIO_TS
    START_TS, SCENARIO_TS = start, start + 100_000.0


def run_group(job: Tuple[str, str, Sequence[str], str]) -> List[Outcome]:
    """Every scenario of one path and reference (a worker process)."""
    path, ref, scenarios, workdir_s = job
    set_start(float(int(time.time())) + 60.0)
    logging.basicConfig(level=logging.ERROR)
    workdir = Path(workdir_s)
    t0 = time.perf_counter()
    try:
        prepared, reference, why = prepare(path, ref, workdir)
    except Exception as exc:  # noqa: BLE001
        prepared, reference, why = None, "", f"preparation failed: {type(exc).__name__}: {exc}"
    if prepared is None:
        return [Outcome(path, ref, s, problems=[why]) for s in scenarios]
    prep_alerts = read_alerts(prepared, START_TS)
    out = []
    for k, scenario in enumerate(scenarios):
        cell = run_cell(path, ref, scenario, prepared, reference, workdir, seed=20 + k)
        if scenario == "unchanged":  # the preparation was the unchanged scene too
            counted = [a for a in prep_alerts if a["kind"] not in HOST_KINDS]
            cell.problems += [f"during preparation: {a['kind']}/{a['feature']}" for a in counted]
            cell.passed = not cell.problems
        out.append(cell)
    print(f"[{time.perf_counter() - t0:5.0f} s] {path} x {ref}: "
          f"{sum(c.passed for c in out)}/{len(out)} pass", flush=True)
    return out


# ---- report ------------------------------------------------------------------------------
def table(cells: Sequence[Outcome]) -> str:
    """The matrix as a Markdown table."""
    lines = ["| path | reference | scenario | delay | named first | result | notes |",
             "|---|---|---|---|---|---|---|"]
    for c in cells:
        delay = "—" if c.delay_s is None else f"{c.delay_s:g} s"
        notes = "; ".join(c.problems)[:160] or ("no alert" if c.scenario == "unchanged" else "")
        lines.append(f"| {c.path} | {c.ref} | {c.scenario} | {delay} | {c.named or '—'} | "
                     f"{'PASS' if c.passed else 'FAIL'} | {notes} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the matrix (two worker processes) and print the table (10 min on a loaded 2-core host)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--refs", default=",".join(REFS))
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--no-run", action="store_true", help="leave out the owned loop (run)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/edgewatch_bench_paths")
    p.add_argument("--json", help="also write the cells to this file")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a cell misses its target (default: print and exit 0, so "
                   "that `make bench` goes on to the other benchmarks)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scenarios = [s for s in args.scenarios.split(",") if s]
    jobs = [(path, ref, scenarios, str(workdir)) for path in args.paths.split(",") if path
            for ref in args.refs.split(",") if ref]
    if not args.no_run:
        jobs.append(("run", "warmup", [s for s in ("unchanged", "night") if s in scenarios],
                     str(workdir)))
    t0 = time.perf_counter()
    for path, ref, _, _ in jobs:  # inputs and baselines once, before the workers share them
        reference_file(path, ref, workdir)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        cells = [c for group in pool.map(run_group, jobs) for c in group]
    print(table(cells))
    passed = sum(c.passed for c in cells)
    print(f"\n{passed}/{len(cells)} cells pass; wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(c) for c in cells], indent=1))
    return 1 if args.strict and passed < len(cells) else 0


if __name__ == "__main__":
    sys.exit(main())
