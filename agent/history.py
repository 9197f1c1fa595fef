"""Read-only queries over a device database for the report and the model card.

The device tables belong to :mod:`agent.store`; this module only reads them (the report and
``edgewatch card`` run on a laptop from a pulled snapshot, or beside the running agent: one
read-only connection, so WAL readers never block the writer). Each query returns typed,
frozen records; nothing here writes.

>>> import tempfile, os
>>> from agent.store import Store
>>> path = os.path.join(tempfile.mkdtemp(), "h.db")
>>> with Store(path) as store:
...     _ = store.put("windows", {"ts_start": 0.0, "ts_end": 60.0, "frames": 900,
...                               "camera": "cam0", "summary": {"brightness": {"p50": 120.0}}})
>>> with History(path) as history:
...     [(w.ts_end, w.summary["brightness"]["p50"]) for w in history.windows()]
[(60.0, 120.0)]
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ._sqlite import classify
from .errors import BaselineError, StoreError
from .records import FILE_REFERENCE, AlertTransition
from .store import connect_history

__all__ = ["Event", "Gap", "HeartbeatRow", "History", "ReferenceRow", "SummaryWindow",
           "current_reference", "monitoring_gaps"]


@dataclass(frozen=True)
class SummaryWindow:
    """One stored summary window: per feature ``{mean, std, min, p05, p50, p95, max}``."""

    ts_start: float
    ts_end: float
    frames: int
    camera: str
    summary: Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class HeartbeatRow:
    """One stored heartbeat, with the parts the report reads pulled out of its payload."""

    ts: float
    seq: int
    monitoring: str  # one of records.MONITORING_STATES, "" when the heartbeat predates it
    drift: Mapping[str, float]  # raw distances at the last drift test
    drift_scores: Mapping[str, float]  # distance / threshold (schema 3), {} before
    payload: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Event:
    """An agent event (``start``, ``stop``, reference changes, ...)."""

    ts: float
    kind: str
    message: str


@dataclass(frozen=True)
class ReferenceRow:
    """A reference the agent stored (learned, or a training reference's calibration)."""

    id: int
    ts: float
    model_sha256: str
    origin: str
    features_version: int
    blob: bytes = field(repr=False)


@dataclass(frozen=True)
class Gap:
    """A span in which monitoring was off or degraded (or the agent was not running)."""

    start: float
    end: float
    state: str  # "stopped" (no agent) or a monitoring state other than "active"


def _json(text: Optional[str]) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def _numbers(value: Any) -> Dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float))}


class History:
    """Read-only queries over one device database (live, WAL, or an exported snapshot)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._conn: Optional[sqlite3.Connection] = None

    def __enter__(self) -> History:
        self._connection()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (reopened on the next query)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_history(self.path)
        return self._conn

    def _query(self, sql: str, params: Sequence[Any] = ()) -> List[sqlite3.Row]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read database: {self.path}: {exc} "
                             f"({classify(exc, self.path)[1]})") from None

    @staticmethod
    def _between(column: str, since: Optional[float],
                 until: Optional[float]) -> Tuple[str, List[float]]:
        clauses = [c for c, v in ((f"{column} >= ?", since), (f"{column} <= ?", until))
                   if v is not None]
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return where, [v for v in (since, until) if v is not None]

    def span(self, since: Optional[float] = None,
             until: Optional[float] = None) -> Tuple[Optional[float], Optional[float]]:
        """First and last time anything was recorded in [since, until] (windows, heartbeats,
        alerts, events), clamped to it; (None, None) when nothing was."""
        lo, hi = -math.inf if since is None else since, math.inf if until is None else until
        parts = " UNION ALL ".join(
            f"SELECT min({a}) t0, max({b}) t1 FROM {table} WHERE {b} >= ? AND {a} <= ?"
            for table, a, b in (("windows", "ts_start", "ts_end"), ("heartbeats", "ts", "ts"),
                                ("alerts", "starts_at", "ts"), ("events", "ts", "ts")))
        row = self._query(f"SELECT min(t0), max(t1) FROM ({parts})", (lo, hi) * 4)[0]
        if row[0] is None:
            return None, None
        return max(float(row[0]), lo), min(float(row[1]), hi)

    def windows(self, since: Optional[float] = None,
                until: Optional[float] = None) -> List[SummaryWindow]:
        """Summary windows that end in [since, until], oldest first."""
        where, params = self._between("ts_end", since, until)
        rows = self._query("SELECT ts_start, ts_end, frames, camera, summary FROM windows"
                           f"{where} ORDER BY ts_start, id", params)
        return [SummaryWindow(float(r[0]), float(r[1]), int(r[2] or 0), str(r[3] or ""),
                              {str(k): _numbers(v) for k, v in _json(r[4]).items()})
                for r in rows]

    def alerts(self, since: Optional[float] = None,
               until: Optional[float] = None) -> List[AlertTransition]:
        """Each alert's latest record (state, lifecycle: acked/snoozed by whom) that was open
        at some time in [since, until], oldest first."""
        clauses, params = [], []
        if until is not None:
            clauses.append("starts_at <= ?")
            params.append(until)
        if since is not None:
            clauses.append("(ends_at IS NULL OR ends_at >= ?)")
            params.append(since)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._query(f"SELECT payload FROM alerts{where} ORDER BY starts_at, id", params)
        out = []
        for row in rows:
            try:
                out.append(AlertTransition.from_dict(_json(row[0])))
            except (KeyError, TypeError, ValueError):
                continue  # a record from a foreign writer: the report shows what it can
        return out

    def heartbeats(self, since: Optional[float] = None,
                   until: Optional[float] = None) -> List[HeartbeatRow]:
        """Heartbeats in [since, until], oldest first."""
        where, params = self._between("ts", since, until)
        rows = self._query(f"SELECT ts, seq, payload FROM heartbeats{where} ORDER BY ts, seq",
                           params)
        out = []
        for ts, seq, text in rows:
            payload = _json(text)
            monitoring = payload.get("monitoring") or {}
            out.append(HeartbeatRow(float(ts), int(seq), str(monitoring.get("state") or ""),
                                 _numbers(payload.get("drift")),
                                 _numbers(payload.get("drift_scores")), payload))
        return out

    def latest_heartbeat(self) -> Optional[HeartbeatRow]:
        """The newest heartbeat, or None."""
        rows = self._query("SELECT max(ts) FROM heartbeats")
        if rows[0][0] is None:
            return None
        found = self.heartbeats(since=float(rows[0][0]))
        return found[-1] if found else None

    def events(self, since: Optional[float] = None,
               until: Optional[float] = None) -> List[Event]:
        """Agent events in [since, until], oldest first."""
        where, params = self._between("ts", since, until)
        rows = self._query(f"SELECT ts, kind, message FROM events{where} ORDER BY ts, id", params)
        return [Event(float(r[0]), str(r[1]), str(r[2] or "")) for r in rows]

    def references(self) -> List[ReferenceRow]:
        """Every stored reference row (learned references and calibrations), oldest first."""
        rows = self._query("SELECT id, ts, model_sha256, origin, features_version, blob "
                           "FROM reference ORDER BY id")
        return [ReferenceRow(int(r[0]), float(r[1]), str(r[2] or ""), str(r[3] or ""),
                             int(r[4] or 1), bytes(r[5] or b"")) for r in rows]

    def controls(self) -> List[Dict[str, Any]]:
        """Operator controls in force: ``{"kind", "target", "until", "value"}`` each."""
        return [dict(zip(("kind", "target", "until", "value"), r)) for r in self._query(
            "SELECT kind, target, until, value FROM controls ORDER BY kind, target")]


def monitoring_gaps(heartbeats: Sequence[HeartbeatRow], events: Sequence[Event],
                    until: Optional[float] = None,
                    windows: Sequence[SummaryWindow] = ()) -> List[Gap]:
    """Spans where monitoring was not ``active``: heartbeats in another state, the time
    between a ``stop`` event and the next ``start`` (the agent was not running), and holes of
    more than three window lengths between summary windows (``no data``)."""
    gaps: List[Gap] = [Gap(a.ts_end, b.ts_start, "no data") for a, b in zip(windows, windows[1:])
                       if b.ts_start - a.ts_end > 3 * max(a.ts_end - a.ts_start, 1.0)]
    current: Optional[Tuple[float, str]] = None
    for hb in heartbeats:
        state = hb.monitoring or "active"
        if current is not None and current[1] != state:
            gaps.append(Gap(current[0], hb.ts, current[1]))
            current = None
        if state != "active" and current is None:
            current = (hb.ts, state)
    if current is not None:
        gaps.append(Gap(current[0], heartbeats[-1].ts if until is None else until, current[1]))
    stopped: Optional[float] = None
    for ev in events:
        if ev.kind == "stop":
            stopped = ev.ts
        elif ev.kind == "start" and stopped is not None:
            gaps.append(Gap(stopped, ev.ts, "stopped"))
            stopped = None
    return sorted(gaps, key=lambda g: g.start)


def current_reference(history: History, model_sha256: str,
                      baseline: str = "") -> Tuple[Optional[Any], Optional[ReferenceRow]]:
    """The reference drift was tested against: the newest stored for the model (learned, a
    calibration, or the baseline file a run or replay used), else the baseline file of
    ``[drift] reference``; and the stored row it came from.

    Returns ``(Reference or None, ReferenceRow or None)``; a baseline that cannot be read is
    None (the report says "no reference" rather than failing).
    """
    from .drift.reference import Reference

    mine = {model_sha256, FILE_REFERENCE + model_sha256}
    for row in reversed(history.references()):
        if not row.blob or (row.origin != "calibration" and model_sha256
                            and row.model_sha256 not in mine):
            continue
        try:
            return Reference.from_bytes(row.blob, where=f"{history.path} reference {row.id}"), row
        except BaselineError:
            continue
    if baseline:
        try:
            return Reference.load(baseline), None
        except BaselineError:
            return None, None
    return None, None
