"""Export the history while the agent keeps writing: SQLite snapshots, CSV and JSON Lines.

A snapshot uses SQLite's online backup API from a read-only connection, so it holds every
transaction committed before it began, WAL included (a plain file copy can miss the WAL).
CSV writes one file per table named ``<stem>_<table>.csv`` next to ``out_path``; JSON Lines
writes one object per row with a ``"table"`` key. Values are exported exactly as stored
(JSON columns stay JSON text; NULL is an empty CSV field and ``null`` in JSON Lines).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .errors import CommandError, StoreError
from .store import connect_history, fault_fix, prune_copy, select_rows

# Tables that can be exported row by row, in this order, with the column filtered on.
EXPORT_TABLES = ("windows", "events", "alerts", "heartbeats", "outbox")
FORMATS = ("sqlite", "csv", "jsonl")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_time(text: str, now: float) -> float:
    """Unix time of ``text``: a duration ago ("30m", "2h", "7d"), unix seconds, or ISO 8601.

    ISO times without an offset are local time; "Z" means UTC.

    >>> parse_time("2h", now=10000.0)
    2800.0
    >>> parse_time("1700000000", now=0.0)
    1700000000.0
    >>> parse_time("2023-11-14T22:13:20Z", now=0.0)
    1700000000.0
    """
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    iso = text.strip()
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        raise CommandError(f"bad time: {text!r} (use a duration like 30m, 2h, 7d, unix seconds "
                           "or an ISO 8601 time like 2024-05-01T12:00:00Z)") from None


def check_tables(tables: Optional[Iterable[str]]) -> List[str]:
    """The tables to export, in export order; StoreError naming an unknown one."""
    if not tables:
        return list(EXPORT_TABLES)
    wanted = [t.strip() for t in tables if t.strip()]
    unknown = [t for t in wanted if t not in EXPORT_TABLES]
    if unknown:
        raise StoreError(f"unknown table: {', '.join(unknown)} "
                         f"(choose from {', '.join(EXPORT_TABLES)})")
    return [t for t in EXPORT_TABLES if t in wanted]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_out(db_path: str, outputs: Sequence[Path]) -> None:
    """Refuse outputs that would overwrite the history (or its -wal/-shm), or are directories.

    ``outputs`` are every file the export writes, temporary ones included.
    """
    db = Path(db_path)
    guarded = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")]
    real = {os.path.realpath(g) for g in guarded}
    for out in outputs:
        if os.path.realpath(out) in real or any(_same_file(out, g) for g in guarded):
            raise CommandError(f"--out {out} would overwrite the history {db_path} "
                               "(write the export somewhere else)")
        if out.is_dir():
            raise CommandError(f"--out {out} is a directory (name a file in it, "
                               f"e.g. {out / 'edgewatch-export.db'})")
        if not out.parent.is_dir():
            raise CommandError(f"--out {out}: no directory {out.parent} (create it first)")


def _failed(what: str, db_path: str, out_path: str, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"{what}: {db_path} -> {out_path}: {exc} ({fault_fix(exc, out_path)})")


def export_snapshot(db_path: str, out_path: str, tables: Optional[Sequence[str]] = None,
                    since: Optional[float] = None, until: Optional[float] = None
                    ) -> Dict[str, Any]:
    """Copy the database consistently into ``out_path`` (replaced atomically).

    With ``tables``/``since``/``until`` the copy keeps only those rows of the exported tables
    (other tables are kept whole). Returns {"path", "bytes", "rows": {table: count}}.
    """
    keep = check_tables(tables)
    out = Path(out_path)
    tmp = out.with_name(out.name + ".tmp")
    check_out(db_path, [out, tmp, Path(f"{tmp}-journal")])
    src = connect_history(str(db_path))
    try:
        tmp.unlink(missing_ok=True)
        dst = sqlite3.connect(str(tmp))
        try:
            # pages=-1: one step under one read transaction, so the copy is consistent.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
            rows = prune_copy(dst, EXPORT_TABLES, keep, since, until)
            dst.commit()
            if len(keep) < len(EXPORT_TABLES) or since is not None or until is not None:
                dst.execute("VACUUM")
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            dst.close()
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise _failed("snapshot failed", db_path, out_path, exc) from None
    finally:
        src.close()
    if check != "ok":
        tmp.unlink(missing_ok=True)
        raise StoreError(f"snapshot failed integrity check: {out_path}: {check}")
    os.replace(tmp, out)
    return {"path": str(out), "bytes": out.stat().st_size, "rows": rows}


def export_rows(db_path: str, out_path: str, tables: Optional[Sequence[str]] = None,
                since: Optional[float] = None, until: Optional[float] = None,
                fmt: str = "jsonl") -> Dict[str, Any]:
    """Write rows as CSV (``<stem>_<table>.csv`` each) or JSON Lines, from one read snapshot.

    Returns {"paths": [...], "rows": {table: count}}.
    """
    if fmt not in ("csv", "jsonl"):
        raise CommandError(f"unknown format: {fmt!r} (choose from csv, jsonl)")
    chosen = check_tables(tables)
    out = Path(out_path)
    targets = [out] if fmt == "jsonl" else [out.with_name(f"{out.stem}_{t}.csv") for t in chosen]
    check_out(db_path, targets)
    conn = connect_history(str(db_path))
    rows: Dict[str, int] = {}
    paths: List[str] = []
    try:
        conn.execute("BEGIN")  # every table read from the same snapshot
        if fmt == "jsonl":
            paths.append(str(out))
            with open(out, "w", encoding="utf-8") as fh:
                for table in chosen:
                    rows[table] = 0
                    for row in select_rows(conn, table, since, until):
                        fh.write(json.dumps({"table": table, **dict(row)}) + "\n")
                        rows[table] += 1
        else:
            for table in chosen:
                path = out.with_name(f"{out.stem}_{table}.csv")
                paths.append(str(path))
                cur = select_rows(conn, table, since, until)
                with open(path, "w", encoding="utf-8", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow([d[0] for d in cur.description])
                    rows[table] = 0
                    for row in cur:
                        writer.writerow(["" if v is None else v for v in row])
                        rows[table] += 1
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _failed("export failed", db_path, out_path, exc) from None
    finally:
        conn.close()
    return {"paths": paths, "rows": rows}
