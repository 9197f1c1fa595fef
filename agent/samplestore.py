"""Captured frames on disk and in the ``samples`` table: the one owner of both.

A sample is a JPEG in the samples folder (``[capture] path``, else ``samples/`` beside the
database) and one row of the ``samples`` table naming it, with the frame's statistics,
confidence summary and the model's detections. Only the agent writes its database, through
its single storage thread: :class:`SampleWriter` runs there (a job of
:meth:`agent.store.Store.submit`) and writes the file (mode 0640, written under a temporary
name and renamed, so a power cut never leaves half a JPEG under a sample's name), evicts the
oldest samples over ``max_mb`` and the oldest normal frames over ``normal_frames``, refuses a
write that would take free space below ``[health] disk_free_mb``, and inserts the row.

Readers (``edgewatch samples``, the report) call :func:`read_samples` on a read-only
connection; a database from before the table existed simply has no samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Sequence, Tuple, Union

from ._sqlite import connect_edgewatch
from ._writer import sql_value
from .errors import StoreError
from .records import SAMPLE_REASONS, Sample

if TYPE_CHECKING:
    import sqlite_utils

    from .config import Config
    from .store import Store

__all__ = ["SAMPLES_SCHEMA", "SampleWriter", "copy_samples", "find_samples_dir", "read_samples",
           "sample_alert_ids", "samples_dir", "snapshot_samples_dir"]

log = logging.getLogger(__name__)

#: The store's migration 4: the samples table (run by agent.store's numbered migrations).
SAMPLES_SCHEMA = """
    -- captured frames (files in the samples folder), written by the agent only
    CREATE TABLE samples (id INTEGER PRIMARY KEY, ts REAL, camera TEXT, reason TEXT,
                          alert_id TEXT, kind TEXT, feature TEXT, path TEXT, sha256 TEXT,
                          bytes INTEGER, width INTEGER, height INTEGER, stats TEXT,
                          confidence TEXT, detections TEXT);
    CREATE INDEX idx_samples_ts ON samples (ts);
    CREATE INDEX idx_samples_alert ON samples (alert_id);
"""
_COLUMNS = ("ts", "camera", "reason", "alert_id", "kind", "feature", "path", "sha256", "bytes",
            "width", "height", "stats", "confidence", "detections")
_META_KEYS = frozenset(_COLUMNS) - {"path", "sha256", "bytes"}
_EVICT_CHUNK = 16
_LOG_EVERY_S = 60.0
MB = 1024 * 1024


def samples_dir(config_or_db_path: Union[Config, str, os.PathLike[str]]) -> Path:
    """The samples folder: ``[capture] path``, else ``samples/`` beside the database; for a
    database path, ``<name>-samples/`` beside it when there is one (a pulled snapshot,
    ``scripts/pull-logs.sh``)."""
    capture = getattr(config_or_db_path, "capture", None)
    if capture is not None:
        if capture.path:
            return Path(capture.path)
        return Path(config_or_db_path.store.path).parent / "samples"  # type: ignore[union-attr]
    db = Path(os.fspath(config_or_db_path))  # type: ignore[arg-type]
    pulled = db.with_name(db.stem + "-samples")
    return pulled if pulled.is_dir() else db.parent / "samples"


def find_samples_dir(config: Config, db: Optional[str], folder: Optional[str]) -> Path:
    """The samples folder a command reads: ``--samples``, else the one of ``--db``, else the
    config's."""
    if folder:
        return Path(folder)
    return samples_dir(db) if db else samples_dir(config)


def snapshot_samples_dir(snapshot: Union[str, os.PathLike[str]]) -> Path:
    """Where a snapshot's samples go: ``<name>-samples/`` beside it (:func:`samples_dir`
    finds them there, as it finds those of ``scripts/pull-logs.sh``)."""
    path = Path(os.fspath(snapshot))
    return path.with_name(path.stem + "-samples")


def copy_samples(db_path: Union[str, os.PathLike[str]], source: Path,
                 dest: Path) -> Tuple[int, List[int]]:
    """Copy the file of every sample in ``db_path`` from ``source`` into ``dest`` (0640,
    the same relative paths); (files copied, ids of samples whose file is missing)."""
    copied, missing = 0, []
    for sample in read_samples(db_path):
        src, target = source / sample.path, dest / sample.path
        if target.is_file() and target.stat().st_size == sample.bytes:
            copied += 1  # an earlier export's copy
            continue
        try:
            data = src.read_bytes()
        except FileNotFoundError:
            missing.append(sample.id)
            continue
        except OSError as exc:
            raise StoreError(f"cannot read sample {src}: {exc} (run as the agent's user, or "
                             "pass --no-samples)") from None
        try:
            write_private(target, data)
        except OSError as exc:
            raise StoreError(f"cannot copy samples to {dest}: {exc} (free space or name "
                             "another --out, or pass --no-samples)") from None
        copied += 1
    return copied, missing


def _decode(text: Optional[str], empty: Any) -> Any:
    try:
        return json.loads(text) if text else empty
    except ValueError:
        return empty


def _sample(row: Union[sqlite3.Row, Mapping[str, Any]]) -> Sample:
    return Sample(id=int(row["id"]), ts=float(row["ts"]), camera=str(row["camera"] or ""),
                  reason=str(row["reason"]), alert_id=row["alert_id"], kind=row["kind"],
                  feature=row["feature"], path=str(row["path"]), sha256=str(row["sha256"]),
                  bytes=int(row["bytes"]), width=int(row["width"]), height=int(row["height"]),
                  stats=_decode(row["stats"], {}), confidence=_decode(row["confidence"], {}),
                  detections=tuple(_decode(row["detections"], [])))


def read_samples(db_path: Union[str, os.PathLike[str]], *, since: Optional[float] = None,
                 until: Optional[float] = None, alert_id: Optional[str] = None,
                 limit: Optional[int] = None) -> List[Sample]:
    """Samples in [since, until] (of one alert when ``alert_id``: its id or a prefix), oldest
    first; [] for a database from before samples were kept."""
    clauses, params = _conditions(since, until, alert_id)
    sql = "SELECT * FROM samples" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
    sql += " ORDER BY ts, id" + ("" if limit is None else f" LIMIT {int(limit)}")
    return [_sample(r) for r in _query(db_path, sql, params)]


def sample_alert_ids(db_path: Union[str, os.PathLike[str]]) -> List[str]:
    """Ids of the alerts that have samples in ``db_path``, newest first."""
    rows = _query(db_path, "SELECT alert_id FROM samples WHERE alert_id IS NOT NULL "
                  "GROUP BY alert_id ORDER BY max(ts) DESC", [])
    return [str(r["alert_id"]) for r in rows]


def _query(db_path: Union[str, os.PathLike[str]], sql: str,
           params: Sequence[Any]) -> List[sqlite3.Row]:
    """Rows of a query on the samples table; [] for a database from before it existed."""
    path = os.fspath(db_path)
    conn = connect_edgewatch(path)  # else StoreError
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                        "name = 'samples'").fetchone() is None:
            return []
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, params))
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read samples: {path}: {exc} (check --db)") from None
    finally:
        conn.close()


def _conditions(since: Optional[float], until: Optional[float],
                alert_id: Optional[str]) -> Tuple[List[str], List[Any]]:
    clauses: List[str] = []
    params: List[Any] = []
    for sql, value in (("ts >= ?", since), ("ts <= ?", until)):
        if value is not None:
            clauses.append(sql)
            params.append(float(value))
    if alert_id:
        clauses.append("substr(alert_id, 1, length(?)) = ?")
        params += [alert_id, alert_id]
    return clauses, params


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0640: a temporary file, fsync'd, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.fchmod(fd, 0o640)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class SampleWriter:
    """Saves samples from the storage thread: file, bounds, row (see the module docstring)."""

    def __init__(self, folder: Union[str, os.PathLike[str]], *, max_mb: float,
                 normal_frames: int, disk_free_mb: float = 0.0) -> None:
        if max_mb <= 0 or normal_frames < 0 or disk_free_mb < 0:
            raise ValueError("max_mb must be > 0, normal_frames and disk_free_mb >= 0")
        self.folder = Path(folder)
        self.max_bytes = int(max_mb * MB)
        self.normal_frames = normal_frames
        self.disk_free_bytes = int(disk_free_mb * MB)
        self._total: Optional[int] = None  # bytes of the samples kept (read once)
        self._lock = threading.Lock()
        self.counts = {"saved": 0, "evicted": 0, "disk_low": 0, "errors": 0}
        self._next_log = 0.0

    def submit(self, store: Store, jpeg: bytes, meta: Mapping[str, Any]) -> Future[Any]:
        """Save one sample from any thread; the Future holds the :class:`Sample` (or None)."""
        return store.submit(lambda db: self.save(db, jpeg, meta))

    def save(self, db: sqlite_utils.Database, jpeg: bytes,
             meta: Mapping[str, Any]) -> Optional[Sample]:
        """Write the JPEG and its row (storage thread); None when the disk guard refused it."""
        _check_meta(meta)
        conn = db.conn
        digest = hashlib.sha256(jpeg).hexdigest()
        ts = float(meta["ts"])
        rel = f"{time.strftime('%Y%m%d', time.gmtime(ts))}/{int(ts * 1000)}-{meta['reason']}-" \
              f"{digest[:12]}.jpg"
        if self._total is None:
            self._total = int(conn.execute("SELECT coalesce(sum(bytes), 0) FROM samples")
                              .fetchone()[0])
        if meta["reason"] == "normal":
            self._trim_normal(conn)
        self._evict(conn, len(jpeg))
        if not self._room_on_disk(len(jpeg)):
            return None
        target = self.folder / rel
        try:
            write_private(target, jpeg)
        except OSError as exc:
            self._failed(f"cannot write sample {target}: {exc} (check [capture] path)")
            return None
        row = {**{k: meta.get(k) for k in _META_KEYS}, "path": rel, "sha256": digest,
               "bytes": len(jpeg)}
        try:
            cur = conn.execute(f"INSERT INTO samples ({','.join(_COLUMNS)}) VALUES "
                               f"({','.join('?' * len(_COLUMNS))})",
                               [sql_value(row[c], f"samples.{c}") for c in _COLUMNS])
        except BaseException:
            target.unlink(missing_ok=True)  # no row, no file
            raise
        self._total += len(jpeg)
        self.counts["saved"] += 1
        return _sample({**row, "id": cur.lastrowid,
                        **{k: sql_value(row[k], k) for k in ("stats", "confidence",
                                                            "detections")}})

    def forget_normal_since(self, db: sqlite_utils.Database, since: float) -> int:
        """Delete normal frames taken at or after ``since`` (storage thread): an episode's
        window had begun, so they were not normal; returns how many went."""
        if self._total is None:
            self._total = int(db.conn.execute("SELECT coalesce(sum(bytes), 0) FROM samples")
                              .fetchone()[0])
        rows = db.conn.execute("SELECT id, path, bytes FROM samples WHERE reason = 'normal' AND "
                               "ts >= ?", (since,)).fetchall()
        self._delete(db.conn, rows)
        self.counts["evicted"] -= len(rows)  # not for space: a correction
        return len(rows)

    def _room_on_disk(self, size: int) -> bool:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
            free = shutil.disk_usage(self.folder).free
        except OSError as exc:
            self._failed(f"cannot use the samples folder {self.folder}: {exc} "
                         "(check [capture] path)")
            return False
        if free - size >= self.disk_free_bytes:
            return True
        self.counts["disk_low"] += 1
        self._log(f"sample not kept: {free // MB} MB free on {self.folder} is at the [health] "
                  f"disk_free_mb guard ({self.disk_free_bytes // MB} MB; free space or lower "
                  "[capture] max_mb)")
        return False

    def _trim_normal(self, conn: sqlite3.Connection) -> None:
        """Keep at most normal_frames - 1 normal frames before adding one (oldest go)."""
        n = conn.execute("SELECT count(*) FROM samples WHERE reason = 'normal'").fetchone()[0]
        excess = n - self.normal_frames + 1
        if excess > 0:
            self._delete(conn, conn.execute(
                "SELECT id, path, bytes FROM samples WHERE reason = 'normal' ORDER BY ts, id "
                "LIMIT ?", (excess,)).fetchall())

    def _evict(self, conn: sqlite3.Connection, incoming: int) -> None:
        """Delete the oldest samples until ``incoming`` more bytes fit under max_mb."""
        assert self._total is not None
        while self._total + incoming > self.max_bytes:
            rows = conn.execute("SELECT id, path, bytes FROM samples ORDER BY ts, id LIMIT ?",
                                (_EVICT_CHUNK,)).fetchall()
            if not rows:
                self._total = 0
                return
            over, n = self._total + incoming - self.max_bytes, 0
            while n < len(rows) and over > 0:  # only as many as needed
                over -= int(rows[n][2] or 0)
                n += 1
            self._delete(conn, rows[:n])

    def _delete(self, conn: sqlite3.Connection, rows: Sequence[Tuple[int, str, int]]) -> None:
        for _, rel, _ in rows:
            try:
                (self.folder / rel).unlink(missing_ok=True)
            except OSError as exc:
                self._failed(f"cannot delete sample {self.folder / rel}: {exc}")
        conn.executemany("DELETE FROM samples WHERE id = ?", [(r[0],) for r in rows])
        self._total = max(0, (self._total or 0) - sum(int(r[2] or 0) for r in rows))
        self.counts["evicted"] += len(rows)

    def _failed(self, message: str) -> None:
        self.counts["errors"] += 1
        self._log(message)

    def _log(self, message: str) -> None:
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + _LOG_EVERY_S
            log.warning("%s", message)


def _check_meta(meta: Mapping[str, Any]) -> None:
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise ValueError(f"unknown sample fields: {sorted(unknown)} "
                         f"(valid: {', '.join(sorted(_META_KEYS))})")
    if meta.get("reason") not in SAMPLE_REASONS:
        raise ValueError(f"sample reason {meta.get('reason')!r}: one of "
                         f"{', '.join(SAMPLE_REASONS)}")
    for key in ("ts", "width", "height"):
        if meta.get(key) is None:
            raise ValueError(f"sample field {key!r} is missing")
