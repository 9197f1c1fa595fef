"""How fast a backlog of outbox alerts drains to a local Mosquitto after reconnect.

    .venv/bin/python bench/bench_mqtt.py [--alerts 10000] [--broker HOST --port N]

Writes ``--alerts`` alert transitions (two outbox rows each: the event and the retained state)
into a fresh Store while no broker link runs, then starts a MqttLink and times until a
subscriber has every event and the outbox is empty. Target: 10,000 alerts in under 30 s.
Starts its own Mosquitto on a free port unless --broker is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.mqtt import MqttConfig, MqttLink, alert_outbox_messages, topics  # noqa: E402
from agent.store import Store  # noqa: E402


def _record(seq: int, device: str) -> Dict[str, Any]:
    now = time.time()
    return {"schema": 1, "id": f"{seq:08x}", "fingerprint": f"{seq % 50:016x}", "seq": seq,
            "transition": "firing", "state": "firing", "ts": now, "starts_at": now,
            "ends_at": None, "device": device, "camera": "cam0", "kind": "data_drift",
            "severity": "warning", "feature": "brightness", "metric": "psi", "value": 0.4,
            "threshold": 0.25, "expected": {"mean": 120.0}, "observed": {"mean": 60.0},
            "window": {"start": now - 60, "end": now, "frames": 600},
            "model": {"path": "m.tflite", "sha256": "ab"}, "message": "brightness drifted",
            "acknowledged": False, "snoozed_until": None}


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A throw-away Mosquitto on a free loopback port."""
    exe = "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else shutil.which(
        "mosquitto")
    if not exe:
        raise SystemExit("mosquitto not installed (make broker)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_type error\n"
                    + ("user root\n" if os.getuid() == 0 else ""))
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def drain_backlog(host: str, port: int, n_alerts: int = 10000, *, workdir: Optional[Path] = None,
                  max_inflight: int = 20, timeout_s: float = 120.0) -> Dict[str, float]:
    """Fill the outbox with ``n_alerts`` alerts, connect, time the drain; figures as a dict."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench-mqtt-"))
    device = "bench"
    t = topics("edgewatch/v1", device)
    store = Store(str(workdir / "bench.db"), flush_interval_s=0.5, outbox_max=10 * n_alerts + 10)
    store.start()
    t0 = time.perf_counter()
    for seq in range(n_alerts):
        rec = _record(seq, device)
        store.put_alert(rec, alert_outbox_messages(t, rec))
    while store.stats()["outbox_depth"] < 2 * n_alerts:
        time.sleep(0.05)
    fill_s = time.perf_counter() - t0

    got = {"n": 0, "last_seq": -1, "out_of_order": 0}
    done = threading.Event()

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        seq = json.loads(msg.payload)["seq"]
        if seq < got["last_seq"]:
            got["out_of_order"] += 1
        got["last_seq"] = max(seq, got["last_seq"])
        got["n"] += 1
        if got["n"] >= n_alerts:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
    sub.on_message = on_message
    sub.connect(host, port)
    sub.subscribe(t.alerts, qos=1)
    sub.loop_start()
    time.sleep(0.3)

    link = MqttLink(MqttConfig(enabled=True, host=host, port=port, device_id=device,
                               max_inflight=max_inflight), store)
    t1 = time.perf_counter()
    link.start()
    done.wait(timeout_s)
    while store.stats()["outbox_depth"] > 0 and time.perf_counter() - t1 < timeout_s:
        time.sleep(0.02)
    drain_s = time.perf_counter() - t1
    depth = store.stats()["outbox_depth"]
    link.close()
    sub.disconnect()
    sub.loop_stop()
    store.close()
    return {"alerts": n_alerts, "messages": 2 * n_alerts, "fill_s": fill_s, "drain_s": drain_s,
            "alerts_per_s": n_alerts / drain_s, "messages_per_s": 2 * n_alerts / drain_s,
            "received": got["n"], "out_of_order": got["out_of_order"], "left_in_outbox": depth}


def replay_ratio(host: str, port: int, workdir: Path, rounds: int = 3,
                 frames: int = 2400) -> float:
    """Replay fps with MQTT on against MQTT off, alternating, in the same run.

    The feed turns to night after 20 s so that alerts flow through the outbox while the
    loop runs; heartbeats every second.
    """
    from _common import load_model, make_config

    from agent.service import replay
    from agent.sources import open_source

    uri = "emulated:night?seed=3&size=640x480&onset=20"
    drift = {"warmup_s": 15, "window_frames": 150, "eval_interval_s": 1, "for_s": 2}
    model = load_model(make_config(str(workdir / "m.db")))
    times: Dict[bool, List[float]] = {True: [], False: []}
    alerts = 0
    for r in range(rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            mqtt_section = {"enabled": on, "host": host, "port": port, "device_id": "bench",
                            "heartbeat_interval_s": 1.0}
            cfg = make_config(str(workdir / f"r{r}-{int(on)}.db"), mqtt=mqtt_section, drift=drift,
                              service={"heartbeat_interval_s": 1.0}, health={"enabled": False})
            res = replay(cfg, open_source(uri), fps=30, max_frames=frames, model=model)
            times[on].append(res.seconds)
            alerts += res.alerts if on else 0
        print(f"    round {r + 1}: MQTT off {frames / times[False][-1]:6.1f} fps, "
              f"on {frames / times[True][-1]:6.1f} fps")
    off = rounds * frames / sum(times[False])
    on_ = rounds * frames / sum(times[True])
    print(f"replay: MQTT off {off:.1f} fps, on {on_:.1f} fps ({alerts} alert transitions "
          f"published); ratio {on_ / off:.1%}  {'PASS' if on_ / off >= 0.95 else 'FAIL'} (>= 95%)")
    return on_ / off


def main() -> int:
    """Run the drain benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=10000)
    ap.add_argument("--max-inflight", type=int, default=20)
    ap.add_argument("--broker", help="use this broker instead of starting one")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--replay-rounds", type=int, default=3,
                    help="rounds of the MQTT on/off replay comparison (0 = skip)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    proc = None
    try:
        if args.broker:
            host, port = args.broker, args.port
        else:
            proc, port = start_mosquitto(workdir)
            host = "127.0.0.1"
        r = drain_backlog(host, port, args.alerts, workdir=workdir,
                          max_inflight=args.max_inflight)
        ratio = replay_ratio(host, port, workdir) if args.replay_rounds else 1.0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"backlog: {r['alerts']} alerts = {r['messages']} outbox messages "
          f"(filled in {r['fill_s']:.1f} s)")
    print(f"drain:   {r['drain_s']:.2f} s  {r['alerts_per_s']:.0f} alerts/s  "
          f"{r['messages_per_s']:.0f} msg/s  (max_inflight {args.max_inflight})")
    print(f"check:   received {r['received']} events, {r['out_of_order']} out of order, "
          f"{r['left_in_outbox']} left in outbox")
    ok = (r["drain_s"] < 30 and r["received"] >= r["alerts"] and r["left_in_outbox"] == 0
          and ratio >= 0.95)
    print("PASS (< 30 s)" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
