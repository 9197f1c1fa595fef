"""The SQLite history: every table's SQL, behind named methods; WAL, numbered migrations.

This module is the one owner of the device database's tables: the service, the MQTT link,
the CLI and export call the named methods of :class:`Reader` (reads, on one read-only
connection) and :class:`Store` (writes, each run by the single writer thread of
:mod:`agent._writer`). Bulk rows (windows, events, heartbeats) go through :meth:`Store.put`,
which never blocks and counts what it drops. Alerts go through :meth:`Store.put_alert`,
which never drops: the alert row and its MQTT outbox rows are committed in one transaction
with ``synchronous=FULL``, so a committed alert survives a power cut; everything else is
batched every ``flush_interval_s`` with ``synchronous=NORMAL`` to spare the flash.

While the agent runs it is the only writer: its Store holds a lock on ``<db>.lock``
(:mod:`agent._sqlite`), and the device CLI goes through the agent's control socket.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import sqlite_utils

from ._sqlite import (
    BUSY_TIMEOUT_S,
    LOCK_WAIT_S,
    DbLock,
    check_writable,
    classify,
    connect_edgewatch,
    connect_readonly,
    connect_writer,
)
from ._writer import AlertItem, Row, Writer, sql_value, to_json
from .errors import StoreError
from .samplestore import SAMPLES_SCHEMA
from .supervise import Supervisor

log = logging.getLogger(__name__)

_SIZE_CHUNK_MIN = 10  # fewest rows per table deleted per pass over max_db_mb

# Numbered migrations: (pragmas run before the first transaction, SQL run in one transaction).
# auto_vacuum only takes effect when set before any table exists and before WAL is enabled.
MIGRATIONS: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (
        ("PRAGMA auto_vacuum=INCREMENTAL",),
        """
        CREATE TABLE windows (id INTEGER PRIMARY KEY, ts_start REAL, ts_end REAL, frames INT,
                              camera TEXT, summary TEXT);
        CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL, kind TEXT, message TEXT, data TEXT);
        CREATE TABLE alerts (id TEXT PRIMARY KEY, fingerprint TEXT, ts REAL, kind TEXT,
                             severity TEXT, state TEXT, feature TEXT, metric TEXT, value REAL,
                             threshold REAL, message TEXT, payload TEXT, camera TEXT,
                             starts_at REAL, ends_at REAL);
        CREATE TABLE controls (kind TEXT, target TEXT, until REAL, value REAL,
                               PRIMARY KEY (kind, target));
        CREATE TABLE heartbeats (seq INTEGER PRIMARY KEY, ts REAL, payload TEXT);
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL, topic TEXT,
                             payload TEXT, qos INT, retain INT, severity TEXT);
        CREATE TABLE reference (id INTEGER PRIMARY KEY, ts REAL, model_sha256 TEXT, origin TEXT,
                                blob BLOB);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE INDEX idx_windows_ts_start ON windows (ts_start);
        CREATE INDEX idx_events_ts ON events (ts);
        CREATE INDEX idx_alerts_state ON alerts (state);
        CREATE INDEX idx_alerts_fingerprint ON alerts (fingerprint);
        CREATE INDEX idx_heartbeats_ts ON heartbeats (ts);
        CREATE INDEX idx_outbox_id ON outbox (id);
        """,
    ),
    (
        (),
        """
        -- the operator commands the agent ran and its answers (written by the agent only)
        CREATE TABLE commands (id INTEGER PRIMARY KEY, ts REAL, verb TEXT, payload TEXT,
                               result TEXT, done_ts REAL);
        CREATE INDEX idx_commands_pending ON commands (done_ts);
        """,
    ),
    (
        (),
        """
        -- which definition of the per-frame features a stored reference was learned with
        ALTER TABLE reference ADD COLUMN features_version INTEGER NOT NULL DEFAULT 1;
        """,
    ),
    ((), SAMPLES_SCHEMA),  # its SQL is agent.samplestore's
)
SCHEMA_VERSION = len(MIGRATIONS)

# Tables put() accepts and their columns; the time column of each table with one.
BULK_COLUMNS: Dict[str, Tuple[str, ...]] = {
    "windows": ("id", "ts_start", "ts_end", "frames", "camera", "summary"),
    "events": ("id", "ts", "kind", "message", "data"),
    "heartbeats": ("seq", "ts", "payload"),
}
TIME_COLUMNS = {"windows": "ts_start", "events": "ts", "heartbeats": "ts", "alerts": "ts",
                "outbox": "ts"}
_ALERT_COLUMNS = ("id", "fingerprint", "ts", "kind", "severity", "state", "feature", "metric",
                  "value", "threshold", "message", "payload", "camera", "starts_at", "ends_at")


def migrate(conn: sqlite3.Connection, path: str = "") -> int:
    """Apply pending migrations, each in its own transaction; return the schema version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise StoreError(f"not an edgewatch database: {path} (it holds other tables; "
                         "check --db or [store] path)")
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema {version} is newer than this edgewatch "
                         f"({SCHEMA_VERSION}): {path} (upgrade edgewatch)")
    for number, (pragmas, sql) in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        if number == 1:
            for pragma in pragmas:
                conn.execute(pragma)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            if conn.execute("PRAGMA user_version").fetchone()[0] < number:
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def open_db(path: str) -> sqlite_utils.Database:
    """Open (creating if needed) the history with WAL, synchronous=NORMAL and migrations."""
    conn = connect_writer(str(path))
    try:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        migrate(conn, str(path))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=4194304")  # keep a checkpointed WAL small
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open database: {path}: {exc} (check [store] path)") from exc
    except BaseException:
        conn.close()
        raise
    return sqlite_utils.Database(conn)


def connect_history(path: str) -> sqlite3.Connection:
    """A read-only connection to an edgewatch database of a schema this version knows."""
    return connect_edgewatch(path, SCHEMA_VERSION)


def _time_condition(table: str, since: Optional[float],
                    until: Optional[float]) -> Tuple[str, List[float]]:
    """SQL condition on the table's time column ("" for none) and its parameters."""
    col = TIME_COLUMNS[table]
    clauses = [c for c, v in ((f"{col} >= ?", since), (f"{col} <= ?", until)) if v is not None]
    return " AND ".join(clauses), [v for v in (since, until) if v is not None]


def select_rows(conn: sqlite3.Connection, table: str, since: Optional[float] = None,
                until: Optional[float] = None) -> sqlite3.Cursor:
    """Rows of ``table`` (one of TIME_COLUMNS) in [since, until], oldest first (export)."""
    cond, params = _time_condition(table, since, until)
    where = f" WHERE {cond}" if cond else ""
    return conn.execute(f"SELECT * FROM {table}{where} ORDER BY {TIME_COLUMNS[table]}, rowid",
                        params)


def prune_copy(conn: sqlite3.Connection, tables: Sequence[str], keep: Sequence[str],
               since: Optional[float], until: Optional[float]) -> Dict[str, int]:
    """In a copy of the history: empty ``tables`` not in ``keep``, filter the rest by time;
    returns the rows left in each kept table (export's filtered snapshots)."""
    rows = {}
    for table in tables:
        if table not in keep:
            conn.execute(f"DELETE FROM {table}")
            continue
        if since is not None or until is not None:
            cond, params = _time_condition(table, since, until)
            conn.execute(f"DELETE FROM {table} WHERE NOT coalesce({cond}, 0)", params)
        rows[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return rows


class OutboxRow(NamedTuple):
    """One MQTT message waiting in the outbox."""

    id: int
    topic: str
    payload: Optional[str]
    qos: int
    retain: bool


def _decode(text: Optional[str]) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


class Reader:
    """Named reads of the agent's database over one read-only connection (thread-safe)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._reader: Optional[sqlite3.Connection] = None
        self._reader_lock = threading.Lock()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> List[sqlite3.Row]:
        with self._reader_lock:
            try:
                if self._reader is None:
                    self._reader = connect_history(self.path)
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read database: {self.path}: {exc} "
                                 f"({classify(exc, self.path)[1]})") from None

    def close_reader(self) -> None:
        """Close the read connection (reopened on the next read)."""
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def load_reference(self, model_sha256: str, features_version: int) -> Optional[bytes]:
        """The newest stored reference blob for this model and feature layout, if any."""
        rows = self._query("SELECT blob FROM reference WHERE model_sha256 = ? AND "
                           "features_version = ? ORDER BY id DESC LIMIT 1",
                           (model_sha256, features_version))
        return bytes(rows[0][0]) if rows else None

    def load_calibration(self, key: str) -> Tuple[Optional[float], Optional[bytes]]:
        """When a training reference's calibration began, and its result (None until done)."""
        row = self._query("SELECT min(CASE WHEN origin = 'calibrating' THEN ts END), max(CASE "
                          "WHEN origin = 'calibration' THEN blob END) FROM reference WHERE "
                          "model_sha256 = ?", (key,))[0]
        return row[0], None if row[1] is None else bytes(row[1])

    def open_alert_records(self) -> List[Dict[str, Any]]:
        """The full records (payloads) of the alerts firing now, oldest first."""
        rows = self._query("SELECT payload FROM alerts WHERE state = 'firing' ORDER BY starts_at")
        return [_decode(r[0]) for r in rows]

    def alerts(self, state: Optional[str] = None, limit: int = 50) -> List[Dict[str, Any]]:
        """Alert rows (``payload`` decoded), newest first; only ``state`` ones when given."""
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        rows = self._query(f"SELECT * FROM alerts {where} ORDER BY ts DESC LIMIT ?",
                           [*params, int(limit)])
        return [{**dict(r), "payload": _decode(r["payload"])} for r in rows]

    def firing_alert_ids(self, prefix: str) -> List[str]:
        """Ids of firing alerts that start with ``prefix``."""
        rows = self._query("SELECT id FROM alerts WHERE state = 'firing' AND "
                           "substr(id, 1, length(?)) = ?", (prefix, prefix))
        return [r[0] for r in rows]

    def find_firing_alert(self, alert: str) -> Optional[Dict[str, Any]]:
        """The firing alert with this id or fingerprint (``payload`` decoded), if any."""
        rows = self._query("SELECT * FROM alerts WHERE state = 'firing' AND "
                           "(id = ? OR fingerprint = ?) LIMIT 1", (alert, alert))
        return {**dict(rows[0]), "payload": _decode(rows[0]["payload"])} if rows else None

    def max_alert_seq(self) -> int:
        """The highest alert transition sequence number stored (0 when none)."""
        rows = self._query("SELECT max(CAST(json_extract(payload, '$.seq') AS INTEGER)) "
                           "FROM alerts")
        return int(rows[0][0] or 0)

    def controls(self) -> List[Dict[str, Any]]:
        """The operator controls stored: ``{"kind", "target", "until", "value"}`` each."""
        return [dict(r) for r in self._query("SELECT kind, target, until, value FROM controls "
                                             "ORDER BY kind, target")]

    def outbox_after(self, last_id: int, limit: int) -> List[OutboxRow]:
        """Up to ``limit`` outbox messages with id above ``last_id``, oldest first."""
        rows = self._query("SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? "
                           "ORDER BY id LIMIT ?", (last_id, int(limit)))
        return [OutboxRow(int(r[0]), str(r[1]), r[2], int(r[3]), bool(r[4])) for r in rows]

    def outbox_summary(self) -> Tuple[int, Optional[float]]:
        """(messages in the outbox, ts of the oldest)."""
        count, oldest = self._query("SELECT count(*), min(ts) FROM outbox")[0]
        return int(count), oldest

    def latest_heartbeat(self) -> Optional[Dict[str, Any]]:
        """The newest heartbeat as ``{"seq", "ts", "payload"}`` (payload decoded), or None."""
        rows = self._query("SELECT seq, ts, payload FROM heartbeats ORDER BY ts DESC, seq DESC "
                           "LIMIT 1")
        return {"seq": rows[0][0], "ts": rows[0][1], "payload": _decode(rows[0][2])} if rows else None

    def last_event(self) -> Optional[Dict[str, Any]]:
        """The newest event as ``{"ts", "kind", "message"}``, or None."""
        rows = self._query("SELECT ts, kind, message FROM events ORDER BY id DESC LIMIT 1")
        return dict(rows[0]) if rows else None

    def oldest_window_ts(self) -> Optional[float]:
        """Start of the oldest summary window kept, or None."""
        return self._query("SELECT min(ts_start) FROM windows")[0][0]  # type: ignore[no-any-return]


def fault_fix(exc: sqlite3.Error, path: str) -> str:
    """How to fix a failed write of ``path`` (free space only when space is the problem)."""
    return classify(exc, path)[1]


class Store(Reader):
    """The agent's SQLite history: named reads and writes, one writer thread."""

    def __init__(self, path: str, *, queue_size: int = 2048, flush_interval_s: float = 2.0,
                 retention_days: float = 30.0, max_db_mb: float = 512.0,
                 outbox_max: int = 50000, outbox_max_age_days: float = 7.0,
                 clock: Callable[[], float] = time.time, retry_interval_s: float = 5.0,
                 create: bool = True, maintain: bool = True,
                 lock_wait_s: float = LOCK_WAIT_S) -> None:
        if queue_size < 2:
            raise ValueError(f"queue_size must be >= 2, got {queue_size}")
        if flush_interval_s <= 0 or retention_days <= 0 or max_db_mb <= 0:
            raise ValueError("flush_interval_s, retention_days and max_db_mb must be > 0")
        super().__init__(path)
        self._retention_days = retention_days
        self._max_db_bytes = int(max_db_mb * 1024 * 1024)
        self._outbox_max = outbox_max
        self._outbox_max_age_s = outbox_max_age_days * 86400.0
        self._outbox_dropped = 0
        self._clock = clock
        self._create = create  # False: a missing file is an error (the CLI: a typo'd --db)
        self._lock = DbLock(self.path)
        self._lock_wait_s = lock_wait_s
        # maintain=False: no retention pass (the CLI writing while no agent runs)
        self._writer = Writer(self.path, self._insert,
                              (lambda db: self._retention(db, self._clock())) if maintain else None,
                              queue_size=queue_size, flush_interval_s=flush_interval_s,
                              retry_interval_s=retry_interval_s)
        self._started = self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, supervisor: Optional[Supervisor] = None) -> Store:
        """Take the database lock, open (migrating) it and start the writer.

        The writer is a critical worker of ``supervisor`` (a private one when None).
        """
        if self._started:
            return self
        if not self._create:  # the CLI: a typo'd --db or a foreign file is an error
            connect_history(self.path).close()
        check_writable(self.path)
        self._lock.acquire(self._lock_wait_s)
        db: Optional[sqlite_utils.Database] = None
        try:
            db = open_db(self.path)
            row = db.execute("SELECT value FROM meta WHERE key = 'outbox_dropped'").fetchone()
        except BaseException:
            if db is not None:
                db.close()
            self._lock.release()
            raise
        self._outbox_dropped = int(row[0]) if row else 0
        self._writer.start(db, supervisor)
        self._started = True
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, stop the writer and checkpoint the WAL; idempotent."""
        if self._closed or not self._started:
            self._writer.closing = True
            return
        if not self._writer.close(timeout):
            return
        self.close_reader()
        self._lock.release()
        self._closed = True

    def advertise(self, **info: Any) -> None:
        """Tell the CLI, through the lock file, how to reach this process (control socket)."""
        self._lock.advertise(**info)

    @property
    def before_commit(self) -> Optional[Callable[[sqlite3.Connection, str], None]]:
        """Called inside each writer transaction before COMMIT with its label (for tests)."""
        return self._writer.before_commit

    @before_commit.setter
    def before_commit(self, hook: Optional[Callable[[sqlite3.Connection, str], None]]) -> None:
        self._writer.before_commit = hook

    def __enter__(self) -> Store:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producers ---------------------------------------------------------------------------
    def put(self, table: str, row: Dict[str, Any]) -> bool:
        """Queue a bulk row; never blocks. False (and counted in ``dropped``) when full."""
        columns = BULK_COLUMNS.get(table)
        if columns is None:
            raise ValueError(f"put() takes a table in {sorted(BULK_COLUMNS)}, not {table!r}")
        unknown = set(row) - set(columns)
        if unknown:
            raise ValueError(f"unknown columns for {table}: {sorted(unknown)} "
                             f"(valid: {', '.join(columns)})")
        if "ts" in columns and row.get("ts") is None:
            row = {**row, "ts": self._clock()}
        names = tuple(row)
        values = tuple(sql_value(row[n], f"{table}.{n}") for n in names)
        return self._writer.put((table, names, values))

    def put_alert(self, alert_record: Dict[str, Any],
                  outbox_messages: Sequence[Dict[str, Any]] = ()) -> None:
        """Upsert an alert row and add its outbox rows in one durable transaction; never dropped."""
        if not alert_record.get("id"):
            raise ValueError("alert record has no 'id'")
        if self._writer.closing:
            raise StoreError(f"alert {alert_record['id']} not stored: {self.path} is closed "
                             "(put alerts before Store.close())")
        alert = tuple(to_json(alert_record) if c == "payload"
                      else sql_value(alert_record.get(c), f"alerts.{c}") for c in _ALERT_COLUMNS)
        now = self._clock()
        outbox = [(sql_value(m.get("ts", now), "outbox.ts"), str(m["topic"]),
                   sql_value(m["payload"], "outbox.payload"),
                   int(m.get("qos", 1)), int(bool(m.get("retain", False))),
                   str(m.get("severity", alert_record.get("severity", "warning"))))
                  for m in outbox_messages]
        self._writer.put_alert((alert, outbox))

    def submit(self, fn: Callable[[sqlite_utils.Database], Any],
               durable: bool = False) -> Future[Any]:
        """Run ``fn(db)`` in the writer thread inside its own transaction."""
        future = self._writer.submit(fn, durable)
        assert future is not None  # a waiting submit is never refused
        return future

    def offer(self, fn: Callable[[sqlite_utils.Database], Any]) -> Optional[Future[Any]]:
        """:meth:`submit` for the frame loop: never waits; None when the queue is full."""
        return self._writer.submit(fn, wait=False)

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` from the writer thread after each commit that added outbox rows."""
        self._writer.add_commit_listener(callback)

    # -- named writes (each one job in the writer thread) ------------------------------------
    def save_reference(self, *, ts: float, model_sha256: str, origin: str, blob: bytes,
                       features_version: int) -> Future[Any]:
        """Keep a learned reference so that a restart finds it (:meth:`load_reference`)."""
        row = (ts, model_sha256, origin, blob, features_version)
        return self.submit(lambda db: db.execute(
            "INSERT INTO reference (ts, model_sha256, origin, blob, features_version) "
            "VALUES (?, ?, ?, ?, ?)", row), durable=True)

    def set_control(self, kind: str, target: str, until: Optional[float],
                    value: Optional[float]) -> Future[Any]:
        """Store an operator control durably; with ``until`` and ``value`` both None, delete it."""
        if until is None and value is None:
            return self.submit(lambda db: db.execute(
                "DELETE FROM controls WHERE kind = ? AND target = ?", (kind, target)),
                durable=True)
        return self.submit(lambda db: db.execute(
            "INSERT OR REPLACE INTO controls (kind, target, until, value) VALUES (?, ?, ?, ?)",
            (kind, target, until, value)), durable=True)

    def delete_outbox(self, ids: Sequence[int]) -> Future[Any]:
        """Delete outbox messages the broker acknowledged."""
        marks, params = ",".join("?" * len(ids)), [int(i) for i in ids]
        return self.submit(lambda db: db.execute(
            f"DELETE FROM outbox WHERE id IN ({marks})", params))

    def record_command(self, verb: str, payload: Dict[str, Any], result: Dict[str, Any],
                       ts: Optional[float] = None) -> Future[Any]:
        """Keep the agent's own record of an operator command it ran and its answer."""
        stamp = self._clock() if ts is None else ts
        row = (stamp, verb, to_json(payload), to_json(result), self._clock())
        return self.submit(lambda db: db.execute(
            "INSERT INTO commands (ts, verb, payload, result, done_ts) VALUES (?, ?, ?, ?, ?)",
            row))

    def enforce_retention(self, now: Optional[float] = None, timeout: float = 60.0) -> Dict[str, int]:
        """Apply retention, the size cap and the outbox bound now; return rows deleted."""
        stamp = self._clock() if now is None else now
        deleted: Dict[str, int] = self.submit(lambda db: self._retention(db, stamp)).result(timeout)
        return deleted

    # -- readers -----------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of its own (rows as sqlite3.Row), closed on exit."""
        conn = connect_readonly(self.path)
        try:
            yield conn
        finally:
            conn.close()

    def stats(self) -> Dict[str, Any]:
        """Queue depth, drop/write/error counters, file size and outbox depth."""
        out: Dict[str, Any] = {
            "queue_depth": self._writer.queue_depth(), **self._writer.counts,
            "outbox_dropped": self._outbox_dropped, "last_error": self._writer.last_error,
            "db_bytes": sum(os.path.getsize(p) for p in (self.path, self.path + "-wal")
                            if os.path.exists(p)),
            "outbox_depth": 0, "outbox_oldest_age_s": None,
        }
        if os.path.exists(self.path):
            try:
                count, oldest = self.outbox_summary()
            except StoreError as exc:
                out["last_error"] = out["last_error"] or str(exc)
            else:
                out["outbox_depth"] = count
                if oldest is not None:
                    out["outbox_oldest_age_s"] = max(0.0, self._clock() - oldest)
        return out

    # -- SQL run by the writer thread ------------------------------------------------------------
    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: Sequence[Row],
                alerts: Sequence[AlertItem]) -> None:
        marks = ",".join("?" * len(_ALERT_COLUMNS))
        for alert, outbox in alerts:
            conn.execute(f"INSERT OR REPLACE INTO alerts ({','.join(_ALERT_COLUMNS)}) "
                         f"VALUES ({marks})", alert)
            conn.executemany("INSERT INTO outbox (ts, topic, payload, qos, retain, severity) "
                             "VALUES (?, ?, ?, ?, ?, ?)", outbox)
        groups: Dict[Tuple[str, Tuple[str, ...]], List[Tuple[Any, ...]]] = {}
        for table, names, values in rows:
            groups.setdefault((table, names), []).append(values)
        for (table, names), batch in groups.items():
            conn.executemany(f"INSERT OR REPLACE INTO {table} ({','.join(names)}) "
                             f"VALUES ({','.join('?' * len(names))})", batch)

    def _retention(self, db: sqlite_utils.Database, now: float) -> Dict[str, int]:
        """Delete by age, by file size and by outbox bound; runs inside a writer transaction."""
        conn = db.conn
        deleted = {"windows": 0, "events": 0, "heartbeats": 0, "outbox": 0}
        cutoff = now - self._retention_days * 86400.0
        for table in ("windows", "events", "heartbeats"):
            deleted[table] += conn.execute(f"DELETE FROM {table} WHERE {TIME_COLUMNS[table]} < ?",
                                           (cutoff,)).rowcount
        deleted["outbox"] = self._bound_outbox(conn, now)

        def used() -> int:
            page, count, free = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                                 for p in ("page_size", "page_count", "freelist_count"))
            return int((count - free) * page)

        while used() > self._max_db_bytes:
            removed = 0
            for table in ("windows", "heartbeats", "events"):
                col, key = TIME_COLUMNS[table], "seq" if table == "heartbeats" else "id"
                rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                chunk = max(_SIZE_CHUNK_MIN, rows // 20)  # ~5% a pass: stop near the cap
                cur = conn.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM "
                                   f"{table} ORDER BY {col} LIMIT {chunk})")
                deleted[table] += cur.rowcount
                removed += cur.rowcount
            if not removed:
                log.warning("store over [store] max_db_mb with only alerts and outbox left: %s",
                            self.path)
                break
        if any(deleted.values()):
            conn.commit()
            # executescript steps the pragma to completion (execute() frees a single page).
            conn.executescript("PRAGMA incremental_vacuum")
        return deleted

    def _bound_outbox(self, conn: sqlite3.Connection, now: float) -> int:
        removed = conn.execute("DELETE FROM outbox WHERE ts < ?",
                               (now - self._outbox_max_age_s,)).rowcount
        excess = conn.execute("SELECT count(*) FROM outbox").fetchone()[0] - self._outbox_max
        for where in ("WHERE severity = 'warning'", ""):
            if excess > 0:
                n = conn.execute(f"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox {where} "
                                 f"ORDER BY id LIMIT ?)", (excess,)).rowcount
                removed += n
                excess -= n
        if removed:
            self._outbox_dropped += removed
            log.warning("store outbox over its bound: dropped %d messages (%d in total)",
                        removed, self._outbox_dropped)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('outbox_dropped', ?)",
                         (str(self._outbox_dropped),))
        return removed
