"""``edgewatch status``: the device at a glance, from its database (read-only)."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional

from .._sqlite import holder_info
from ..store import Reader
from ._format import ago, duration, local_time, safe_text, table
from ._run import config_from_args


def device_status(db_path: str, now: float) -> Dict[str, Any]:
    """Running or not, last heartbeat, camera and model, open alerts, threads, database size."""
    reader = Reader(db_path)
    try:
        hb = reader.latest_heartbeat()
        alerts = reader.alerts(state="firing", limit=1000)
        last_event = reader.last_event()
        oldest = reader.oldest_window_ts()
    finally:
        reader.close_reader()
    payload: Dict[str, Any] = hb["payload"] if hb else {}
    interval = float(payload.get("interval_s") or 30.0)
    age = None if hb is None else now - float(hb["ts"])
    size = sum(os.path.getsize(p) for p in (db_path, db_path + "-wal") if os.path.exists(p))
    holder = holder_info(db_path)  # the running agent holds <db>.lock
    running = holder is not None or (hb is not None and age is not None and age < 3 * interval
                                     and (last_event is None or last_event["kind"] != "stop"
                                          or last_event["ts"] < hb["ts"]))
    return {
        "db": db_path, "running": bool(running),
        "pid": (holder or {}).get("pid"),
        "last_heartbeat_ts": None if hb is None else hb["ts"],
        "last_heartbeat_age_s": None if age is None else round(age, 1),
        "model": payload.get("model"), "camera": payload.get("camera"),
        "reference": payload.get("reference"), "monitoring": payload.get("monitoring"),
        "host": payload.get("host"),
        "agent": payload.get("agent"), "outbox": payload.get("outbox"),
        "queues": payload.get("queues"), "threads": payload.get("threads"),
        "alerts_open": [{k: a[k] for k in ("id", "kind", "severity", "feature", "message",
                                           "starts_at")} for a in alerts],
        "last_event": last_event,
        "db_bytes": size,
        "history_since": oldest,
    }


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    return f"{safe_text(value)}{unit}"


def _size_mb(mb: Any) -> str:
    """A size in MB (2**20 bytes) for people: ``512 MB``, ``75.2 GB``, ``1.8 TB``."""
    if not isinstance(mb, (int, float)) or isinstance(mb, bool):
        return _num(mb)
    for unit, scale in (("TB", 1024.0 ** 2), ("GB", 1024.0)):
        if abs(mb) >= scale:
            return f"{mb / scale:.1f} {unit}"
    return f"{mb:.0f} MB"


def _pairs(value: Any, unit: str = "") -> str:
    """``{'p50': 3.518, 'p95': 4.1}`` as ``p50 3.518 ms, p95 4.1 ms``; a number as itself."""
    if isinstance(value, Mapping):
        return ", ".join(f"{safe_text(k)} {_num(v, unit)}" for k, v in value.items()) or "-"
    return _num(value, unit)


def _lines(st: Dict[str, Any], now: float) -> List[str]:
    hb_ts = st["last_heartbeat_ts"]
    model, cam = st["model"] or {}, st["camera"] or {}
    host, ref, outbox = st["host"] or {}, st["reference"] or {}, st["outbox"] or {}
    sha = str(model.get("sha256") or "")[:12] or "-"
    since = st["history_since"]
    pid = f" (pid {st['pid']})" if st["pid"] else ""
    return [
        f"agent:     {'running' if st['running'] else 'not running'}{pid}, last heartbeat "
        + (f"{ago(hb_ts, now)} ({local_time(hb_ts)})" if hb_ts is not None else "never"),
        f"model:     {_num(model.get('path'))}, sha256 {sha}, runtime "
        f"{_num(model.get('runtime'))}, latency {_pairs(model.get('latency_ms'), ' ms')}",
        f"camera:    {_num(cam.get('name'))}, {_num(cam.get('state'))}, frames "
        f"{_num(cam.get('frames'))}, fps {_num(_first(cam, 'fps', 'fps_processed'))}, dropped "
        f"{_num(cam.get('dropped'))}, reconnects {_num(cam.get('reconnects'))}",
        f"host:      cpu {_num(host.get('cpu_percent'), '%')}, memory "
        f"{_num(host.get('memory_percent'), '%')}, disk free {_size_mb(host.get('disk_free_mb'))}"
        f", temperature {_num(host.get('max_temp_c'), ' C')}, throttled "
        f"{_num(host.get('throttled'))}",
        _drift_line(st.get("monitoring"), ref),
        f"outbox:    {_num(outbox.get('depth'))} waiting, oldest "
        f"{duration(outbox.get('oldest_age_s'))}, dropped {_num(outbox.get('dropped'))}",
        f"database:  {safe_text(st['db'])}, {st['db_bytes'] / 1e6:.1f} MB (max "
        f"{st['max_db_mb']:g} MB), history since {local_time(since)}, retention "
        f"{st['retention_days']:g} days",
        f"alerts:    {len(st['alerts_open'])} firing",
    ]


def _first(values: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` with a value (heartbeat 3's ``fps``, else an older agent's)."""
    return next((values[k] for k in keys if values.get(k) is not None), None)


def _drift_line(mon: Optional[Mapping[str, Any]], ref: Mapping[str, Any]) -> str:
    """Whether drift detection runs, against which reference, and if not why and since when."""
    if not isinstance(mon, Mapping):  # a heartbeat from an agent before issue 9
        return f"reference: {safe_text(ref.get('origin', 'none (warming up)'))}"
    against = mon.get("reference") or {}
    line = f"drift:     {safe_text(mon.get('state'))}"
    if against:
        line += (f", against the {safe_text(against.get('kind'))} reference "
                 f"({safe_text(against.get('origin'))}, {safe_text(against.get('view'))} view)")
    if mon.get("state") != "active":
        since = mon.get("since")
        line += f": {safe_text(mon.get('reason'))}"
        line += f" (since {local_time(since)})" if since is not None else ""
    return line


def _threads_table(threads: Optional[Mapping[str, Any]]) -> Optional[str]:
    if not isinstance(threads, Mapping) or not threads:
        return None
    rows = [{"thread": name, "alive": h.get("alive"), "critical": h.get("critical"),
             "failures": h.get("failures"), "in a row": h.get("consecutive"),
             "last error": h.get("last_error"),
             "when": local_time(h["last_error_ts"]) if h.get("last_error_ts") else None}
            for name, h in sorted(threads.items()) if isinstance(h, Mapping)]
    return table(rows, ["thread", "alive", "critical", "failures", "in a row", "last error",
                        "when"])


def _status(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    now = time.time()
    st = device_status(cfg.store.path, now)
    st["retention_days"] = cfg.store.retention_days
    st["max_db_mb"] = cfg.store.max_db_mb
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print("\n".join(_lines(st, now)))
    if st["alerts_open"]:
        print()
        print(table([{**a, "id": str(a["id"])[:12], "since": local_time(a["starts_at"])}
                     for a in st["alerts_open"]],
                    ["id", "severity", "kind", "feature", "since", "message"]))
    threads = _threads_table(st["threads"])
    if threads:
        print()
        print(threads)
    return 0


def register(sub: Any) -> None:
    """Add ``status``."""
    p = sub.add_parser("status", help="the device at a glance from its database")
    p.add_argument("--config", help="TOML config file (for [store] path)")
    p.add_argument("--db", help="SQLite history file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_status)
