"""``edgewatch alerts list|ack|snooze|disable|enable|set`` on the device.

Commands go to the running agent over its control socket (:mod:`agent.control`): the agent
is the only writer of its database. When no agent holds the database, the command is
validated and applied to it directly, the same way, and takes effect when the agent starts.
``list`` only reads.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import time
from typing import Any, Dict, List

from ..control import send
from ..errors import CommandError, StoreError
from ..store import Reader
from ._format import duration, local_time, safe_text, table
from ._run import config_from_args

_TIME_KEYS = ("until", "ts", "starts_at", "ends_at", "at")


def default_by() -> str:
    """Who asked, when ``--by`` is not given: ``$USER@$HOSTNAME``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def who(by: Any, at: Any) -> Any:
    """``ops@desk 14:02:05`` for the ACK and SNOOZED columns (None when nobody)."""
    if by is None and at is None:
        return None
    return " ".join(p for p in (safe_text(by) if by else None,
                                local_time(float(at)) if isinstance(at, (int, float)) else None)
                    if p)


def _dispatch(args: argparse.Namespace, verb: str, payload: Dict[str, Any]) -> int:
    cfg = config_from_args(args)
    answer = send(cfg, verb, {**payload, "by": args.by or default_by()})
    if getattr(args, "json", False):
        print(json.dumps(answer, indent=2, default=str))
        return 0 if answer.get("ok") else CommandError.exit_code
    if not answer.get("ok"):
        raise CommandError(str(answer.get("error") or "command rejected"))
    print(describe_result(answer.get("result") or {}))
    if answer.get("offline"):
        print(f"agent not running: saved in {cfg.store.path}, applied when it starts")
    return 0


def describe_result(result: Dict[str, Any]) -> str:
    """One line for people from a command's result."""
    parts: List[str] = []
    for key, value in result.items():
        if value is None or value == []:
            continue
        if key in _TIME_KEYS and isinstance(value, (int, float)):
            text = local_time(float(value))
        elif isinstance(value, (list, tuple)):
            text = ", ".join(safe_text(v) for v in value)
        elif isinstance(value, float):
            text = f"{value:g}"
        else:
            text = safe_text(value)
        parts.append(f"{key} {text}")
    return "ok: " + ("; ".join(parts) if parts else "done")


def _list(args: argparse.Namespace) -> int:
    reader = Reader(config_from_args(args).store.path)
    try:
        rows = reader.alerts(state=None if args.all else "firing", limit=args.limit)
        controls = reader.controls()
    finally:
        reader.close_reader()
    if args.json:
        print(json.dumps({"alerts": [r["payload"] for r in rows], "controls": controls},
                         indent=2))
        return 0
    now = time.time()
    if not rows:
        print("no firing alerts" if not args.all else "no alerts")
    else:
        print(table([_alert_row(r, now) for r in rows],
                    ["id", "state", "severity", "kind", "feature", "since", "for", "ack",
                     "snoozed", "message"]))
    if controls:
        print()
        print(table([{"control": c["kind"], "target": c["target"],
                      "value": c["value"] if c["kind"] == "threshold" else None,
                      "until": local_time(c["until"]) if c["until"] else None}
                     for c in controls], ["control", "target", "value", "until"]))
    return 0


def _alert_row(r: Dict[str, Any], now: float) -> Dict[str, Any]:
    start = r["starts_at"] if r["starts_at"] is not None else r["ts"]
    end = r["ends_at"] if r["ends_at"] is not None else now
    p = r.get("payload") or {}
    until = p.get("snoozed_until")
    snoozed = (f"until {local_time(float(until))}" + (f" by {safe_text(p['snoozed_by'])}"
               if p.get("snoozed_by") else "")) if isinstance(until, (int, float)) \
        and until > now and r["state"] == "firing" else None
    acked = (who(p.get("acknowledged_by"), p.get("acknowledged_at")) or "yes") \
        if p.get("acknowledged") else None
    return {"id": str(r["id"])[:12], "state": r["state"], "severity": r["severity"],
            "kind": r["kind"], "feature": r["feature"], "since": local_time(start),
            "for": duration(end - start) if start is not None else None,
            "ack": acked, "snoozed": snoozed, "message": r["message"]}


def register(sub: Any) -> None:
    """Add ``alerts`` and its subcommands."""
    p = sub.add_parser("alerts", help="list and control alerts on this device")
    asub = p.add_subparsers(dest="alerts_command", metavar="ACTION")
    asub.required = True

    def common(q: argparse.ArgumentParser, by: bool = True) -> None:
        q.add_argument("--config", help="TOML config file (for [store] path)")
        q.add_argument("--db", help="SQLite history file")
        q.add_argument("--json", action="store_true", help="print JSON")
        if by:
            q.add_argument("--by", default=None, help="who asks, kept with the alert and "
                           "shown by every view (default: $USER@$HOSTNAME)")

    q = asub.add_parser("list", help="list firing alerts and controls in force")
    common(q, by=False)
    q.add_argument("--all", action="store_true", help="include resolved alerts")
    q.add_argument("--limit", type=int, default=50, help="at most this many alerts")
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
        "target": _full_id(a, a.target), "duration": a.duration}))

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
    reader = Reader(config_from_args(args).store.path)
    try:
        ids = reader.firing_alert_ids(prefix)
    except StoreError:
        return prefix  # the command itself reports an unreadable database
    finally:
        reader.close_reader()
    return ids[0] if len(ids) == 1 else prefix
