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
from typing import Dict, Iterable, List, Optional, Sequence

from .errors import CommandError, StoreError
from .store import TIME_COLUMNS, connect_readonly

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


def _condition(table: str, since: Optional[float], until: Optional[float]) -> tuple:
    """SQL condition on the table's time column ("" for none) and its parameters."""
    col = TIME_COLUMNS[table]
    clauses, params = [], []
    if since is not None:
        clauses.append(f"{col} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{col} <= ?")
        params.append(until)
    return " AND ".join(clauses), params


def export_snapshot(db_path: str, out_path: str, tables: Optional[Sequence[str]] = None,
                    since: Optional[float] = None, until: Optional[float] = None) -> Dict:
    """Copy the database consistently into ``out_path`` (replaced atomically).

    With ``tables``/``since``/``until`` the copy keeps only those rows of the exported tables
    (other tables are kept whole). Returns {"path", "bytes", "rows": {table: count}}.
    """
    keep = check_tables(tables)
    out = Path(out_path)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    src = connect_readonly(str(db_path))
    try:
        dst = sqlite3.connect(str(tmp))
        try:
            # pages=-1: one step under one read transaction, so the copy is consistent.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
            rows = {}
            for table in EXPORT_TABLES:
                if table not in keep:
                    dst.execute(f"DELETE FROM {table}")
                elif since is not None or until is not None:
                    cond, params = _condition(table, since, until)
                    dst.execute(f"DELETE FROM {table} WHERE NOT coalesce({cond}, 0)", params)
                if table in keep:
                    rows[table] = dst.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            dst.commit()
            if len(keep) < len(EXPORT_TABLES) or since is not None or until is not None:
                dst.execute("VACUUM")
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            dst.close()
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"snapshot failed: {db_path} -> {out_path}: {exc} "
                         "(check free space where the snapshot is written)") from exc
    finally:
        src.close()
    if check != "ok":
        tmp.unlink(missing_ok=True)
        raise StoreError(f"snapshot failed integrity check: {out_path}: {check}")
    os.replace(tmp, out)
    return {"path": str(out), "bytes": out.stat().st_size, "rows": rows}


def export_rows(db_path: str, out_path: str, tables: Optional[Sequence[str]] = None,
                since: Optional[float] = None, until: Optional[float] = None,
                fmt: str = "jsonl") -> Dict:
    """Write rows as CSV (``<stem>_<table>.csv`` each) or JSON Lines, from one read snapshot.

    Returns {"paths": [...], "rows": {table: count}}.
    """
    if fmt not in ("csv", "jsonl"):
        raise CommandError(f"unknown format: {fmt!r} (choose from csv, jsonl)")
    chosen = check_tables(tables)
    out = Path(out_path)
    conn = connect_readonly(str(db_path))
    rows: Dict[str, int] = {}
    paths: List[str] = []
    try:
        conn.execute("BEGIN")  # every table read from the same snapshot
        if fmt == "jsonl":
            paths.append(str(out))
            with open(out, "w", encoding="utf-8") as fh:
                for table in chosen:
                    rows[table] = 0
                    for row in _select(conn, table, since, until):
                        fh.write(json.dumps({"table": table, **dict(row)}) + "\n")
                        rows[table] += 1
        else:
            for table in chosen:
                path = out.with_name(f"{out.stem}_{table}.csv")
                paths.append(str(path))
                cur = _select(conn, table, since, until)
                with open(path, "w", encoding="utf-8", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow([d[0] for d in cur.description])
                    rows[table] = 0
                    for row in cur:
                        writer.writerow(["" if v is None else v for v in row])
                        rows[table] += 1
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"export failed: {db_path}: {exc}") from exc
    finally:
        conn.close()
    return {"paths": paths, "rows": rows}


def _select(conn: sqlite3.Connection, table: str, since: Optional[float],
            until: Optional[float]) -> sqlite3.Cursor:
    cond, params = _condition(table, since, until)
    where = f" WHERE {cond}" if cond else ""
    return conn.execute(f"SELECT * FROM {table}{where} ORDER BY {TIME_COLUMNS[table]}, rowid",
                        params)
