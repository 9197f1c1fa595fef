"""A simulated fleet against the real Mosquitto and ``edgewatch central`` workers.

1,000 devices, each with its own MQTT connection and retained last will, driven from one
thread (paho's external-loop API over one selector); heartbeats every 30 s of fleet time
(compressed 10x: 333 heartbeats/s all along); a storm of 1,000 alert transitions (one per
device, each also published as the retained alert state, as the agent does) within 10 s.
Figures printed, PASS/FAIL beside each target; timings are never asserted.

- one worker on SQLite: every transition recorded within 30 s of the storm's start, and how
  many webhook calls the storm produced (group_wait 5 s, group_interval 30 s);
- two workers on PostgreSQL, one killed with SIGKILL mid-storm and restarted: transitions
  lost, recorded twice, notified twice;
- ingest throughput (messages/s) of a heartbeat burst, 1 and 2 workers, SQLite and PostgreSQL;
- the central's RSS with 1,000 devices.

Run: ``python bench/bench_fleet.py [--devices 1000]`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import resource
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import paho.mqtt.client as mqtt  # noqa: E402
import psutil  # noqa: E402
from broker import Broker, BrokerOptions, mosquitto_path  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from pg import Cluster, remove_cluster, start_cluster  # noqa: E402

P = "edgewatch/v1"


class Fleet:
    """``n`` paho clients on one thread: a selector over their sockets, paho's loop_* calls."""

    def __init__(self, host: str, port: int, n: int) -> None:
        self.clients: List[mqtt.Client] = []
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        for i in range(n):
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cam-{i:04d}",
                            protocol=mqtt.MQTTv5)
            c.will_set(f"{P}/cam-{i:04d}/status", "offline", qos=1, retain=True)
            c.max_inflight_messages_set(100)
            self.clients.append(c)
        for c in self.clients:
            c.connect(host, port, keepalive=120)
            self.sel.register(c.socket(), selectors.EVENT_READ, c)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self._loop, name="fleet", daemon=True)
        self.thread.start()
        for i in range(n):
            self.publish(i, "status", "online", retain=True)

    def _loop(self) -> None:
        last_misc = 0.0
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.02):
                with self.lock:
                    key.data.loop_read()
            with self.lock:
                for c in self.clients:
                    if c.want_write():
                        c.loop_write()
                if time.monotonic() - last_misc > 1.0:
                    last_misc = time.monotonic()
                    for c in self.clients:
                        c.loop_misc()

    def heartbeats(self, every_s: float) -> None:
        """Each device's heartbeat every ``every_s`` (30 s of fleet time), spread evenly."""
        seq = 0
        while not self.stop.is_set():
            seq += 1
            start = time.monotonic()
            for i in range(len(self.clients)):
                self.publish(i, "heartbeat", json.dumps(
                    {"schema": 1, "seq": seq, "ts": time.time(), "interval_s": 30.0}), qos=0)
                pause = start + every_s * (i + 1) / len(self.clients) - time.monotonic()
                if pause > 0 and self.stop.wait(pause):
                    return

    def publish(self, i: int, sub: str, payload: str, *, qos: int = 1,
                retain: bool = False) -> None:
        with self.lock:
            self.clients[i].publish(f"{P}/cam-{i:04d}/{sub}", payload, qos=qos, retain=retain)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for c in self.clients:
            c.disconnect()
            try:
                c.loop_write()
            except OSError:
                pass
            c._reset_sockets()


class Hook(http.server.BaseHTTPRequestHandler):
    """Counts webhook calls and the alerts they carry."""

    calls: List[Dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        Hook.calls.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def notified(calls: List[Dict[str, Any]]) -> List[Tuple[str, str, int]]:
    out = []
    for body in calls:
        for note in body.get("notifications", [body]):
            if "alert" in note:
                out.append((note["alert"]["device"], note["alert"]["id"], note["alert"]["seq"]))
    return out


def count(db: str, sql: str) -> int:
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
            return int(row[0]) if row else 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


class Bench:
    def __init__(self, n: int, workdir: Path) -> None:
        self.n, self.workdir = n, workdir
        self.procs: List[subprocess.Popen[bytes]] = []
        self.run_no = 0

    def worker(self, broker: Broker, db: str, cid: str, hook: str, share: str = "",
               group: Tuple[str, str] = ("5s", "30s")) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "agent.cli", "central", "--broker", broker.host, "--port",
                str(broker.port), "--db", db, "--client-id", cid, "--webhook", hook,
                "--group-wait", group[0], "--group-interval", group[1]]
        if share:
            # One group per run: the sessions of a finished run's workers stay in their
            # group (persistent) and the broker would keep queueing messages for them.
            args += ["--share", share]
        with open(self.workdir / f"{cid}.log", "ab") as log:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.procs.append(proc)
        broker.wait_suback(cid, timeout=60)
        return proc

    def storm(self, fleet: Fleet, tag: str, spread_s: float = 5.0) -> float:
        """One firing transition per device within ``spread_s``; its start (monotonic)."""
        start = time.monotonic()
        for i in range(self.n):
            rec = {"schema": 1, "id": f"{tag}{i:04d}", "fingerprint": f"{tag}{i:012d}",
                   "seq": 1, "transition": "firing", "state": "firing", "ts": time.time(),
                   "kind": "data_drift", "severity": "warning", "feature": "brightness",
                   "camera": "cam0", "message": "brightness drifted", "acknowledged": False,
                   "snoozed_until": None}
            payload = json.dumps(rec)
            fleet.publish(i, "alerts", payload)
            fleet.publish(i, f"alerts/state/{tag}{i:012d}", payload, retain=True)
            pause = start + spread_s * (i + 1) / self.n - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        return start

    def clear_states(self, fleet: Fleet, tag: str) -> None:
        for i in range(self.n):
            fleet.publish(i, f"alerts/state/{tag}{i:012d}", "", retain=True)

    def stop_workers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()

    def throughput(self, fleet: Fleet, broker: Broker, db: str, hook: str,
                   workers: int, burst: int) -> Tuple[float, float]:
        self.run_no += 1
        for w in range(workers):
            self.worker(broker, db, f"tp{self.run_no}-{w}", hook,
                        share=f"tp{self.run_no}" if workers > 1 else "")
        wait_for(lambda: count(db, "SELECT count(*) FROM devices") >= self.n, 120)
        first = 10_000 + self.run_no * burst
        start = time.monotonic()
        for k in range(burst):
            i = k % self.n
            fleet.publish(i, "heartbeat", json.dumps(
                {"schema": 1, "seq": first + k, "ts": time.time(), "interval_s": 30.0}))
        sent = time.monotonic() - start
        ok = wait_for(lambda: count(db, f"SELECT count(*) FROM heartbeats WHERE seq >= {first}")
                      >= burst, 120)
        rate = burst / (time.monotonic() - start) if ok else 0.0
        self.stop_workers()
        return rate, sent


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--burst", type=int, default=5000, help="heartbeats per throughput run")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up what it started
    raise_fd_limit()
    exe = mosquitto_path()
    if exe is None:
        print("mosquitto not installed (apt-get install mosquitto)")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    broker = Broker(exe, workdir / "mqtt", BrokerOptions(persistence=False, extra=(
        "max_connections -1", "max_queued_messages 0", "max_inflight_messages 100")))
    broker.start()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    cluster: Optional[Cluster] = None
    bench = Bench(args.devices, workdir)
    fleet: Optional[Fleet] = None
    try:
        cluster = start_cluster()
        fleet = Fleet(broker.host, broker.port, args.devices)
        threading.Thread(target=fleet.heartbeats, args=(3.0,), name="heartbeats",
                         daemon=True).start()
        run(bench, fleet, broker, cluster, hook, args.burst)
    finally:
        bench.stop_workers()
        if fleet is not None:
            fleet.close()
        server.shutdown()
        broker.kill()
        if cluster is not None:
            remove_cluster(cluster)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def sqlite_storm(bench: Bench, fleet: Fleet, broker: Broker, workdir: Path, hook: str) -> None:
    n = bench.n
    db = str(workdir / "one.db")
    proc = bench.worker(broker, db, "one", hook)
    ok = wait_for(lambda: count(db, "SELECT count(*) FROM devices WHERE online=1") >= n, 120)
    rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    print(f"central RSS with {n} devices online: {rss:.0f} MB ({'all' if ok else 'NOT all'} "
          "devices seen)")
    Hook.calls.clear()
    start = bench.storm(fleet, "s")
    spread = time.monotonic() - start
    ok = wait_for(lambda: count(db, "SELECT count(*) FROM alert_events") >= n, 60)
    took = time.monotonic() - start
    print(f"1 worker, SQLite: storm of {n} transitions sent in {spread:.1f} s; all recorded "
          f"after {took:.1f} s  {'PASS' if ok and took <= 30 else 'FAIL'} (target <= 30 s)")
    wait_for(lambda: len(notified(Hook.calls)) >= n, 90)
    print(f"  webhook calls for the storm: {len(Hook.calls)} carrying "
          f"{len(notified(Hook.calls))} notifications (group_wait 5 s, group_interval 30 s)")
    bench.stop_workers()
    bench.clear_states(fleet, "s")


def pg_kill(bench: Bench, fleet: Fleet, broker: Broker, cluster: Cluster, hook: str) -> None:
    n = bench.n
    db = cluster.create_database()
    Hook.calls.clear()
    w1 = bench.worker(broker, db, "k1", hook, share="kill", group=("5s", "0"))
    bench.worker(broker, db, "k2", hook, share="kill", group=("5s", "0"))
    done = threading.Event()
    threading.Thread(target=lambda: (bench.storm(fleet, "k"), done.set()), daemon=True).start()
    wait_for(lambda: count(db, "SELECT count(*) FROM alert_events") >= n // 4, 60)
    w1.send_signal(signal.SIGKILL)
    w1.wait(10)
    done.wait(60)
    bench.worker(broker, db, "k1", hook, share="kill", group=("5s", "0"))
    wait_for(lambda: count(db, "SELECT count(*) FROM alert_events") >= n, 120)
    wait_for(lambda: len(notified(Hook.calls)) >= n
             and count(db, "SELECT count(*) FROM notifications") == 0, 120)
    recorded = count(db, "SELECT count(*) FROM alert_events WHERE id LIKE 'k%'")
    distinct = count(db, "SELECT count(DISTINCT device || id) FROM alert_events")
    sent = notified(Hook.calls)
    lost, twice, notified_twice = n - distinct, recorded - distinct, len(sent) - len(set(sent))
    verdict = "PASS" if (lost, twice, notified_twice) == (0, 0, 0) else "FAIL"
    print(f"2 workers, PostgreSQL, one SIGKILLed mid-storm and restarted: lost {lost}, "
          f"recorded twice {twice}, notified twice {notified_twice}, never notified "
          f"{n - len(set(sent))}  {verdict}")
    bench.stop_workers()
    bench.clear_states(fleet, "k")


def run(bench: Bench, fleet: Fleet, broker: Broker, cluster: Cluster, hook: str,
        burst: int) -> None:
    print(f"fleet: {bench.n} devices connected, each with its own connection and last will; "
          "a heartbeat from each every 3 s (30 s compressed 10x)")
    sqlite_storm(bench, fleet, broker, bench.workdir, hook)
    pg_kill(bench, fleet, broker, cluster, hook)
    for kind, workers in (("SQLite", 1), ("SQLite", 2), ("PostgreSQL", 1), ("PostgreSQL", 2)):
        db = (str(bench.workdir / f"tp{bench.run_no + 1}.db") if kind == "SQLite"
              else cluster.create_database())
        rate, sent = bench.throughput(fleet, broker, db, hook, workers, burst)
        print(f"ingest throughput, {workers} worker(s), {kind}: {rate:.0f} heartbeats/s "
              f"({burst} QoS 1 messages, handed to the broker in {sent:.1f} s, on top of the "
              "fleet's heartbeats)")


if __name__ == "__main__":
    sys.exit(main())


