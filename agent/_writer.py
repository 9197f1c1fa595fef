"""The storage writer: one supervised thread, bounded queues in, batched transactions out.

Bulk rows (windows, events, heartbeats) arrive on a bounded queue that never blocks and
counts what it drops. Alerts and jobs arrive on a strictly ordered, soft-bounded queue: over
the bound the caller waits briefly and then appends anyway (the "spill"), so nothing
critical is ever lost. Rows are written in one transaction every ``flush_interval_s`` to
spare the flash, with ``synchronous=NORMAL``; a batch holding an alert transition (and its
outbox rows), and a durable job (an operator control, a learned reference), are committed
with ``synchronous=FULL`` so that a power cut cannot roll them back.

The thread is a critical :class:`~agent.supervise.Worker`. A full disk is reported (one line
per minute saying how to fix it) and retried every ``retry_interval_s`` with the batch kept
in memory, for as long as it takes: it is not the agent's fault and restarting would not
help. Any other write failure (a read-only or failing disk, a corrupt file) raises
:class:`WriterFault` to the supervisor, which counts it, backs off, retries, and after a run
of consecutive failures makes the agent exit non-zero so that systemd restarts it.

This module holds no SQL for the tables: the store passes in how to insert a batch and how
to prune (``insert`` and ``maintenance``).
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import sqlite_utils

from ._sqlite import classify
from .errors import StoreError
from .supervise import Supervisor, Worker

log = logging.getLogger(__name__)

FAULT_LOG_EVERY_S = 60.0
MAINTENANCE_EVERY_S = 60.0
ALERT_WAIT_S = 0.05  # the longest put_alert blocks before spilling to memory
_IDLE_S = 0.5  # the longest one step of the writer waits for work

_SQL_TYPES = (type(None), int, float, str, bytes)
Row = Tuple[str, Tuple[str, ...], Tuple[Any, ...]]  # table, column names, values
AlertItem = Tuple[Tuple[Any, ...], List[Tuple[Any, ...]]]  # alert row, its outbox rows
Job = Callable[[sqlite_utils.Database], Any]
Insert = Callable[[sqlite3.Connection, Sequence[Row], Sequence[AlertItem]], None]
Hook = Callable[[sqlite3.Connection, str], None]


class WriterFault(StoreError):
    """A write failed for a reason other than a full disk (counted by the supervisor)."""


def _json_default(value: Any) -> Any:
    """Encode numpy scalars and arrays, which json cannot."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(value: Any) -> str:
    """Compact JSON text of ``value`` (numpy scalars and arrays allowed)."""
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def sql_value(value: Any, where: str) -> Any:
    """``value`` as SQLite stores it: JSON text for containers, ints for booleans."""
    if isinstance(value, (dict, list, tuple)):
        return to_json(value)
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, _SQL_TYPES) and hasattr(value, "item"):
        value = value.item()  # numpy scalar
    if not isinstance(value, _SQL_TYPES):
        raise ValueError(f"cannot store {type(value).__name__} in {where}")
    return value


class Writer:
    """The single writer thread of one database."""

    def __init__(self, path: str, insert: Insert, maintenance: Optional[Job], *,
                 queue_size: int, flush_interval_s: float, retry_interval_s: float) -> None:
        self.path = path
        self._insert = insert
        self._maintenance = maintenance
        self._queue_size = queue_size
        self._flush_s = flush_interval_s
        self._retry_s = retry_interval_s
        self._bulk: queue.Queue[Row] = queue.Queue(maxsize=queue_size)
        self._critical: Deque[Tuple[str, Any, Any]] = collections.deque()
        self._critical_max = max(16, queue_size // 8)
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._listeners: List[Callable[[], None]] = []
        self.before_commit: Optional[Hook] = None  # tests read pragmas inside a transaction
        self._db: Optional[sqlite_utils.Database] = None
        self._supervisor: Optional[Supervisor] = None
        self._worker: Optional[Worker] = None
        self._own_supervisor = False
        self.closing = False
        # Writer-owned state.
        self._pending_rows: List[Row] = []
        self._pending_alerts: List[AlertItem] = []
        self._faulted_at: Dict[str, float] = {}
        self._next_retry = 0.0
        self._next_flush = 0.0
        self._next_maintenance = float("inf")
        self.counts = {"dropped": 0, "written": 0, "write_errors": 0, "alerts_spilled": 0}
        self.last_error: Optional[str] = None
        self._count_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, db: sqlite_utils.Database, supervisor: Optional[Supervisor] = None) -> None:
        """Start writing to ``db`` from a critical worker of ``supervisor`` (or a private one)."""
        self._db = db
        self._next_flush = time.monotonic() + self._flush_s
        if self._maintenance is not None:  # once at start: a device restarting often prunes
            self._next_maintenance = time.monotonic()
        self._own_supervisor = supervisor is None
        self._supervisor = supervisor or Supervisor()
        self._worker = self._supervisor.spawn("edgewatch-store", self._step,
                                              backoff_s=self._retry_s, critical=True)

    def close(self, timeout: float) -> bool:
        """Write everything queued, checkpoint and close; False if that took too long."""
        self.closing = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        worker = self._worker
        while (not self._done.is_set() and worker is not None and worker.thread.is_alive()
               and time.monotonic() < deadline):
            self._done.wait(0.05)  # the worker may end first: its supervisor is stopping
        if not self._done.is_set():
            if worker is not None and worker.thread.is_alive():
                log.error("store writer did not stop within %.1f s: %s", timeout, self.path)
                return False
            while not self._done.is_set():  # the worker is gone: drain in this thread
                self._step()
        if self._own_supervisor and self._supervisor is not None:
            self._supervisor.stop()
        return True

    # -- producers ---------------------------------------------------------------------------
    def put(self, row: Row) -> bool:
        """Queue a bulk row; never blocks. False (and counted in ``dropped``) when full."""
        if self.closing:
            self.count("dropped")
            return False
        try:
            self._bulk.put_nowait(row)
        except queue.Full:
            self.count("dropped")
            return False
        if self._bulk.qsize() >= self._queue_size // 2:
            self._wake.set()
        return True

    def put_alert(self, item: AlertItem) -> None:
        """Queue an alert and its outbox rows; never dropped."""
        self._put_critical(("alert", item, None))

    def submit(self, fn: Job, durable: bool = False, wait: bool = True) -> Optional[Future[Any]]:
        """Run ``fn(db)`` in the writer thread in its own transaction (FULL sync if durable).
        With ``wait=False`` (the frame loop) a full queue refuses the job at once: None."""
        if self.closing:
            raise StoreError(f"store is closed: {self.path} (submit before Store.close())")
        future: Future[Any] = Future()
        if not self._put_critical(("durable" if durable else "job", fn, future), wait):
            return None
        return future

    def _put_critical(self, item: Tuple[str, Any, Any], wait: bool = True) -> bool:
        with self._cond:
            if len(self._critical) >= self._critical_max:
                if not wait:
                    return False
                self._cond.wait_for(lambda: len(self._critical) < self._critical_max,
                                    timeout=ALERT_WAIT_S)
                if len(self._critical) >= self._critical_max:
                    self.count("alerts_spilled")
            self._critical.append(item)
        self._wake.set()
        return True

    def count(self, name: str, n: int = 1) -> None:
        """Add to a counter (thread-safe)."""
        with self._count_lock:
            self.counts[name] += n

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` from the writer thread after each commit that added outbox rows."""
        self._listeners.append(callback)

    def queue_depth(self) -> int:
        """Rows and alerts queued or held in memory, not yet written."""
        return (self._bulk.qsize() + len(self._critical) + len(self._pending_rows)
                + len(self._pending_alerts))

    # -- the thread ----------------------------------------------------------------------------
    def _step(self) -> None:
        """One round: wait for work or a deadline, write what is due, run jobs, prune."""
        if self._done.is_set():  # closed: idle until the supervisor stops
            if self._supervisor is not None:
                self._supervisor.stop_event.wait(1.0)
            return
        now = time.monotonic()
        deadline = min(self._next_flush, self._next_maintenance)
        if self._faulted_at:
            deadline = min(deadline, self._next_retry)
        if not self.closing:  # at most _IDLE_S: the worker loop then sees a supervisor stop
            self._wake.wait(min(max(0.0, deadline - now), _IDLE_S))
        self._wake.clear()
        closing = self.closing
        jobs = self._take_critical()
        now = time.monotonic()
        due = (closing or bool(self._pending_alerts) or bool(jobs) or now >= self._next_flush
               or self._bulk.qsize() >= self._queue_size // 2)
        if self._faulted_at and not closing and now < self._next_retry:
            due = False
        fault = None
        if due:
            self._take_bulk()
            if self._pending_rows or self._pending_alerts:
                fault = self._write_batch()
            self._next_flush = now + self._flush_s
        for kind, fn, future in jobs:
            fault = self._run_job(fn, future, kind == "durable") or fault
        if now >= self._next_maintenance and self._maintenance is not None:
            self._next_maintenance = now + MAINTENANCE_EVERY_S
            fault = self._run_job(self._maintenance, None, False) or fault
        if closing and self._bulk.empty() and not self._critical:
            self._shutdown()
        elif fault is not None and fault[0] != "full":
            self._next_retry = time.monotonic()  # the supervisor's backoff is the wait
            raise WriterFault(f"store write failed: {self.path}: {fault[1]}")

    def _take_critical(self) -> List[Tuple[str, Job, Optional[Future[Any]]]]:
        jobs = []
        with self._cond:
            while self._critical:
                kind, item, future = self._critical.popleft()
                if kind == "alert":
                    self._pending_alerts.append(item)
                else:
                    jobs.append((kind, item, future))
            self._cond.notify_all()
        return jobs

    def _take_bulk(self) -> None:
        # During a fault, hold at most one queue's worth in memory; the queue then fills
        # and put() counts what it drops.
        room = self._queue_size if self._faulted_at else 4 * self._queue_size
        room = self._bulk.qsize() + 1 if self.closing else room - len(self._pending_rows)
        while room > 0:
            try:
                self._pending_rows.append(self._bulk.get_nowait())
            except queue.Empty:
                break
            room -= 1

    def _transaction(self, work: Callable[[sqlite3.Connection], Any], label: str,
                     durable: bool) -> Any:
        """Run ``work(conn)`` in one BEGIN IMMEDIATE ... COMMIT, FULL-synced if ``durable``."""
        assert self._db is not None
        conn = self._db.conn
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                if self.before_commit is not None and conn.in_transaction:
                    self.before_commit(conn, label)
                if conn.in_transaction:
                    conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if durable:
                conn.execute("PRAGMA synchronous=NORMAL")
        return result

    def _write_batch(self) -> Optional[Tuple[str, str]]:
        rows, alerts = self._pending_rows, self._pending_alerts
        try:  # an alert transition with its outbox rows must survive a power cut
            self._transaction(lambda conn: self._insert(conn, rows, alerts),
                              "alerts" if alerts else "bulk", durable=bool(alerts))
        except sqlite3.Error as exc:  # values are checked by put(): this is the disk or file
            return self._on_fault(exc)
        self.counts["written"] += len(rows) + len(alerts)
        self._pending_rows, self._pending_alerts = [], []
        if self._faulted_at:
            log.warning("store writes resumed: %s", self.path)
            self._faulted_at.clear()
            self.last_error = None
        if any(outbox for _, outbox in alerts):
            for callback in list(self._listeners):
                try:
                    callback()
                except Exception:  # noqa: BLE001 - a listener must not stop the writer
                    log.exception("store commit listener failed")
        return None

    def _on_fault(self, exc: sqlite3.Error) -> Tuple[str, str]:
        kind, fix = classify(exc, self.path)
        now = time.monotonic()
        self.counts["write_errors"] += 1
        self.last_error = f"{exc} ({fix})"
        self._next_retry = now + self._retry_s
        last = self._faulted_at.get(kind)
        if last is None or now - last >= FAULT_LOG_EVERY_S:
            self._faulted_at[kind] = now
            if kind == "full":  # the supervisor logs the others, once per interval too
                log.error("store write failed: %s: %s; keeping %d rows and %d alerts in "
                          "memory (%s)", self.path, exc, len(self._pending_rows),
                          len(self._pending_alerts), fix)
        return kind, self.last_error

    def _run_job(self, fn: Job, future: Optional[Future[Any]],
                 durable: bool) -> Optional[Tuple[str, str]]:
        assert self._db is not None
        if future is not None and not future.set_running_or_notify_cancel():
            return None
        db = self._db
        try:
            result = self._transaction(lambda conn: fn(db), "job", durable)
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the Future
            fault = self._on_fault(exc) if isinstance(exc, sqlite3.Error) else None
            if future is not None:
                future.set_exception(exc)
            elif fault is None:
                log.exception("store maintenance failed")
            return fault
        if future is not None:
            future.set_result(result)
        return None

    def _shutdown(self) -> None:
        assert self._db is not None
        if self._pending_rows or self._pending_alerts:
            self._write_batch()
        if self._pending_rows or self._pending_alerts:
            log.error("store closing with %d rows and %d alerts unwritten: %s (%s)",
                      len(self._pending_rows), len(self._pending_alerts), self.path,
                      self.last_error)
        try:
            self._db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("store WAL checkpoint failed: %s: %s", self.path, exc)
        self._db.conn.close()
        self._done.set()
