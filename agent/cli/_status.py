"""``edgewatch status``: the device at a glance, from its database."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from ..store import connect_readonly
from ._run import config_from_args


def device_status(db_path: str, now: float) -> dict:
    """Running or not, last heartbeat, camera and model, open alerts, database size."""
    conn = connect_readonly(db_path)
    hb = conn.execute("SELECT ts, payload FROM heartbeats ORDER BY seq DESC LIMIT 1").fetchone()
    payload = json.loads(hb["payload"]) if hb else {}
    interval = float(payload.get("interval_s") or 30.0)
    age = None if hb is None else now - float(hb["ts"])
    alerts = conn.execute("SELECT id, kind, severity, feature, message FROM alerts "
                          "WHERE state = 'firing' ORDER BY ts").fetchall()
    last_event = conn.execute("SELECT ts, kind, message FROM events ORDER BY id DESC LIMIT 1").fetchone()
    oldest = conn.execute("SELECT min(ts_start) FROM windows").fetchone()[0]
    size = sum(os.path.getsize(p) for p in (db_path, db_path + "-wal") if os.path.exists(p))
    running = age is not None and age < 3 * interval and (
        last_event is None or last_event["kind"] != "stop" or last_event["ts"] < hb["ts"])
    return {
        "db": db_path, "running": bool(running),
        "last_heartbeat_age_s": None if age is None else round(age, 1),
        "model": payload.get("model"), "camera": payload.get("camera"),
        "reference": payload.get("reference"), "host": payload.get("host"),
        "agent": payload.get("agent"), "outbox": payload.get("outbox"),
        "alerts_open": [dict(a) for a in alerts],
        "last_event": dict(last_event) if last_event else None,
        "db_bytes": size,
        "history_since": oldest,
    }


def _status(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    st = device_status(cfg.store.path, time.time())
    st["retention_days"] = cfg.store.retention_days
    st["max_db_mb"] = cfg.store.max_db_mb
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    hb = st["last_heartbeat_age_s"]
    print(f"agent:     {'running' if st['running'] else 'not running'}"
          f" (last heartbeat {'never' if hb is None else f'{hb:.0f} s ago'})")
    model = st["model"] or {}
    print(f"model:     {model.get('path')} sha256 {str(model.get('sha256'))[:12]} "
          f"({model.get('runtime')}), latency {model.get('latency_ms')}")
    cam = st["camera"] or {}
    print(f"camera:    {cam.get('name')} state {cam.get('state')}, frames {cam.get('frames')}, "
          f"fps {cam.get('fps_processed')}, dropped {cam.get('dropped')}, "
          f"reconnects {cam.get('reconnects')}")
    host = st["host"] or {}
    print(f"host:      cpu {host.get('cpu_percent')}%, memory {host.get('memory_percent')}%, "
          f"disk free {host.get('disk_free_mb')} MB, temp {host.get('max_temp_c')} C, "
          f"throttled {host.get('throttled')}")
    ref = st["reference"] or {}
    print(f"reference: {ref.get('origin', 'none (warming up)')}")
    since = st["history_since"]
    print(f"database:  {st['db']} {st['db_bytes'] / 1e6:.1f} MB (max {st['max_db_mb']:g} MB), "
          f"history since {time.strftime('%Y-%m-%d %H:%M', time.localtime(since)) if since else '-'}, "
          f"retention {st['retention_days']:g} days")
    print(f"alerts:    {len(st['alerts_open'])} firing")
    for a in st["alerts_open"]:
        print(f"  {a['id'][:12]} {a['severity']:<8} {a['kind']:<16} {a['message']}")
    return 0


def register(sub: Any) -> None:
    """Add ``status``."""
    p = sub.add_parser("status", help="the device at a glance from its database")
    p.add_argument("--config", help="TOML config file (for [store] path)")
    p.add_argument("--db", help="SQLite history file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_status)
