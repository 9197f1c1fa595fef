"""``edgewatch central`` (follow a fleet over MQTT) and ``edgewatch fleet`` (look at it)."""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import threading
import time
from typing import Any, Dict, Optional

from ..commands import parse_duration
from ..errors import CommandError, StoreError

DEFAULT_DB = "edgewatch-central.db"


def _broker_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--broker", required=required, metavar="HOST", help="MQTT broker host")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port (default: 1883)")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password", help="MQTT password")
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificate: connect with TLS")
    p.add_argument("--prefix", default="edgewatch/v1", help="topic prefix (default: edgewatch/v1)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``central`` and ``fleet`` commands."""
    p = sub.add_parser("central", help="follow every device over MQTT into a SQLite file",
                       description="Subscribe to the status, heartbeats, alerts and command "
                       "results of every device and keep them in --db; mark devices offline on "
                       "their last will or an overdue heartbeat; forward alerts to --webhook.")
    _broker_args(p, required=True)
    p.add_argument("--db", default=DEFAULT_DB, help=f"central database (default: {DEFAULT_DB})")
    p.add_argument("--webhook", metavar="URL", help="POST each alert transition here as JSON "
                   "(Slack-compatible 'text' field)")
    p.add_argument("--share", metavar="GROUP", help="use MQTT 5 shared subscriptions "
                   "($share/GROUP/...) so several centrals split the load")
    p.add_argument("--offline-after", type=float, metavar="SECONDS", help="mark a device "
                   "offline after this long without a heartbeat (default: 3 x its interval)")
    p.add_argument("--client-id", help="fixed MQTT client id: a persistent session, so alerts "
                   "sent while the central is down are delivered when it is back")
    p.set_defaults(func=run_central)

    f = sub.add_parser("fleet", help="show devices and open alerts from the central database",
                       description="Without a subcommand: one line per device.")
    f.add_argument("--db", default=DEFAULT_DB, help=f"central database (default: {DEFAULT_DB})")
    f.set_defaults(func=run_fleet)
    fsub = f.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    a = fsub.add_parser("alerts", help="list open alerts across devices")
    # SUPPRESS: 'fleet --db X alerts' keeps X instead of this default.
    a.add_argument("--db", default=argparse.SUPPRESS, help="central database")
    a.set_defaults(func=run_fleet_alerts)
    for verb, text in (("ack", "acknowledge an alert on a device"),
                       ("snooze", "snooze an alert on a device")):
        c = fsub.add_parser(verb, help=text, description=f"{text[0].upper()}{text[1:]}: publish "
                            "the command and wait for the device's result.")
        c.add_argument("device", help="device id")
        c.add_argument("alert", help="alert id (see 'edgewatch fleet alerts')")
        if verb == "snooze":
            c.add_argument("--duration", default="1h", help="how long: 30m, 1h, 2d, or seconds "
                           "(default: 1h)")
        c.add_argument("--timeout", type=float, default=10.0,
                       help="seconds to wait for the result (default: 10)")
        _broker_args(c, required=True)
        c.set_defaults(func=run_fleet_command, verb=verb)


def run_central(args: argparse.Namespace) -> int:
    """Handle ``edgewatch central``: run until SIGINT/SIGTERM."""
    from ..central import Central

    central = Central(args.broker, args.port, args.db, prefix=args.prefix, webhook=args.webhook,
                      share=args.share, username=args.username, password=args.password,
                      tls_ca=args.tls_ca, offline_after=args.offline_after,
                      client_id=args.client_id)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    central.start()
    print(f"central: following {args.prefix}/+ on {args.broker}:{args.port} into {args.db}",
          flush=True)
    try:
        stop.wait()
    finally:
        central.stop()
    return 0


def _connect(path: str) -> sqlite3.Connection:
    import os

    if not os.path.exists(path):
        raise StoreError(f"central database not found: {path} (run 'edgewatch central' "
                         "or pass --db)")
    return sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def run_fleet(args: argparse.Namespace) -> int:
    """Handle ``edgewatch fleet``: one line per device."""
    from ..central import fleet_rows

    now = time.time()
    with _connect(args.db) as conn:
        rows = fleet_rows(conn, now)
    print(f"{'DEVICE':<20} {'STATE':<8} {'SINCE':>6} {'HB AGE':>6} {'FPS':>6} {'TEMP':>6} "
          f"{'ALERTS':>6}")
    for r in rows:
        since = _age(now - r["since"]) if r["since"] else "-"
        fps = f"{r['fps']:.1f}" if isinstance(r["fps"], (int, float)) else "-"
        temp = f"{r['temperature_c']:.0f}C" if isinstance(r["temperature_c"], (int, float)) else "-"
        print(f"{r['device']:<20} {'online' if r['online'] else 'offline':<8} {since:>6} "
              f"{_age(r['heartbeat_age_s']):>6} {fps:>6} {temp:>6} {r['open_alerts']:>6}")
    if not rows:
        print("(no devices seen yet)")
    return 0


def run_fleet_alerts(args: argparse.Namespace) -> int:
    """Handle ``edgewatch fleet alerts``: open alerts across devices."""
    from ..central import open_alerts

    now = time.time()
    with _connect(args.db) as conn:
        rows = open_alerts(conn)
    print(f"{'DEVICE':<20} {'ALERT':<34} {'SEVERITY':<8} {'AGE':>5} ACK MESSAGE")
    for r in rows:
        age = _age(now - r["starts_at"]) if r["starts_at"] else "-"
        print(f"{r['device']:<20} {r['id']:<34} {r['severity'] or '-':<8} {age:>5} "
              f"{'yes' if r['acknowledged'] else 'no ':<3} {r['message']}")
    if not rows:
        print("(no open alerts)")
    return 0


def run_fleet_command(args: argparse.Namespace) -> int:
    """Handle ``edgewatch fleet ack|snooze``: send, wait for the result, print it."""
    from ..central import send_command

    body: Dict[str, Any] = {"alert": args.alert}
    if args.verb == "snooze":
        body["duration"] = parse_duration(args.duration)
    if args.timeout <= 0:
        raise CommandError(f"--timeout must be > 0, got {args.timeout}")
    result = send_command(args.broker, args.port, args.device, args.verb, body,
                          timeout=args.timeout, prefix=args.prefix, username=args.username,
                          password=args.password, tls_ca=args.tls_ca)
    print(json.dumps(result, sort_keys=True))
    return 0 if result.get("ok") else 1
