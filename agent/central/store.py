"""The central's database (SQLite or PostgreSQL): every table, every statement, migrations.

Only this module holds SQL for the central. :class:`CentralStore` is the one writer of a
central worker (its ``edgewatch-central-db`` thread calls it, one transaction per message);
:class:`CentralReader` opens the same database read-only for ``edgewatch fleet`` and for the
webhook sender's look-ups. The database is a SQLite file (the embedded default) or a
``postgresql://`` URL (several workers on one database); statements are written once, in
SQLite's dialect, and :mod:`agent.central._postgres` translates them.

Everything a device sends is keyed by ``(device, id)``: the device is the topic's (see
:mod:`agent.central.records`), so one device cannot touch another's rows.

Migrations are one numbered list for both databases, tracked by ``PRAGMA user_version``
(SQLite) or a ``schema_version`` table (PostgreSQL), each applied in its own transaction and
re-checked under the database's lock (``BEGIN IMMEDIATE``; an advisory lock), so that two
workers starting together migrate once:

1. the first schema (devices, alerts keyed by id, alert events, heartbeats, command results);
2. alerts, alert events and command results keyed by device; snooze state; commands sent;
   the durable notification queue; the central's status row;
3. when each notification group last went out (``group_interval``);
4. each notification addressed to one webhook (``target``; several webhooks, each with its
   format, each delivered and retried on its own); each device's last fps, worst drift score
   and outbox (the fleet metrics, read without parsing heartbeats); alerts indexed by when
   they were received (what Alertmanager is told).

Between workers on one PostgreSQL, primary keys and conditional updates are the gates: an
alert transition's ``(device, id, seq)``, a device's online flag, a notification's claim.

History (heartbeats, commands, results) is pruned by age (``edgewatch central
--keep-history``); alerts and their events are kept.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ..errors import StoreError
from ._postgres import PgConnection, is_url, redact_url
from .records import AlertTransition, CommandResult, CommandSent, Heartbeat

__all__ = ["SCHEMA_VERSION", "CentralStore", "CentralReader", "DeviceChange", "Notification"]

_V1 = """
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
CREATE INDEX IF NOT EXISTS idx_heartbeats_received ON heartbeats (received)
"""
_V2 = """
CREATE TABLE alerts2 (device TEXT NOT NULL, id TEXT NOT NULL, fingerprint TEXT, seq INT,
    state TEXT, transition TEXT, kind TEXT, severity TEXT, feature TEXT, camera TEXT,
    message TEXT, ts REAL, starts_at REAL, ends_at REAL, acknowledged INT, snoozed_until REAL,
    payload TEXT, received REAL, PRIMARY KEY (device, id));
INSERT INTO alerts2 (device, id, fingerprint, seq, state, transition, kind, severity, feature,
    message, ts, starts_at, ends_at, acknowledged, payload, received)
    SELECT device, id, fingerprint, seq, state, transition, kind, severity, feature, message, ts,
    starts_at, ends_at, acknowledged, payload, received FROM alerts;
DROP TABLE alerts;
ALTER TABLE alerts2 RENAME TO alerts;
CREATE INDEX idx_alerts_open ON alerts (state, device);
CREATE TABLE alert_events2 (device TEXT NOT NULL, id TEXT NOT NULL, seq INT NOT NULL,
    transition TEXT, ts REAL, payload TEXT, PRIMARY KEY (device, id, seq));
INSERT OR IGNORE INTO alert_events2 SELECT device, id, seq, transition, ts, payload
    FROM alert_events;
DROP TABLE alert_events;
ALTER TABLE alert_events2 RENAME TO alert_events;
CREATE TABLE command_results2 (device TEXT NOT NULL, id TEXT, verb TEXT, ok INT, error TEXT,
    ts REAL, received REAL, payload TEXT);
INSERT INTO command_results2 (device, id, verb, ok, ts, received, payload)
    SELECT device, id, verb, ok, ts, ts, payload FROM command_results;
DROP TABLE command_results;
ALTER TABLE command_results2 RENAME TO command_results;
CREATE INDEX idx_command_results ON command_results (device, id);
CREATE INDEX idx_command_results_received ON command_results (received);
CREATE TABLE commands (device TEXT NOT NULL, id TEXT NOT NULL, verb TEXT, alert TEXT,
    requested_by TEXT, payload TEXT, received REAL, PRIMARY KEY (device, id));
CREATE INDEX idx_commands_received ON commands (received);
CREATE TABLE notifications (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
    grp TEXT NOT NULL, device TEXT NOT NULL, body TEXT NOT NULL, created REAL NOT NULL,
    next_at REAL NOT NULL, attempts INT NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX idx_notifications_due ON notifications (next_at);
CREATE INDEX idx_notifications_grp ON notifications (grp);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)
"""
_V3 = """
CREATE TABLE notify_groups (grp TEXT PRIMARY KEY, last_sent REAL NOT NULL)
"""
_V4 = """
ALTER TABLE notifications ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN fps REAL;
ALTER TABLE devices ADD COLUMN worst_drift REAL;
ALTER TABLE devices ADD COLUMN outbox_depth REAL;
ALTER TABLE devices ADD COLUMN outbox_age_s REAL;
CREATE INDEX idx_alerts_received ON alerts (received)
"""
MIGRATIONS: Tuple[str, ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)
_ALERT_COLUMNS = ("device", "id", "fingerprint", "seq", "state", "transition", "kind",
                  "severity", "feature", "camera", "message", "ts", "starts_at", "ends_at",
                  "acknowledged", "snoozed_until", "payload", "received")
BUSY_TIMEOUT_S = 10.0
_MIGRATION_LOCK = 0x65647765  # PostgreSQL advisory lock key: one migrator at a time


@dataclass(frozen=True)
class DeviceChange:
    """A device went offline or came back (first sightings are not changes)."""

    device: str
    online: bool
    reason: str
    ts: float


@dataclass(frozen=True)
class Notification:
    """One webhook body waiting in the database to be delivered."""

    id: int
    kind: str
    group: str  # notifications of one group due together go out as one webhook call
    device: str
    body: str
    created: float
    attempts: int
    next_at: float = 0.0  # when it is due; a worker claims it by moving this on


class _SqliteConnection:
    """The SQLite file behind the same small interface as :class:`~._postgres.PgConnection`."""

    dialect = "sqlite"
    errors: Tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        if read_only:
            if not os.path.isfile(path):
                raise StoreError(f"central database not found: {path} (run 'edgewatch "
                                 "central' or pass --db)")
            uri = f"file:{os.path.abspath(path)}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S,
                                         check_same_thread=False)
            return
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StoreError(f"cannot open central database: {path} (create {directory} or "
                             "pass --db)")
        self._conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                                     isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement."""
        return self._conn.execute(sql, tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per row of arguments."""
        self._conn.executemany(sql, rows)

    def begin(self) -> None:
        """Start a write transaction, taking the write lock now (no upgrade deadlock)."""
        self._conn.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


Db = Union[_SqliteConnection, "PgConnection"]


def _open(target: str, *, read_only: bool = False) -> Db:
    """``target`` is a SQLite file or a ``postgresql://`` URL."""
    if is_url(target):
        return PgConnection(target, read_only=read_only, timeout_s=BUSY_TIMEOUT_S)
    try:
        return _SqliteConnection(target, read_only=read_only)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open central database: {target}: {exc} (check --db)"
                         ) from exc


def _shown(target: str) -> str:
    return redact_url(target) if is_url(target) else target


def schema_version(db: Db) -> int:
    """The number of migrations applied (SQLite: ``user_version``; PostgreSQL: a table)."""
    if db.dialect == "sqlite":
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    if db.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        return 0
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _lock_schema(db: Db) -> None:
    """Inside the migration's transaction: one migrator at a time (SQLite: BEGIN IMMEDIATE)."""
    if db.dialect == "postgresql":
        db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL)")


def _set_version(db: Db, number: int) -> None:
    if db.dialect == "sqlite":
        db.execute(f"PRAGMA user_version={int(number)}")
    else:
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))


def migrate(db: Db, target: str = "") -> int:
    """Apply pending migrations, each in its own transaction; return the schema version."""
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise StoreError(f"central database schema {version} is newer than this edgewatch "
                         f"({SCHEMA_VERSION}): {_shown(target)} (upgrade edgewatch)")
    for number, sql in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        db.begin()
        try:
            _lock_schema(db)
            # Another central may have migrated while we waited for the lock.
            if schema_version(db) < number:
                for statement in sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                _set_version(db, number)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return schema_version(db)


class CentralStore:
    """The writer: one connection, one transaction per message, named methods only.

    ``target`` is a SQLite file or a ``postgresql://`` URL: the same statements, the same
    migrations (dialect differences: :mod:`agent.central._postgres`).
    """

    def __init__(self, target: str) -> None:
        self.path = target
        self.conn = _open(target)
        try:
            self.version = migrate(self.conn, target)
        except self.conn.errors as exc:
            self.conn.close()
            raise StoreError(f"cannot open central database: {_shown(target)}: {exc} "
                             "(check --db)") from exc
        except BaseException:
            self.conn.close()
            raise

    @property
    def errors(self) -> Tuple[type[BaseException], ...]:
        """The database driver's exception classes."""
        return self.conn.errors

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: committed on success, rolled back on any exception."""
        self.conn.begin()
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- devices -------------------------------------------------------------------------

    def set_online(self, device: str, online: bool, reason: str,
                   now: float) -> Optional[DeviceChange]:
        """Record a device's state; the change when it went offline or came back.

        The conditional update is the gate between workers: of two that see the same last
        will, one changes the row and reports the change, the other finds nothing to change.
        """
        if self.conn.execute("INSERT INTO devices (device_id, online, since, reason) "
                             "VALUES (?,?,?,?) ON CONFLICT (device_id) DO NOTHING",
                             (device, int(online), now, reason)).rowcount:
            return None  # a first sighting is not a change
        cur = self.conn.execute("UPDATE devices SET online=?, since=?, reason=? "
                                "WHERE device_id=? AND online!=?",
                                (int(online), now, reason, device, int(online)))
        return DeviceChange(device, online, reason, now) if cur.rowcount else None

    def put_heartbeat(self, hb: Heartbeat, now: float) -> Optional[DeviceChange]:
        """Store a heartbeat (once per ``(device, seq)``) and mark its device online."""
        self.conn.execute("INSERT INTO heartbeats (device, seq, ts, received, payload) "
                          "VALUES (?,?,?,?,?) ON CONFLICT (device, seq) DO UPDATE SET "
                          "ts=excluded.ts, received=excluded.received, payload=excluded.payload",
                          (hb.device, hb.seq, hb.ts if hb.ts is not None else now, now,
                           hb.payload))
        change = self.set_online(hb.device, True, "heartbeat", now)
        self.conn.execute("UPDATE devices SET last_heartbeat_ts=?, interval_s=?, heartbeat=?, "
                          "fps=?, worst_drift=?, outbox_depth=?, outbox_age_s=? "
                          "WHERE device_id=?", (now, hb.interval_s, hb.payload, hb.fps,
                                                hb.worst_drift, hb.outbox_depth,
                                                hb.outbox_age_s, hb.device))
        return change

    def online_devices(self) -> List[Tuple[str, float, Optional[float], Optional[float]]]:
        """``(device, since, last heartbeat, interval)`` of every device marked online."""
        rows = self.conn.execute("SELECT device_id, since, last_heartbeat_ts, interval_s "
                                 "FROM devices WHERE online=1").fetchall()
        return [(str(d), float(s), lh, iv) for d, s, lh, iv in rows]

    # -- alerts ------------------------------------------------------------------------------

    def put_alert(self, rec: AlertTransition, now: float) -> bool:
        """Record a transition; False when ``(device, id, seq)`` was already seen.

        The event's primary key is the gate: a QoS 1 redelivery, the retained copy of the
        same transition, or another worker holding the same message finds the row there
        (PostgreSQL makes the second inserter wait for the first to commit), so a transition
        is recorded, and notified, exactly once.
        """
        cur = self.conn.execute("INSERT INTO alert_events (device, id, seq, transition, ts, "
                                "payload) VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                                (rec.device, rec.id, rec.seq, rec.transition, rec.ts,
                                 rec.payload))
        if cur.rowcount == 0:
            # Seen before; but an ack or snooze republishes the retained state with the same
            # seq and new fields: keep the current state current, without a notification.
            self.conn.execute("UPDATE alerts SET acknowledged=?, snoozed_until=?, payload=?, "
                              "received=? WHERE device=? AND id=? AND seq=? AND payload!=?",
                              (int(rec.acknowledged), rec.snoozed_until, rec.payload, now,
                               rec.device, rec.id, rec.seq, rec.payload))
            return False
        columns = ", ".join(_ALERT_COLUMNS)
        updates = ", ".join(f"{c}=excluded.{c}" for c in _ALERT_COLUMNS[2:])
        self.conn.execute(
            f"INSERT INTO alerts ({columns}) VALUES ({', '.join('?' * len(_ALERT_COLUMNS))}) "
            f"ON CONFLICT (device, id) DO UPDATE SET {updates} WHERE alerts.seq <= excluded.seq",
            (rec.device, rec.id, rec.fingerprint, rec.seq, rec.state, rec.transition,
             rec.kind, rec.severity, rec.feature, rec.camera, rec.message, rec.ts,
             rec.starts_at, rec.ends_at, int(rec.acknowledged), rec.snoozed_until,
             rec.payload, now))
        return True

    def resolve_cleared(self, device: str, fingerprint: str, now: float) -> None:
        """A cleared retained state: the device's firing alert with that fingerprint resolved."""
        self.conn.execute("UPDATE alerts SET state='resolved', ends_at=COALESCE(ends_at,?), "
                          "received=? WHERE device=? AND fingerprint=? AND state='firing'",
                          (now, now, device, fingerprint))

    # -- commands ----------------------------------------------------------------------------

    def put_command(self, cmd: CommandSent, now: float) -> None:
        """A command seen on a device's command topic (from any operator)."""
        self.conn.execute("INSERT INTO commands (device, id, verb, alert, requested_by, "
                          "payload, received) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                          (cmd.device, cmd.id, cmd.verb, cmd.alert, cmd.requested_by,
                           cmd.payload, now))

    def put_result(self, res: CommandResult, now: float) -> None:
        """A device's answer to a command (once: a redelivered answer is not a second one)."""
        if self.conn.execute("SELECT 1 FROM command_results WHERE device=? AND id=? AND "
                             "verb=? AND payload=?",
                             (res.device, res.id, res.verb, res.payload)).fetchone():
            return
        self.conn.execute("INSERT INTO command_results (device, id, verb, ok, error, ts, "
                          "received, payload) VALUES (?,?,?,?,?,?,?,?)",
                          (res.device, res.id, res.verb, int(res.ok), res.error, res.ts, now,
                           res.payload))

    # -- notifications -----------------------------------------------------------------------

    def enqueue(self, kind: str, group: str, device: str, body: Dict[str, Any], now: float,
                wait_s: float = 0.0, interval_s: float = 0.0,
                targets: Sequence[str] = ("",)) -> None:
        """Keep a webhook body, once per webhook ``targets``, until delivered or expired.

        Due after ``wait_s`` (Alertmanager's group_wait), and not before ``interval_s`` after
        its group last went out (group_interval): a storm that lasts longer than the wait
        still leaves as one call per group and interval.
        """
        due = now + wait_s
        if interval_s > 0:
            row = self.conn.execute("SELECT last_sent FROM notify_groups WHERE grp=?",
                                    (group,)).fetchone()
            if row is not None and row[0] + interval_s > now:
                due = max(due, float(row[0]) + interval_s)
        text = json.dumps(body)
        self.conn.executemany("INSERT INTO notifications (kind, grp, device, body, created, "
                              "next_at, target) VALUES (?,?,?,?,?,?,?)",
                              [(kind, group, device, text, now, due, t) for t in targets])

    def claim(self, notes: Sequence[Notification], until: float) -> List[Notification]:
        """The notifications this worker may post: those no other worker claimed meanwhile.

        Each is held until ``until`` (a worker that dies mid-post leaves it to be retried).
        """
        claimed = []
        for note in notes:
            if self.conn.execute("UPDATE notifications SET next_at=? WHERE id=? AND next_at=?",
                                 (until, note.id, note.next_at)).rowcount:
                claimed.append(note)
        return claimed

    def delivered(self, ids: Sequence[int], group: str = "", now: float = 0.0) -> None:
        """The webhook took them: forget them, and remember when their group went out."""
        self.conn.executemany("DELETE FROM notifications WHERE id=?", [(i,) for i in ids])
        if group:
            self.conn.execute("INSERT INTO notify_groups (grp, last_sent) VALUES (?,?) "
                              "ON CONFLICT (grp) DO UPDATE SET last_sent=excluded.last_sent",
                              (group, now))

    def retry_later(self, ids: Sequence[int], next_at: float, error: str) -> None:
        """Delivery failed: try again at ``next_at``."""
        self.conn.executemany("UPDATE notifications SET attempts=attempts+1, next_at=?, "
                              "last_error=? WHERE id=?",
                              [(next_at, error[:500], i) for i in ids])

    def expire(self, before: float) -> int:
        """Drop notifications created before ``before``; how many."""
        return int(self.conn.execute("DELETE FROM notifications WHERE created < ?",
                                     (before,)).rowcount)

    def prune(self, before: float) -> int:
        """Drop heartbeats, commands and results received before ``before``; rows dropped."""
        n = 0
        for table in ("heartbeats", "commands", "command_results"):
            n += int(self.conn.execute(f"DELETE FROM {table} WHERE received < ?",  # noqa: S608
                                       (before,)).rowcount)
        return n

    # -- the central's own status -------------------------------------------------------------

    def put_status(self, status: Dict[str, Any], key: str = "status") -> None:
        """The central's counters, for ``edgewatch fleet`` (which reads the database)."""
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                          "DO UPDATE SET value=excluded.value",
                          (key, json.dumps(status, default=str)))


class CentralReader:
    """Read-only queries for ``edgewatch fleet`` and the webhook sender."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = _open(path, read_only=True)
        try:
            version = schema_version(self.conn)
        except self.conn.errors as exc:
            self.conn.close()
            raise StoreError(f"cannot read central database: {_shown(path)}: {exc} "
                             "(check --db)") from exc
        if version != SCHEMA_VERSION:
            self.conn.close()
            raise StoreError(f"central database {_shown(path)} has schema {version}, this "
                             f"edgewatch reads {SCHEMA_VERSION} (run 'edgewatch central' on it once to "
                             "migrate, or upgrade edgewatch)")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> CentralReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dicts(self, sql: str, args: Tuple[Any, ...] = ()) -> List[Dict[str, Any]]:
        cur = self.conn.execute(sql, args)
        keys = [c[0] for c in cur.description]
        return [dict(zip(keys, row)) for row in cur.fetchall()]

    def devices(self) -> List[Dict[str, Any]]:
        """Every device with its state, last heartbeat and number of firing alerts."""
        return self._dicts(
            "SELECT d.device_id AS device, d.online, d.since, d.reason, d.last_heartbeat_ts, "
            "d.heartbeat, (SELECT count(*) FROM alerts a WHERE a.device=d.device_id AND "
            "a.state='firing') AS open_alerts FROM devices d ORDER BY d.device_id")

    def open_alerts(self) -> List[Dict[str, Any]]:
        """Firing alerts across devices, oldest first."""
        return self._dicts(
            "SELECT device, id, kind, severity, feature, camera, starts_at, acknowledged, "
            "snoozed_until, message, payload FROM alerts WHERE state='firing' "
            "ORDER BY starts_at, device")

    def recent_commands(self, limit: int = 20) -> List[Dict[str, Any]]:
        """The latest commands seen, newest first, each with its device's result if any."""
        return self._dicts(
            "SELECT c.received, c.device, c.id, c.verb, c.alert, c.requested_by, r.ok, r.error, "
            "r.received AS answered FROM commands c LEFT JOIN command_results r "
            "ON r.device=c.device AND r.id=c.id ORDER BY c.received DESC, c.id DESC LIMIT ?", (limit,))

    def due_notifications(self, now: float, limit: int = 1000,
                          targets: Sequence[str] = ("",)) -> List[Notification]:
        """Notifications for ``targets`` due now, oldest first, with the fresh ones of the
        same groups.

        A group is due when its oldest notification is; notifications of that group that
        are still waiting out their group wait (never tried) join it, as in Alertmanager.
        """
        marks = ",".join("?" * len(targets))
        rows = self.conn.execute(
            "SELECT id, kind, grp, device, body, created, attempts, next_at FROM notifications "
            f"WHERE target IN ({marks}) AND grp IN (SELECT grp FROM notifications WHERE "
            f"next_at <= ? AND target IN ({marks})) AND (next_at <= ? OR attempts = 0) "
            "ORDER BY id LIMIT ?", (*targets, now, *targets, now, limit)).fetchall()
        return [Notification(*row) for row in rows]

    def next_due(self, targets: Sequence[str] = ("",)) -> Optional[float]:
        """When the next notification for ``targets`` is due, or None when none waits."""
        row = self.conn.execute("SELECT min(next_at) FROM notifications WHERE target IN "
                                f"({','.join('?' * len(targets))})", tuple(targets)).fetchone()
        return None if row[0] is None else float(row[0])

    def pending_notifications(self) -> int:
        """How many notifications wait for delivery."""
        return int(self.conn.execute("SELECT count(*) FROM notifications").fetchone()[0])

    def fleet_devices(self) -> List[Dict[str, Any]]:
        """Every device's state and last heartbeat's figures, for the fleet metrics."""
        return self._dicts(
            "SELECT device_id AS device, online, last_heartbeat_ts, fps, worst_drift, "
            "outbox_depth, outbox_age_s FROM devices ORDER BY device_id")

    def open_alert_counts(self) -> List[Tuple[str, str, str, int]]:
        """``(device, kind, severity, count)`` of firing alerts, for the fleet metrics."""
        rows = self.conn.execute(
            "SELECT device, COALESCE(kind, ''), COALESCE(severity, ''), count(*) FROM alerts "
            "WHERE state='firing' GROUP BY device, kind, severity").fetchall()
        return [(str(d), str(k), str(s), int(n)) for d, k, s, n in rows]

    def alerts_changed(self, since: float, resolved_after: float) -> List[Dict[str, Any]]:
        """Alerts received since ``since`` that are firing, or resolved after
        ``resolved_after``, oldest received first (what Alertmanager is told)."""
        return self._dicts(
            "SELECT device, id, state, kind, severity, feature, camera, message, ts, starts_at, "
            "ends_at, received, payload FROM alerts WHERE received >= ? AND "
            "(state='firing' OR received >= ?) ORDER BY received, device, id",
            (since, resolved_after))

    def central_status(self) -> Optional[Dict[str, Any]]:
        """The counters the running central last wrote, or None."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='status'").fetchone()
        return json.loads(row[0]) if row else None
