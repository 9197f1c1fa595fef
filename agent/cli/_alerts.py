"""``edgewatch alerts list|ack|snooze|disable|enable|set`` on the device.

Commands go to the running agent through the ``commands`` table of its database (it
polls every second and writes the result back). When no agent answers, the control is
written straight to the ``controls`` table and takes effect when the agent starts.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from typing import Any, Dict

from ..commands import parse_duration
from ..errors import CommandError, StoreError
from ..store import connect_readonly, open_db
from ._run import config_from_args

ANSWER_TIMEOUT_S = 5.0


def send_command(db_path: str, verb: str, payload: Dict[str, Any],
                 timeout: float = ANSWER_TIMEOUT_S) -> Dict[str, Any]:
    """Queue a command for the running agent and wait for its result (None: no agent)."""
    db = open_db(db_path)
    req = {"ts": time.time(), "verb": verb, "payload": json.dumps(payload), "result": None,
           "done_ts": None}
    cid = db.table("commands").insert(req).last_pk
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute("SELECT result, done_ts FROM commands WHERE id = ?", [cid]).fetchone()
        if row and row[1] is not None:
            return json.loads(row[0])
        time.sleep(0.1)
    cur = db.execute("DELETE FROM commands WHERE id = ? AND done_ts IS NULL", [cid])
    db.conn.commit()
    if cur.rowcount == 0:  # answered just now
        row = db.execute("SELECT result FROM commands WHERE id = ?", [cid]).fetchone()
        return json.loads(row[0])
    return {"ok": None}


def apply_offline(db_path: str, verb: str, payload: Dict[str, Any]) -> Dict[str, Any]:
    """Write a control straight to the database for the agent's next start."""
    db = open_db(db_path)
    if verb == "ack":
        row = db.execute("SELECT fingerprint, id FROM alerts WHERE state = 'firing' AND "
                         "(id = ? OR fingerprint = ?)", [payload["alert"], payload["alert"]]).fetchone()
        if row is None:
            raise CommandError(f"no firing alert {payload['alert']!r} (see edgewatch alerts list)")
        control = {"kind": "ack", "target": row[0], "until": None, "value": 1.0}
    elif verb == "snooze":
        control = {"kind": "snooze", "target": payload["target"], "until": payload["until"],
                   "value": None}
    elif verb == "disable":
        control = {"kind": "disable", "target": payload["target"], "until": None, "value": 1.0}
    elif verb == "enable":
        db.execute("DELETE FROM controls WHERE kind = 'disable' AND target = ?", [payload["target"]])
        db.conn.commit()
        return {"ok": True, "result": {"enabled": payload["target"]}, "offline": True}
    elif verb == "set_threshold":
        key = payload["feature"] + (f":{payload['metric']}" if payload.get("metric") else "")
        control = {"kind": "threshold", "target": key, "until": None, "value": float(payload["value"])}
    else:
        raise CommandError(f"{verb} needs the running agent")
    db.table("controls").upsert(control, pk=("kind", "target"))
    return {"ok": True, "result": control, "offline": True}


def _dispatch(args: argparse.Namespace, verb: str, payload: Dict[str, Any]) -> int:
    db_path = config_from_args(args).store.path
    payload.setdefault("id", f"cli-{int(time.time() * 1000)}")
    result = send_command(db_path, verb, payload)
    if result.get("ok") is None:
        result = apply_offline(db_path, verb, payload)
        print("agent not answering: saved in the database, applied when it starts")
    print(json.dumps(result, indent=2, default=str))
    return 0 if result.get("ok") else 1


def _list(args: argparse.Namespace) -> int:
    path = config_from_args(args).store.path
    try:
        conn = connect_readonly(path)
    except (sqlite3.Error, StoreError) as exc:
        raise StoreError(f"cannot read {path}: {exc} (run the agent first or pass --db)") from None
    where = "" if args.all else "WHERE state = 'firing'"
    rows = conn.execute(f"SELECT * FROM alerts {where} ORDER BY ts DESC LIMIT ?", [args.limit]).fetchall()
    controls = conn.execute("SELECT * FROM controls").fetchall()
    if args.json:
        print(json.dumps({"alerts": [json.loads(r["payload"]) for r in rows],
                          "controls": [dict(c) for c in controls]}, indent=2))
        return 0
    if not rows:
        print("no firing alerts" if not args.all else "no alerts")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["starts_at"] or r["ts"]))
        print(f"{r['id'][:12]}  {r['state']:<8} {r['severity']:<8} {r['kind']:<16} "
              f"{r['feature']:<16} since {when}  {r['message']}")
    for c in controls:
        until = f" until {time.strftime('%H:%M:%S', time.localtime(c['until']))}" if c["until"] else ""
        value = f" = {c['value']:g}" if c["kind"] == "threshold" else ""
        print(f"control: {c['kind']} {c['target']}{value}{until}")
    return 0


def register(sub: Any) -> None:
    """Add ``alerts`` and its subcommands."""
    p = sub.add_parser("alerts", help="list and control alerts on this device")
    asub = p.add_subparsers(dest="alerts_command", metavar="ACTION")
    asub.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", help="TOML config file (for [store] path)")
        q.add_argument("--db", help="SQLite history file")

    q = asub.add_parser("list", help="list firing alerts and controls in force")
    common(q)
    q.add_argument("--all", action="store_true", help="include resolved alerts")
    q.add_argument("--limit", type=int, default=50, help="at most this many alerts")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_list)

    q = asub.add_parser("ack", help="acknowledge a firing alert (no repeats until it resolves)")
    common(q)
    q.add_argument("alert", help="alert id (or its prefix as listed) or fingerprint")
    q.set_defaults(func=lambda a: _dispatch(a, "ack", {"alert": _full_id(a, a.alert)}))

    q = asub.add_parser("snooze", help="silence an alert, kind or feature for a while")
    common(q)
    q.add_argument("target", help="alert id or fingerprint, a kind, or a feature")
    q.add_argument("--for", dest="duration", default="1h", help="how long, e.g. 30m, 2h (default 1h)")
    q.set_defaults(func=lambda a: _dispatch(a, "snooze", {
        "target": _full_id(a, a.target), "until": time.time() + parse_duration(a.duration)}))

    q = asub.add_parser("disable", help="disable alerts of a kind or a feature")
    common(q)
    q.add_argument("target", help="a kind (e.g. data_drift) or a feature (e.g. brightness)")
    q.set_defaults(func=lambda a: _dispatch(a, "disable", {"target": a.target}))

    q = asub.add_parser("enable", help="enable a disabled kind or feature again")
    common(q)
    q.add_argument("target", help="a kind or a feature")
    q.set_defaults(func=lambda a: _dispatch(a, "enable", {"target": a.target}))

    q = asub.add_parser("set", help="set a feature's drift threshold (KS distance) at run time")
    common(q)
    q.add_argument("feature", help="feature name, e.g. brightness")
    q.add_argument("value", type=float, help="new threshold")
    q.add_argument("--metric", help="metric the threshold applies to (default: the primary)")
    q.set_defaults(func=lambda a: _dispatch(a, "set_threshold", {
        "feature": a.feature, "value": a.value, **({"metric": a.metric} if a.metric else {})}))


def _full_id(args: argparse.Namespace, prefix: str) -> str:
    """Expand an alert id prefix (as ``alerts list`` prints it) to the full id."""
    path = config_from_args(args).store.path
    try:
        conn = connect_readonly(path)
        rows = conn.execute("SELECT id FROM alerts WHERE id LIKE ? AND state = 'firing'",
                            [prefix + "%"]).fetchall()
    except (sqlite3.Error, StoreError):
        return prefix
    return rows[0][0] if len(rows) == 1 else prefix
