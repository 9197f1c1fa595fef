"""The central's /metrics: scrape time for a fleet of N devices (default 1,000).

A central database (SQLite, then a throwaway PostgreSQL cluster) is filled through the
central's own API (records parsed from schema-3 heartbeat and alert payloads, stored by
:class:`CentralStore`), then the fleet endpoint is scraped over HTTP as Prometheus would,
and the collector is timed on its own.

Run: .venv/bin/python bench/bench_central_metrics.py [devices]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pg import remove_cluster, start_cluster  # noqa: E402

from agent.central.metrics import FleetCollector, MetricsServer  # noqa: E402
from agent.central.records import AlertTransition, Heartbeat, parse  # noqa: E402
from agent.central.store import CentralStore  # noqa: E402
from agent.records import KINDS  # noqa: E402

P = "edgewatch/v1"
FEATURES = ["brightness", "contrast", "sharpness", "noise", "saturation", "hue", "entropy",
            "edge_density", "colorfulness", "dark_fraction", "overexposed", "motion"]


def heartbeat(device: str, seq: int, now: float) -> Dict[str, Any]:
    """A schema-3 heartbeat of about the size a device sends (12 image statistics)."""
    summary = {"mean": 118.2, "std": 2.1, "min": 100.0, "p05": 115.0, "p50": 118.0,
               "p95": 121.0, "max": 130.0}
    return {
        "schema": 3, "device": device, "agent_version": "0.9.0", "seq": seq, "ts": now,
        "interval_s": 30.0, "uptime_s": 86400.0,
        "model": {"path": "/var/lib/edgewatch/model.tflite", "sha256": "4a2f" * 16,
                  "runtime": "tflite", "delegate": None, "latency_ms": {"p50": 9.1, "p95": 12.4}},
        "camera": {"name": "cam0", "state": "ok", "fps": 14.8, "dropped": 0, "frames": 1_000_000},
        "stats": {f: summary for f in FEATURES},
        "confidence": {"top_score": summary, "count": summary},
        "drift": {f: 0.05 for f in FEATURES}, "drift_scores": {f: 0.2 for f in FEATURES},
        "alerts_open": [], "host": {"cpu_percent": 31.0, "max_temp_c": 61.0},
        "outbox": {"depth": 0, "oldest_age_s": None, "dropped": 0},
        "summary": {"fps": 14.8, "brightness": 118.0, "top_score": 0.91, "worst_drift": 0.2,
                    "worst_drift_feature": "brightness", "monitoring": "active",
                    "problems": {k: False for k in KINDS}},
    }


def alert(device: str, seq: int, now: float) -> Dict[str, Any]:
    """A firing data-drift alert record."""
    return {"schema": 1, "id": f"{device}-a{seq}", "fingerprint": f"fp{seq:014d}", "seq": seq,
            "transition": "firing", "state": "firing", "ts": now, "starts_at": now,
            "ends_at": None, "device": device, "camera": "cam0", "kind": "data_drift",
            "severity": "warning", "feature": "brightness", "metric": "ks", "value": 0.8,
            "threshold": 0.26, "message": "brightness drifted", "acknowledged": False}


def fill(db: str, devices: int) -> None:
    """``devices`` devices, each with a heartbeat; every tenth with an open alert."""
    store = CentralStore(db)
    now = time.time()
    with store.transaction():
        for i in range(devices):
            device = f"cam-{i:05d}"
            hb = parse(P, f"{P}/{device}/heartbeat", json.dumps(heartbeat(device, 1, now)).encode())
            assert isinstance(hb, Heartbeat)
            store.put_heartbeat(hb, now)
            if i % 10 == 0:
                rec = parse(P, f"{P}/{device}/alerts", json.dumps(alert(device, 1, now)).encode())
                assert isinstance(rec, AlertTransition)
                store.put_alert(rec, now)
    store.close()


def measure(db: str, what: str, devices: int, scrapes: int = 20) -> None:
    """Fill ``db`` and print the scrape time over HTTP and the collector's own time."""
    t0 = time.perf_counter()
    fill(db, devices)
    print(f"{what}: filled {devices} devices in {time.perf_counter() - t0:.1f} s")
    server = MetricsServer(FleetCollector(db), "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        times: List[float] = []
        size = series = 0
        for _ in range(scrapes):
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = resp.read()
            times.append(time.perf_counter() - t)
            size = len(body)
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        t = time.perf_counter()
        for _ in range(scrapes):
            list(server.collector.collect())
        own = (time.perf_counter() - t) / scrapes
    finally:
        server.stop()
    print(f"{what}: scrape over HTTP, {devices} devices: median "
          f"{statistics.median(times) * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms ({scrapes} "
          f"scrapes; {series} series, {size / 1024:.0f} KiB); the collector alone (three "
          f"queries, no heartbeat parsed): {own * 1e3:.0f} ms")


def main(devices: int = 1000) -> None:
    """The figures on SQLite, then on a throwaway PostgreSQL cluster when one can start."""
    with tempfile.TemporaryDirectory() as tmp:
        measure(os.path.join(tmp, "central.db"), "SQLite", devices)
    try:
        cluster = start_cluster()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"PostgreSQL: not measured ({exc})")
        return
    try:
        measure(cluster.create_database(), "PostgreSQL", devices)
    finally:
        remove_cluster(cluster)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
