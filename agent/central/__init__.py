"""The operator side: follow a fleet of agents over MQTT into one SQLite file.

:class:`Central` subscribes to every device's status, heartbeats, alerts, retained alert
state and command results; keeps the current state of devices and alerts (QoS 1 can deliver
twice: alert transitions are deduplicated by ``(id, seq)``, heartbeats by ``(device, seq)``);
marks a device offline on its last will or when its heartbeat is overdue; and forwards new
alert transitions to an optional webhook (JSON with a Slack-compatible ``text``) from a
background thread with retry and backoff. :func:`send_command` is the request/response
helper behind ``edgewatch fleet ack|snooze``.

Threads: paho's network loop only queues messages; one ``edgewatch-central-db`` thread owns
the SQLite writes (and the overdue check); ``edgewatch-central-webhook`` posts.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional

import paho.mqtt.client as mqtt
import sqlite_utils

from ..errors import CommandError, StoreError
from ..mqtt import topics
from ..mqttclient import ClientSettings, build_client
from .records import AlertTransition, BadMessage, ClearedState, Heartbeat, Status, parse

log = logging.getLogger(__name__)

__all__ = ["Central", "open_central_db", "fleet_rows", "open_alerts", "send_command",
           "webhook_body"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, online INT, since REAL,
    reason TEXT, last_heartbeat_ts REAL, interval_s REAL, heartbeat TEXT);
CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, device TEXT, fingerprint TEXT, seq INT,
    state TEXT, transition TEXT, kind TEXT, severity TEXT, feature TEXT, message TEXT, ts REAL,
    starts_at REAL, ends_at REAL, acknowledged INT, payload TEXT, received REAL);
CREATE TABLE IF NOT EXISTS alert_events (id TEXT, seq INT, device TEXT, transition TEXT, ts REAL,
    payload TEXT, PRIMARY KEY (id, seq));
CREATE TABLE IF NOT EXISTS heartbeats (device TEXT, seq INT, ts REAL, received REAL,
    payload TEXT, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS command_results (device TEXT, id TEXT, verb TEXT, ok INT, ts REAL,
    payload TEXT);
CREATE INDEX IF NOT EXISTS idx_alerts_open ON alerts (state, device);
CREATE INDEX IF NOT EXISTS idx_heartbeats_received ON heartbeats (received);
"""
_CHECK_S = 1.0
_QUEUE = 10000
_WEBHOOK_QUEUE = 1000


def open_central_db(path: str) -> sqlite_utils.Database:
    """The central's SQLite file (WAL), its tables created if missing."""
    try:
        conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        conn.execute("PRAGMA user_version=1")
        return db
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open central database: {path}: {exc} (check --db)") from exc


def webhook_body(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The webhook JSON for one alert transition; ``text`` is what Slack shows."""
    sev = str(record.get("severity", "")).upper()
    text = (f"[{sev}] {record.get('device')}/{record.get('camera')} "
            f"{record.get('transition')}: {record.get('message')}")
    return {"text": text, "alert": dict(record)}


class _Webhook:
    """POSTs JSON bodies from a bounded queue with retry and exponential backoff."""

    def __init__(self, url: str, *, tries: int = 5, backoff_s: float = 0.5,
                 timeout_s: float = 5.0) -> None:
        self.url = url
        self.tries, self.backoff_s, self.timeout_s = tries, backoff_s, timeout_s
        self.queue: queue.Queue[Optional[Dict[str, Any]]] = queue.Queue(_WEBHOOK_QUEUE)
        self.counts = {"sent": 0, "failed": 0, "dropped": 0, "retries": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgewatch-central-webhook",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, body: Dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            self.counts["dropped"] += 1
            log.warning("webhook queue full: dropped an alert (%d dropped)", self.counts["dropped"])

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def _post(self, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
            resp.read()

    def _run(self) -> None:
        while True:
            body = self.queue.get()
            if body is None:
                return
            delay = self.backoff_s
            for attempt in range(1, self.tries + 1):
                try:
                    self._post(body)
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    if attempt == self.tries or self._stop.is_set():
                        self.counts["failed"] += 1
                        log.warning("webhook %s failed %d times, alert dropped: %s",
                                    self.url, attempt, exc)
                        break
                    self.counts["retries"] += 1
                    if self._stop.wait(delay):
                        self.counts["failed"] += 1
                        break
                    delay = min(delay * 2, 30.0)
                else:
                    self.counts["sent"] += 1
                    break


class Central:
    """Follows every device under ``prefix`` on one broker into ``db_path``."""

    def __init__(self, host: str, port: int = 1883, db_path: str = "edgewatch-central.db", *,
                 prefix: str = "edgewatch/v1", webhook: Optional[str] = None,
                 share: Optional[str] = None, username: Optional[str] = None,
                 password: Optional[str] = None, tls_ca: Optional[str] = None,
                 offline_after: Optional[float] = None, client_id: Optional[str] = None,
                 keepalive: int = 30, clock: Callable[[], float] = time.time) -> None:
        if offline_after is not None and offline_after <= 0:
            raise CommandError(f"--offline-after must be > 0 seconds, got {offline_after}")
        self.host, self.port, self.db_path, self.prefix = host, port, db_path, prefix
        self.share, self.offline_after, self._clock = share, offline_after, clock
        self._webhook = _Webhook(webhook) if webhook else None
        self._queue: queue.Queue[Optional[mqtt.MQTTMessage]] = queue.Queue(_QUEUE)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._db: Optional[sqlite_utils.Database] = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker has acknowledged the subscriptions
        self.counts = {"messages": 0, "alerts": 0, "alert_duplicates": 0, "heartbeats": 0,
                       "status": 0, "results": 0, "bad_messages": 0, "dropped": 0,
                       "went_offline": 0}
        self.bad: Dict[str, int] = {}  # bad messages by reason (records.REASONS)
        # A given client id means a persistent session: the broker queues QoS 1 alerts while
        # the central is down. Without one, a random id and a clean session.
        self._settings = ClientSettings(
            host=host, port=port, keepalive=keepalive,
            client_id=client_id or f"edgewatch-central-{uuid.uuid4().hex[:8]}",
            persistent=client_id is not None, username=username, password=password,
            tls=tls_ca is not None, ca_file=tls_ca, reconnect_max_s=30)
        self._client = build_client(self._settings)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: self.subscribed.set()

    def subscriptions(self) -> List[str]:
        """The topic filters the central subscribes to (shared when ``share`` is set)."""
        p = self.prefix
        filters = [f"{p}/+/status", f"{p}/+/heartbeat", f"{p}/+/alerts",
                   f"{p}/+/alerts/state/#", f"{p}/+/cmd/result"]
        if self.share:
            filters = [f"$share/{self.share}/{f}" for f in filters]
        return filters

    def start(self) -> Central:
        """Open the database, start the threads and connect in the background."""
        self._db = open_central_db(self.db_path)
        self._thread = threading.Thread(target=self._run, name="edgewatch-central-db",
                                        daemon=True)
        self._thread.start()
        if self._webhook:
            self._webhook.start()
        self._client.connect_async(**self._settings.connect_kwargs())
        self._client.loop_start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect, write what is queued, stop the threads."""
        self.connected.clear()  # a requested disconnect is not a lost connection
        self._client.disconnect()
        self._client.loop_stop()
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._webhook:
            self._webhook.stop(timeout)
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    def __enter__(self) -> Central:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> Dict[str, Any]:
        """Counters of messages handled and webhook deliveries."""
        out: Dict[str, Any] = dict(self.counts, connected=self.connected.is_set(),
                                   queue_depth=self._queue.qsize(), bad=dict(self.bad))
        if self._webhook:
            out.update({f"webhook_{k}": v for k, v in self._webhook.counts.items()})
        return out

    # -- network thread ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if reason.is_failure:
            log.warning("central: broker %s:%s refused the connection: %s",
                        self.host, self.port, reason)
            return
        client.subscribe([(f, 1) for f in self.subscriptions()])
        log.info("central: connected to %s:%s", self.host, self.port)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        if self.connected.is_set():
            log.warning("central: connection to %s:%s lost: %s", self.host, self.port, reason)
        self.connected.clear()
        self.subscribed.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._queue.put(msg, timeout=5.0)  # back-pressure on the broker before dropping
        except queue.Full:
            self.counts["dropped"] += 1

    # -- db thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_check = time.monotonic()
        while True:
            try:
                msg = self._queue.get(timeout=max(0.0, next_check - time.monotonic()))
            except queue.Empty:
                msg = None
                if self._stop.is_set():
                    return
            if msg is None and self._stop.is_set() and self._queue.empty():
                return
            if msg is not None:
                self._handle(msg)
            if time.monotonic() >= next_check:
                self.check_overdue()
                next_check = time.monotonic() + _CHECK_S

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        assert self._db is not None
        self.counts["messages"] += 1
        try:
            record = parse(self.prefix, msg.topic, bytes(msg.payload))
        except BadMessage as exc:
            self.counts["bad_messages"] += 1
            self.bad[exc.reason] = self.bad.get(exc.reason, 0) + 1
            log.warning("central: skipped a message on %s: %s", msg.topic[:200], exc)
            return
        now = self._clock()
        conn = self._db.conn
        with conn:
            if isinstance(record, Status):
                self.counts["status"] += 1
                self._set_online(conn, record.device, record.online,
                                 "online" if record.online else "last will or clean shutdown",
                                 now)
            elif isinstance(record, Heartbeat):
                self._on_heartbeat(conn, record, now)
            elif isinstance(record, AlertTransition):
                self._on_alert(conn, record, now)
            elif isinstance(record, ClearedState):
                # cleared retained state: the alert resolved (its record may be missed)
                conn.execute("UPDATE alerts SET state='resolved', ends_at=COALESCE(ends_at,?)"
                             " WHERE device=? AND fingerprint=? AND state='firing'",
                             (now, record.device, record.fingerprint))
            else:
                self.counts["results"] += 1
                conn.execute("INSERT INTO command_results VALUES (?,?,?,?,?,?)",
                             (record.device, record.id, record.verb, int(record.ok), now,
                              record.payload))

    def _set_online(self, conn: sqlite3.Connection, device: str, online: bool, reason: str,
                    now: float) -> None:
        row = conn.execute("SELECT online FROM devices WHERE device_id=?", (device,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO devices (device_id, online, since, reason) VALUES (?,?,?,?)",
                         (device, int(online), now, reason))
        elif bool(row[0]) != online:
            conn.execute("UPDATE devices SET online=?, since=?, reason=? WHERE device_id=?",
                         (int(online), now, reason, device))
            if not online:
                self.counts["went_offline"] += 1
        if not online and (row is None or bool(row[0])):
            log.info("central: device %s offline (%s)", device, reason)

    def _on_heartbeat(self, conn: sqlite3.Connection, hb: Heartbeat, now: float) -> None:
        self.counts["heartbeats"] += 1
        conn.execute("INSERT OR REPLACE INTO heartbeats VALUES (?,?,?,?,?)",
                     (hb.device, hb.seq, hb.ts or now, now, hb.payload))
        self._set_online(conn, hb.device, True, "heartbeat", now)
        conn.execute("UPDATE devices SET last_heartbeat_ts=?, interval_s=?, heartbeat=? "
                     "WHERE device_id=?", (now, hb.interval_s, hb.payload, hb.device))

    def _on_alert(self, conn: sqlite3.Connection, rec: AlertTransition, now: float) -> None:
        cur = conn.execute("INSERT OR IGNORE INTO alert_events VALUES (?,?,?,?,?,?)",
                           (rec.id, rec.seq, rec.device, rec.transition, rec.ts, rec.payload))
        if cur.rowcount == 0:
            self.counts["alert_duplicates"] += 1
            return
        self.counts["alerts"] += 1
        old = conn.execute("SELECT seq FROM alerts WHERE id=?", (rec.id,)).fetchone()
        if old is None or rec.seq >= old[0]:
            conn.execute(
                "INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.id, rec.device, rec.fingerprint, rec.seq, rec.state, rec.transition,
                 rec.kind, rec.severity, rec.feature, rec.message, rec.ts, rec.starts_at,
                 rec.ends_at, int(rec.acknowledged), rec.payload, now))
        if self._webhook:
            self._webhook.submit(webhook_body({**json.loads(rec.payload), "device": rec.device}))

    def check_overdue(self) -> int:
        """Mark online devices whose heartbeat is overdue offline; how many changed."""
        if self._db is None:
            return 0
        now = self._clock()
        conn = self._db.conn
        changed = 0
        rows = conn.execute("SELECT device_id, since, last_heartbeat_ts, interval_s FROM devices "
                            "WHERE online=1").fetchall()
        with conn:
            for device, since, last, interval in rows:
                limit = self.offline_after or (3 * interval if interval else None)
                if limit is None:
                    continue  # no heartbeat interval known yet: rely on the last will
                if now - (last or since) > limit:
                    self._set_online(conn, device, False,
                                     f"heartbeat overdue (> {limit:.0f} s)", now)
                    changed += 1
        return changed


# -- readers for the CLI --------------------------------------------------------------------------

def fleet_rows(conn: sqlite3.Connection, now: float) -> List[Dict[str, Any]]:
    """One dict per device: state, since, heartbeat age, fps, temperature, open alerts."""
    open_counts = dict(conn.execute("SELECT device, count(*) FROM alerts WHERE state='firing' "
                                    "GROUP BY device").fetchall())
    out = []
    for device, online, since, reason, last, hb_text in conn.execute(
            "SELECT device_id, online, since, reason, last_heartbeat_ts, heartbeat FROM devices "
            "ORDER BY device_id"):
        hb = json.loads(hb_text) if hb_text else {}
        camera = hb.get("camera") or {}
        host = hb.get("host") or {}
        out.append({
            "device": device, "online": bool(online), "since": since, "reason": reason,
            "heartbeat_age_s": (now - last) if last else None,
            "fps": camera.get("fps_processed", camera.get("fps_in")),
            "temperature_c": host.get("max_temp_c"),
            "open_alerts": int(open_counts.get(device, 0)),
        })
    return out


def open_alerts(conn: sqlite3.Connection) -> List[Dict[str, Any]]:
    """Open (firing) alerts across devices, oldest first."""
    rows = conn.execute("SELECT device, id, kind, severity, feature, starts_at, acknowledged, "
                        "message FROM alerts WHERE state='firing' ORDER BY starts_at, device")
    keys = ("device", "id", "kind", "severity", "feature", "starts_at", "acknowledged", "message")
    return [dict(zip(keys, row)) for row in rows]


def send_command(host: str, port: int, device: str, verb: str, body: Mapping[str, Any], *,
                 timeout: float = 10.0, prefix: str = "edgewatch/v1",
                 username: Optional[str] = None, password: Optional[str] = None,
                 tls_ca: Optional[str] = None) -> Dict[str, Any]:
    """Publish a command to ``device`` and wait for its result (matched by request id)."""
    t = topics(prefix, device)
    request = {"id": uuid.uuid4().hex, **body}
    got: Dict[str, Any] = {}
    done, subscribed = threading.Event(), threading.Event()
    refused: List[str] = []
    settings = ClientSettings(host=host, port=port, client_id=f"edgewatch-cli-{request['id'][:8]}",
                              username=username, password=password, tls=tls_ca is not None,
                              ca_file=tls_ca)
    client = build_client(settings)

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any = None) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            done.set()
        else:
            c.subscribe(t.cmd_result, qos=1)

    def on_subscribe(c: mqtt.Client, u: Any, mid: int, reasons: Any, p: Any = None) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            result = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(result, dict) and result.get("id") == request["id"]:
            got.update(result)
            done.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    deadline = time.monotonic() + timeout
    try:
        client.connect(**settings.connect_kwargs())
    except OSError as exc:
        raise CommandError(f"cannot reach broker {host}:{port}: {exc} (check --broker/--port)"
                           ) from None
    client.loop_start()
    try:
        if not subscribed.wait(max(0.0, deadline - time.monotonic())) and not refused:
            raise CommandError(f"no answer from broker {host}:{port} within {timeout:.0f} s")
        if refused:
            raise CommandError(f"broker {host}:{port} refused the connection: {refused[0]}")
        client.publish(t.command(verb), json.dumps(request), qos=1)
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise CommandError(f"no result from {device} within {timeout:.0f} s "
                               f"(is it online? see 'edgewatch fleet')")
        if refused:
            raise CommandError(f"broker {host}:{port} refused the connection: {refused[0]}")
        return got
    finally:
        client.disconnect()
        client.loop_stop()
