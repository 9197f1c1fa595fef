"""Store throughput: put() cost on the caller, rows written per second, snapshot time.

Run: .venv/bin/python bench/bench_store.py [rows]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from agent.export import export_snapshot
from agent.store import Store

FEATURES = [f"f{k:02d}" for k in range(20)]


def main(rows: int = 50_000) -> None:
    """Print put() cost, writer throughput, and snapshot time for ``rows`` windows."""
    summary = {f: {"mean": 0.5, "std": 0.1, "min": 0.0, "p05": 0.1, "p50": 0.5, "p95": 0.9,
                   "max": 1.0} for f in FEATURES}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        st = Store(path, queue_size=4096, flush_interval_s=0.5).start()
        accepted, t0 = 0, time.perf_counter()
        put_time = 0.0
        for i in range(rows):
            t = time.perf_counter()
            ok = st.put("windows", {"ts_start": float(i), "ts_end": i + 1.0, "frames": 30,
                                    "camera": "cam0", "summary": summary})
            put_time += time.perf_counter() - t
            if ok:
                accepted += 1
            else:
                time.sleep(0.001)  # let the writer catch up, as a real producer would
        st.close()
        total = time.perf_counter() - t0
        stats = st.stats()
        print(f"put(): {put_time / rows * 1e6:.1f} us/row (summary of {len(FEATURES)} features, "
              f"JSON-encoded in the caller)")
        print(f"written {stats['written']} rows in {total:.2f} s = {stats['written'] / total:.0f}"
              f" rows/s, dropped {stats['dropped']}, db {stats['db_bytes'] / 1e6:.1f} MB")
        t = time.perf_counter()
        snap = export_snapshot(path, os.path.join(tmp, "snap.db"))
        print(f"snapshot of {snap['bytes'] / 1e6:.1f} MB in {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
