"""Report build time and file size for a day of history at default settings.

A day of frames replayed would take hours here, so the rows are written synthetically, through
the store's own API (``Store.put``, ``put_alert``, ``save_reference``) and the sample writer:
a summary window every ``[store] window_s`` (60 s), a heartbeat every 30 s (schema 3, with
drift scores), twelve alert episodes with ``[capture] per_episode`` frames each (640x480
JPEGs of the emulated camera) and ``normal_frames`` normal frames.

    python bench/bench_report.py [--hours 24]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.cli import main  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.emulated import parse_emulated_uri  # noqa: E402
from agent.monitor import summarise  # noqa: E402
from agent.observe import FEATURES  # noqa: E402
from agent.records import AlertTransition, Window  # noqa: E402
from agent.report import write_report  # noqa: E402
from agent.samplestore import SampleWriter, samples_dir  # noqa: E402
from agent.store import Store  # noqa: E402
from agent.testdata import blazeface_model_path  # noqa: E402

TARGET_S = 10.0  # build time on a laptop-class core
TARGET_MB = 5.0


def _heartbeat(ts: float, seq: int, rng: np.random.Generator) -> Dict[str, Any]:
    scores = {f: round(float(abs(rng.normal(0, 0.3))), 3) for f in FEATURES[:24]}
    return {"schema": 3, "device": "bench", "seq": seq, "ts": ts, "interval_s": 30.0,
            "model": {"path": str(blazeface_model_path()), "sha256": "0" * 64,
                      "runtime": "tflite_runtime", "delegate": None,
                      "latency_ms": {"p50": 3.5, "p95": 4.1}},
            "camera": {"name": "cam0", "fps": 29.8, "dropped": 0},
            "monitoring": {"state": "active"}, "drift_scores": scores,
            "host": {"cpu_percent": 40.0 + rng.normal(0, 5), "memory_percent": 30.0,
                     "max_temp_c": 55.0 + rng.normal(0, 1), "disk_free_mb": 9000.0}}


def _alert(i: int, start: float) -> AlertTransition:
    end = start + 900.0
    return AlertTransition(
        id=f"{i:016x}", fingerprint=f"fp{i}", seq=2, transition="resolved", state="resolved",
        ts=end, starts_at=start, ends_at=end, device="bench", camera="cam0", kind="data_drift",
        severity="warning", feature="image", metric="ks", value=0.9, threshold=0.5,
        expected={"brightness": {"p50": 120.0}},
        observed={"features": {"brightness": {"mean": 40.0, "effect": 20.0}}},
        window=Window(start - 30, start, 900), model={"path": None, "sha256": None},
        message="data drift in brightness: brightness mean 40 vs reference 120",
        acknowledged=False, snoozed_until=None)


def write_day(folder: Path, hours: float) -> Path:
    """A config and a database holding ``hours`` of synthetic history; returns the config."""
    cfg = folder / "edgewatch.toml"
    cfg.write_text(f'[model]\npath = "{blazeface_model_path()}"\n[drift]\nreference = '
                   f'"baseline.npz"\n[store]\npath = "history.db"\n[health]\nenabled = false\n')
    if main(["baseline", "emulated:stationary?seed=1&size=320x240&duration=80", "--fps", "30",
             "--config", str(cfg), "--out", str(folder / "baseline.npz")]) != 0:
        raise SystemExit("bench_report: the baseline failed")
    config = load_config(str(cfg))
    rng = np.random.default_rng(1)
    t0 = time.time() - hours * 3600
    capture = config.capture
    writer = SampleWriter(samples_dir(config), max_mb=capture.max_mb,
                          normal_frames=capture.normal_frames)
    feed = parse_emulated_uri("emulated:night?seed=2&size=640x480&onset=5")
    with Store(config.store.path, queue_size=100_000) as store:
        for k in range(int(hours * 3600 / config.store.window_s)):
            ts = t0 + k * config.store.window_s
            values = rng.normal(100, 10, (1800, len(FEATURES))).astype(np.float32)
            store.put("windows", {"ts_start": ts, "ts_end": ts + config.store.window_s,
                                  "frames": 1800, "camera": "cam0",
                                  "summary": summarise(values, FEATURES)})
        for k in range(int(hours * 3600 / 30)):
            store.put("heartbeats", {"ts": t0 + 30 * k, "payload": _heartbeat(t0 + 30 * k, k, rng)})
        jobs: List[Any] = []
        for i in range(12):
            start = t0 + (i + 0.5) * hours * 3600 / 12
            store.put_alert(_alert(i, start).to_dict())
            for j in range(capture.per_episode):
                ok, jpeg = cv2.imencode(".jpg", feed.frame_at(200 + j * 30),
                                        [cv2.IMWRITE_JPEG_QUALITY, capture.jpeg_quality])
                jobs.append(writer.submit(store, jpeg.tobytes(), {
                    "ts": start + 60 * j, "camera": "cam0", "reason": "alert",
                    "alert_id": f"{i:016x}", "kind": "data_drift", "feature": "image",
                    "width": 640, "height": 480}))
        for j in range(capture.normal_frames):
            ok, jpeg = cv2.imencode(".jpg", feed.frame_at(j), [cv2.IMWRITE_JPEG_QUALITY, 85])
            jobs.append(writer.submit(store, jpeg.tobytes(), {
                "ts": t0 + j, "camera": "cam0", "reason": "normal", "width": 640,
                "height": 480}))
        for job in jobs:
            job.result(60)
    return cfg


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = write_day(folder, args.hours)
        config = load_config(str(cfg))
        db_mb = Path(config.store.path).stat().st_size / 1e6
        t = time.perf_counter()
        size = write_report(config, config.store.path, str(folder / "report.html"))
        took = time.perf_counter() - t
        html = (folder / "report.html").read_text()
        charts, images = html.count('<svg class="chart"'), html.count("<img ")
    print(f"history: {args.hours:g} h, database {db_mb:.1f} MB; report: {charts} charts, "
          f"{images} thumbnails")
    print(f"report build: {took:.2f} s (target < {TARGET_S:g} s) "
          f"{'PASS' if took < TARGET_S else 'FAIL'}")
    print(f"report size: {size / 1e6:.2f} MB (target < {TARGET_MB:g} MB) "
          f"{'PASS' if size / 1e6 < TARGET_MB else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
