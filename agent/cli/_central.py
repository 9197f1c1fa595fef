"""``edgewatch central`` (follow a fleet over MQTT) and ``edgewatch fleet`` (look at it, act on it).

Broker settings come from the device config's ``[mqtt]`` when ``--config`` is given, and the
flags override them. The password may come from ``--password-env VAR`` or ``--password-file``
rather than the command line (visible in ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..commands import parse_duration
from ..errors import CommandError, StoreError, UsageError
from ..mqttclient import PROTOCOLS, ClientSettings, read_password
from ._alerts import default_by, describe_result, who
from ._format import duration, local_time, safe_text, table

if TYPE_CHECKING:
    from ..central.config import CentralConfig

DEFAULT_DB = "edgewatch-central.db"
DEFAULT_PREFIX = "edgewatch/v1"


def _broker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker (default: [mqtt] of --config)")
    g.add_argument("--config", metavar="FILE", help="a central config ([central] and [mqtt]), "
                   "or a device config whose [mqtt] names the broker")
    g.add_argument("--broker", metavar="HOST", help="MQTT broker host")
    g.add_argument("--port", type=int, help="MQTT broker port (default: 1883)")
    g.add_argument("--protocol", choices=PROTOCOLS, help="MQTT protocol version (default: 5)")
    g.add_argument("--username", help="MQTT user name")
    g.add_argument("--password", help="MQTT password (visible to other local users: prefer "
                   "--password-env or --password-file)")
    g.add_argument("--password-env", metavar="VAR", help="read the MQTT password from this "
                   "environment variable")
    g.add_argument("--password-file", metavar="FILE", help="read the MQTT password from this file")
    g.add_argument("--tls-ca", metavar="FILE", help="CA certificate: connect with TLS")
    g.add_argument("--tls-cert", metavar="FILE", help="client certificate (with --tls-key)")
    g.add_argument("--tls-key", metavar="FILE", help="client certificate's private key")
    g.add_argument("--prefix", help=f"topic prefix (default: {DEFAULT_PREFIX})")


def _config(args: argparse.Namespace) -> CentralConfig:
    """The file named by --config (a central or a device config), or the defaults."""
    from ..central.config import CentralConfig, CentralSection, load_central_config

    if getattr(args, "config", None):
        return load_central_config(args.config)
    return CentralConfig(CentralSection(), None)


def _settings(args: argparse.Namespace, cfg: CentralConfig, client_id: str, *,
              persistent: bool = False) -> Tuple[ClientSettings, str]:
    """Client settings and topic prefix: ``[mqtt]`` of --config, overridden by the flags."""
    base: Dict[str, Any] = {}
    m = cfg.mqtt
    if m is not None:
        base = {"host": m.host, "port": m.port, "protocol": m.protocol,
                "keepalive": m.keepalive, "username": m.username, "password": m.password,
                "tls": m.tls, "ca_file": m.ca_file, "cert_file": m.cert_file,
                "key_file": m.key_file, "tls_insecure": m.tls_insecure,
                "prefix": m.topic_prefix}
    flags = {"host": args.broker, "port": args.port, "protocol": args.protocol,
             "username": args.username, "ca_file": args.tls_ca, "cert_file": args.tls_cert,
             "key_file": args.tls_key, "prefix": args.prefix}
    base.update({k: v for k, v in flags.items() if v is not None})
    if "host" not in base:
        raise UsageError("give --broker HOST (or --config with an [mqtt] section)")
    secret = (args.password, args.password_env, args.password_file)
    if secret == (None, None, None):  # none on the command line: the config's reference
        secret = (None, cfg.central.password_env, cfg.central.password_file)
    password = read_password(value=secret[0], env=secret[1], file=secret[2])
    if password is not None:
        base["password"] = password
    if base.get("ca_file") or base.get("cert_file"):
        base["tls"] = True
    prefix = str(base.pop("prefix", DEFAULT_PREFIX))
    return ClientSettings(client_id=client_id, persistent=persistent, **base), prefix


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``central`` and ``fleet`` commands."""
    p = sub.add_parser("central", help="follow every device over MQTT into SQLite or "
                       "PostgreSQL",
                       description="Subscribe to the status, heartbeats, alerts and commands of "
                       "every device and keep them in --db; mark devices offline on their last "
                       "will or an overdue heartbeat; send alerts and device offline/online "
                       "changes to --webhook, retrying until delivered.")
    _broker_args(p)
    p.add_argument("--db", help=f"central database: a SQLite file or a postgresql:// URL "
                   f"(default: {DEFAULT_DB})")
    p.add_argument("--webhook", metavar="[FORMAT=]URL", action="append", help="POST each "
                   "alert transition and device offline/online change here; FORMAT: json (the "
                   "default: 'text' and the record), slack (a readable message) or generic (flat "
                   "JSON); repeat for several webhooks")
    p.add_argument("--webhook-expire", metavar="DURATION", help="give up on a notification "
                   "the webhook has not taken for this long (default: 1d)")
    p.add_argument("--group-wait", metavar="DURATION", help="hold each notification this long "
                   "so that a storm of one kind leaves as one webhook call listing the devices "
                   "(default: 5s; 0 sends at once)")
    p.add_argument("--group-interval", metavar="DURATION", help="after a group went out, hold "
                   "its next notifications this long (default: 30s; 0 for none)")
    p.add_argument("--keep-history", metavar="DURATION", help="drop heartbeats, commands and "
                   "results older than this (default: 30d; alerts are kept)")
    p.add_argument("--share", metavar="GROUP", help="use MQTT 5 shared subscriptions "
                   "($share/GROUP/...) so several centrals on one PostgreSQL split the load "
                   "(give each its own --client-id)")
    p.add_argument("--offline-after", type=float, metavar="SECONDS", help="mark a device "
                   "offline after this long without a heartbeat (default: 3 x its interval)")
    p.add_argument("--client-id", help="fixed MQTT client id: a persistent session, so alerts "
                   "sent while the central is down are delivered when it is back")
    p.add_argument("--alertmanager", metavar="URL", help="post alerts to this Alertmanager "
                   "(its v2 API, e.g. http://127.0.0.1:9093): firing and resolved, open ones "
                   "again every --alertmanager-interval")
    p.add_argument("--alertmanager-interval", metavar="DURATION", help="post open alerts to "
                   "Alertmanager again this often (default: 60s; it resolves alerts that stop "
                   "coming after 4 intervals)")
    p.add_argument("--metrics-port", type=int, metavar="N", help="serve the fleet's "
                   "Prometheus metrics from the database on http://HOST:N/metrics")
    p.add_argument("--metrics-host", metavar="HOST", help="the address /metrics listens on "
                   "(default: 127.0.0.1; 0.0.0.0 for a Prometheus elsewhere)")
    p.set_defaults(func=run_central)

    f = sub.add_parser("fleet", help="show devices, alerts and commands from the central "
                       "database; ack or snooze an alert on a device",
                       description="Without a subcommand: one line per device.")
    _view_args(f, sub_command=False)
    f.set_defaults(func=run_fleet)
    fsub = f.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    a = fsub.add_parser("alerts", help="list open alerts across devices")
    _view_args(a, sub_command=True)
    a.set_defaults(func=run_fleet_alerts)
    c = fsub.add_parser("commands", help="list recent commands and their results")
    _view_args(c, sub_command=True)
    c.add_argument("--limit", type=int, default=20, help="how many (default: 20)")
    c.set_defaults(func=run_fleet_commands)
    _command_parsers(fsub)
    _samples_parser(fsub)


def _samples_parser(fsub: Any) -> None:
    """``fleet samples DEVICE ALERT``: fetch an alert's captured frames over MQTT."""
    s = fsub.add_parser("samples", help="fetch an alert's captured frames from a device",
                        description="Fetch an alert's captured frames from a device over MQTT "
                        "in chunks (the device needs [capture] remote = true and TLS); a "
                        "transfer cut short resumes when run again.")
    s.add_argument("device", help="device id")
    s.add_argument("alert", help="alert id (or a prefix of it)")
    s.add_argument("--out", required=True, help="folder for the JPEGs and samples.jsonl")
    s.add_argument("--chunk-kb", type=int, default=32, help="chunk size in KB (default: 32)")
    s.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for each window of chunks (default: 30)")
    _broker_args(s)
    s.set_defaults(func=run_fleet_samples)


def run_fleet_samples(args: argparse.Namespace) -> int:
    """Handle ``edgewatch fleet samples``: fetch, then one summary line."""
    from pathlib import Path

    from ..central.samples import fetch_samples

    if args.timeout <= 0 or not 1 <= args.chunk_kb <= 256:
        raise UsageError("--timeout must be > 0 and --chunk-kb from 1 to 256")
    settings, prefix = _settings(args, _config(args), f"edgewatch-cli-{uuid.uuid4().hex[:8]}")
    got = fetch_samples(settings, args.device, args.alert, Path(args.out), prefix=prefix,
                        chunk_kb=args.chunk_kb, timeout=args.timeout)
    failed = f"; {len(got['failed'])} not fetched (ids {got['failed'][:10]})" \
        if got["failed"] else ""
    print(f"{safe_text(args.device)}: {got['fetched']} of {got['samples']} samples fetched, "
          f"{got['already']} already here, in {got['out']}{failed}")
    return 1 if got["failed"] else 0


_FLEET_HELP = {
    "ack": "acknowledge an alert on a device (no repeats until it resolves)",
    "snooze": "snooze an alert, kind or feature on a device",
    "disable": "disable alerts of a kind or feature on a device",
    "enable": "enable a disabled kind or feature on a device again",
    "set": "set a feature's drift threshold on a device",
    "rebaseline": "make a device learn a new reference from its coming frames",
}


def _command_parsers(fsub: Any) -> None:
    """``fleet ack|snooze|disable|enable|set|rebaseline DEVICE ...``: one device command each."""
    for verb, text in _FLEET_HELP.items():
        cmd = fsub.add_parser(verb, help=text, description=f"{text[0].upper()}{text[1:]}: "
                              "publish the command and wait for the device's result.")
        cmd.add_argument("device", help="device id")
        if verb in ("ack", "snooze"):
            what = "alert id (as 'edgewatch fleet alerts' or 'edgewatch alerts list' show it)"
            cmd.add_argument("alert", help=what + (", a kind or a feature"
                                                   if verb == "snooze" else ""))
        elif verb in ("disable", "enable"):
            cmd.add_argument("alert", metavar="target", help="a kind or a feature")
        elif verb == "set":
            cmd.add_argument("alert", metavar="feature", help="feature name, e.g. brightness")
            cmd.add_argument("value", type=float, help="new threshold")
            cmd.add_argument("--metric", help="metric the threshold applies to")
        if verb == "snooze":
            cmd.add_argument("--for", dest="duration", default="1h",
                             help="how long, e.g. 30m, 2h (default 1h)")
            cmd.add_argument("--duration", dest="duration", help=argparse.SUPPRESS)
        if verb != "rebaseline":
            cmd.add_argument("--by", help="who asks, kept with the alert and shown by every "
                             "view (default: $USER@$HOSTNAME)")
        cmd.add_argument("--timeout", type=float, default=10.0,
                         help="seconds to wait for the result (default: 10)")
        cmd.add_argument("--json", action="store_true", help="print the device's answer as JSON")
        _broker_args(cmd)
        cmd.set_defaults(func=run_fleet_command, verb=verb)


def _view_args(p: argparse.ArgumentParser, sub_command: bool) -> None:
    # SUPPRESS on subcommands: 'fleet --db X alerts' keeps X instead of the default.
    default: Any = argparse.SUPPRESS if sub_command else None
    default_json: Any = argparse.SUPPRESS if sub_command else False
    p.add_argument("--db", default=default,
                   help=f"central database (default: [central] db of --config, or {DEFAULT_DB})")
    p.add_argument("--config", default=default, metavar="FILE",
                   help="a central config: its [central] db is the database to read")
    p.add_argument("--json", action="store_true", default=default_json,
                   help="machine-readable output (unix times, seconds)")


# -- central ------------------------------------------------------------------------------------

def _duration(flag: str, text: Optional[str], default: float, *, zero: bool = False) -> float:
    """A duration flag's seconds (``default`` when not given); its error names the flag."""
    if text is None:
        return default
    if zero and text.strip() in ("0", "0s"):
        return 0.0
    try:
        return parse_duration(text)
    except CommandError as exc:
        raise CommandError(f"{flag}: {exc}") from None


def run_central(args: argparse.Namespace) -> int:
    """Handle ``edgewatch central``: run until SIGINT/SIGTERM, or a writer that keeps failing."""
    from ..central import Central
    from ..central._postgres import redact_url

    cfg = _config(args)
    c = cfg.central
    client_id = args.client_id or c.client_id
    settings, prefix = _settings(args, cfg, client_id or f"edgewatch-central-{uuid.uuid4().hex[:8]}",
                                 persistent=client_id is not None)
    db = args.db or c.db
    expire = _duration("--webhook-expire", args.webhook_expire, c.webhook_expire_s)
    keep = _duration("--keep-history", args.keep_history, c.keep_history_days * 86400)
    group_wait = _duration("--group-wait", args.group_wait, c.group_wait_s, zero=True)
    group_interval = _duration("--group-interval", args.group_interval, c.group_interval_s,
                               zero=True)
    stop = threading.Event()
    central = Central(settings.host, settings.port, db, settings=settings, prefix=prefix,
                      webhooks=args.webhook or [*([c.webhook] if c.webhook else []),
                                                *c.webhooks], share=args.share or c.share,
                      offline_after=args.offline_after or c.offline_after_s,
                      notify_expire_s=expire, keep_history_s=keep, group_wait_s=group_wait,
                      group_interval_s=group_interval, group_by=c.group_by,
                      metrics_port=c.metrics_port if args.metrics_port is None
                      else args.metrics_port, metrics_host=args.metrics_host or c.metrics_host,
                      alertmanager=args.alertmanager or c.alertmanager,
                      alertmanager_interval_s=_duration("--alertmanager-interval",
                                                        args.alertmanager_interval,
                                                        c.alertmanager_interval_s),
                      on_fatal=lambda _reason: stop.set())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    central.start()
    print(f"central: following {prefix}/+ on {settings.describe()} into {redact_url(db)}",
          flush=True)
    if central.metrics_port is not None:
        print(f"central: metrics on http://{args.metrics_host or c.metrics_host}:"
              f"{central.metrics_port}/metrics",
              flush=True)
    try:
        stop.wait()
    finally:
        central.stop()
    if central.fatal:
        raise StoreError(f"central stopped: {central.fatal}")
    return 0


# -- fleet views ---------------------------------------------------------------------------------

def _reader(args: argparse.Namespace) -> Any:
    from ..central import CentralReader

    return CentralReader(args.db or _config(args).central.db)


def _dump(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def run_fleet(args: argparse.Namespace) -> int:
    """Handle ``edgewatch fleet``: one line per device, then the central's own health."""
    from ..central import fleet_rows

    now = time.time()
    with _reader(args) as reader:
        rows = fleet_rows(reader, now)
        central = reader.central_status()
        pending = reader.pending_notifications()
    if args.json:
        _dump({"devices": rows, "central": central, "notifications_pending": pending})
        return 0
    shown = [{"device": r["device"], "state": "online" if r["online"] else "offline",
              "since": local_time(r["since"]), "heartbeat": _ago(r["heartbeat_age_s"]),
              "fps": _num(r["fps"], "{:.1f}"), "temp": _num(r["temperature_c"], "{:.0f}C"),
              "alerts": r["open_alerts"], "reason": r["reason"]} for r in rows]
    print(table(shown, ["device", "state", "since", "heartbeat", "fps", "temp", "alerts",
                        "reason"]) if shown else "(no devices seen yet)")
    for line in _central_lines(central, pending, now):
        print(line)
    return 0


def _central_lines(status: Optional[Dict[str, Any]], pending: int, now: float) -> List[str]:
    if status is None:
        return ["central: no status saved yet (is 'edgewatch central' running on this file?)"]
    bad = status.get("bad") or {}
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(bad.items()))
    lines = [f"central: status of {_ago(now - float(status.get('ts') or now))} ago; broker "
             f"{'connected' if status.get('connected') else 'NOT connected'}"
             + (f" ({safe_text(status['broker_error'])})" if status.get("broker_error") else ""),
             f"  bad messages skipped: {sum(bad.values())}" + (f" ({reasons})" if reasons else ""),
             f"  dropped (queue full): {status.get('dropped', 0)}; notifications waiting: "
             f"{pending}"]
    for name, h in sorted((status.get("threads") or {}).items()):
        if h.get("failures") or not h.get("alive"):
            lines.append(f"  thread {name}: {'alive' if h.get('alive') else 'DEAD'}, "
                         f"{h.get('failures')} failures, last: {safe_text(h.get('last_error'))}")
    return lines + _output_lines(status)


def _output_lines(status: Dict[str, Any]) -> List[str]:
    """A line for each webhook and the Alertmanager: where, how many went out, failing."""
    outputs = [(f"webhook {w.get('url')} ({w.get('format')})", w.get("sent"), w.get("failing"),
                w.get("failed_attempts")) for w in status.get("webhooks") or []
               if isinstance(w, dict)]
    if status.get("alertmanager_url"):
        outputs.append((f"alertmanager {status['alertmanager_url']}",
                        status.get("alertmanager_posts"), status.get("alertmanager_failing"),
                        status.get("alertmanager_failed_attempts")))
    return [f"  {safe_text(what)}: {sent or 0} sent"
            + (f", FAILING ({failed} failed attempts)" if failing else "")
            for what, sent, failing, failed in outputs]


def _ago(seconds: Optional[float]) -> str:
    return "-" if seconds is None else duration(max(0.0, seconds))


def _num(value: Any, fmt: str) -> Optional[str]:
    return fmt.format(value) if isinstance(value, (int, float)) else None


def run_fleet_alerts(args: argparse.Namespace) -> int:
    """Handle ``edgewatch fleet alerts``: open alerts across devices."""
    from ..central import open_alerts

    now = time.time()
    with _reader(args) as reader:
        rows = open_alerts(reader)
    if args.json:
        _dump(rows)
        return 0
    shown = [{**r, "id": str(r["id"])[:12], "since": local_time(r["starts_at"]),
              "acknowledged": (who(r["acknowledged_by"], r["acknowledged_at"]) or "yes")
              if r["acknowledged"] else "no",
              "snoozed": f"until {local_time(r['snoozed_until'])}"
              + (f" by {safe_text(r['snoozed_by'])}" if r["snoozed_by"] else "")
              if (r["snoozed_until"] or 0) > now else None} for r in rows]
    print(table(shown, ["device", "id", "kind", "severity", "feature", "since", "acknowledged",
                        "snoozed", "message"], {"id": "ALERT", "acknowledged": "ACK",
                                                "snoozed": "SNOOZED"})
          if shown else "(no open alerts)")
    return 0


def run_fleet_commands(args: argparse.Namespace) -> int:
    """Handle ``edgewatch fleet commands``: recent commands and their results."""
    from ..central import recent_commands

    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    with _reader(args) as reader:
        rows = recent_commands(reader, args.limit)
    if args.json:
        _dump(rows)
        return 0
    shown = [{**r, "time": local_time(r["received"]),
              "result": "pending" if r["ok"] is None else "ok" if r["ok"] else
              f"failed: {r['error']}"} for r in rows]
    print(table(shown, ["time", "device", "verb", "alert", "requested_by", "result"],
                {"requested_by": "BY"}) if shown else "(no commands seen yet)")
    return 0


def _command_body(args: argparse.Namespace) -> Dict[str, Any]:
    """The device command's fields for ``fleet VERB`` (validated here as on the device)."""
    verb = args.verb
    body: Dict[str, Any] = {}
    if verb in ("ack", "snooze"):
        body["alert"] = args.alert
    elif verb in ("disable", "enable"):
        body["target"] = args.alert
    elif verb == "set":
        if not args.value > 0:
            raise UsageError(f"the threshold must be > 0, got {args.value:g}")
        body.update(feature=args.alert, value=args.value)
        if args.metric:
            body["metric"] = args.metric
    if verb == "snooze":
        body["duration"] = parse_duration(args.duration)
    if verb != "rebaseline":
        body["by"] = args.by or default_by()
    return body


def run_fleet_command(args: argparse.Namespace) -> int:
    """Handle ``edgewatch fleet ack|snooze|disable|enable|set|rebaseline``: send, wait, print."""
    from ..central import send_command
    from ..central.fleet import FLEET_VERBS

    body = _command_body(args)
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0, got {args.timeout}")
    settings, prefix = _settings(args, _config(args), f"edgewatch-cli-{uuid.uuid4().hex[:8]}")
    verb = FLEET_VERBS[args.verb]
    result = send_command(settings, args.device, verb, body, timeout=args.timeout,
                          prefix=prefix)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0 if result.get("ok") else 1
    if not result.get("ok"):
        raise CommandError(f"{args.device} refused {args.verb}: "
                           f"{safe_text(result.get('error') or 'no reason given')}")
    answer = result.get("result") or {}
    print(f"{safe_text(args.device)}: {describe_result(answer if isinstance(answer, dict) else {})}")
    return 0
