"""Tests of agent.export and ``edgewatch export`` on real SQLite files."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone

import pytest

from agent.cli import main
from agent.errors import CommandError, StoreError
from agent.export import EXPORT_TABLES, export_rows, export_snapshot, parse_time
from agent.store import SCHEMA_VERSION, Store, open_db

NOW = 1_700_000_000.0

WRITER = textwrap.dedent("""
    import os, sqlite3, sys
    sys.path.insert(0, sys.argv[2])
    from agent.store import open_db
    conn = open_db(sys.argv[1]).conn
    # Writes until the test has taken its snapshot (the flag file), then 10 batches more.
    after = None
    for batch in range(100000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events (ts, kind, message, data) VALUES (?, ?, ?, ?)",
                         [(batch + i / 100, "tick", "m" * 200, "{}") for i in range(100)])
        conn.execute("COMMIT")
        print(conn.execute("SELECT max(id) FROM events").fetchone()[0], flush=True)
        if after is None and os.path.exists(sys.argv[3]):
            after = batch
        if after is not None and batch >= after + 10:
            break
""")


@pytest.fixture()
def history(tmp_path):
    """A history with 10 rows per table at NOW+0..NOW+9, awkward text included."""
    path = tmp_path / "h.db"
    with Store(str(path), clock=lambda: NOW) as st:
        for i in range(10):
            t = NOW + i
            st.put("windows", {"ts_start": t, "ts_end": t + 0.5, "frames": i, "camera": "cam,0",
                               "summary": {"brightness": {"mean": i / 3, "std": None}}})
            st.put("events", {"ts": t, "kind": "note", "message": f'line1\nline2, "q" é {i}',
                              "data": None if i % 2 else {"i": i}})
            st.put("heartbeats", {"seq": i, "ts": t, "payload": {"cpu": 0.1 * i}})
            record = {"id": f"a{i}", "fingerprint": "f" * 16, "ts": t, "state": "firing",
                      "severity": "warning", "value": 1 / 7, "threshold": 0.2, "message": "m"}
            st.put_alert(record, [{"topic": f"t/{i}", "payload": "{}", "qos": 1, "retain": 0,
                                   "severity": "warning", "ts": t}])
    return path


def db_rows(path, table):
    conn = sqlite3.connect(str(path))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


@pytest.mark.parametrize("text, expected", [
    ("30m", NOW - 1800), ("2h", NOW - 7200), ("7d", NOW - 7 * 86400), ("45s", NOW - 45),
    ("1.5h", NOW - 5400), ("1700000123", 1700000123.0), ("1700000123.5", 1700000123.5),
    ("2023-11-14T22:13:20Z", 1700000000.0), ("2023-11-14T23:13:20+01:00", 1700000000.0),
])
def test_parse_time(text, expected):
    assert parse_time(text, NOW) == expected


def test_parse_time_naive_iso_is_local_time():
    expected = datetime(2024, 5, 1, 12, 0).timestamp()
    assert parse_time("2024-05-01T12:00:00", NOW) == expected
    assert parse_time("2024-05-01 12:00", NOW) == expected


@pytest.mark.parametrize("bad", ["yesterday", "3x", "", "-2h"])
def test_parse_time_rejects_garbage(bad):
    with pytest.raises(CommandError, match="bad time"):
        parse_time(bad, NOW)


@pytest.mark.integration
def test_snapshot_while_another_process_writes(tmp_path):
    path = tmp_path / "live.db"
    open_db(str(path)).close()
    flag = tmp_path / "snapshot-taken"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(_repo_root()), str(flag)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed: list = []
    reader = threading.Thread(target=lambda: committed.extend(int(x) for x in proc.stdout))
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while (not committed or committed[-1] < 3000) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert committed and proc.poll() is None, "the writer should still be running"
        before = committed[-1]  # printed after its COMMIT, so surely in the snapshot
        result = export_snapshot(str(path), str(tmp_path / "snap.db"))
        during = proc.poll() is None
    finally:
        flag.touch()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(10)
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0, stderr
    assert during and committed[-1] > before  # the writer kept going past the snapshot
    snap = sqlite3.connect(result["path"])
    try:
        assert snap.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert snap.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        ids = snap.execute("SELECT count(*), max(id) FROM events WHERE id <= ?",
                           (before,)).fetchone()
        assert ids == (before, before)  # every row committed before the snapshot began
        total = snap.execute("SELECT count(*) FROM events").fetchone()[0]
        assert total % 100 == 0  # whole transactions only
        assert result["rows"]["events"] == total
        assert snap.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        snap.close()


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def test_csv_round_trip(history, tmp_path):
    out = tmp_path / "exp" / "dump.csv"
    out.parent.mkdir()
    result = export_rows(str(history), str(out), fmt="csv")
    assert result["rows"] == {t: 10 for t in EXPORT_TABLES}
    for table in EXPORT_TABLES:
        path = out.parent / f"dump_{table}.csv"
        assert str(path) in result["paths"]
        with open(path, newline="", encoding="utf-8") as fh:
            got = list(csv.DictReader(fh))
        want = db_rows(history, table)
        want.sort(key=lambda r: r["ts_start" if table == "windows" else "ts"])
        assert len(got) == len(want) == 10
        for g, w in zip(got, want):
            assert g == {k: "" if v is None else str(v) for k, v in w.items()}
            for k, v in w.items():
                if isinstance(v, float):
                    assert float(g[k]) == v  # floats survive exactly


def test_jsonl_round_trip_and_time_filter(history, tmp_path):
    out = tmp_path / "dump.jsonl"
    since = datetime.fromtimestamp(NOW + 3, tz=timezone.utc).isoformat()
    result = export_rows(str(history), str(out), tables=["events", "alerts"],
                         since=parse_time(since, NOW), until=NOW + 6, fmt="jsonl")
    assert result["rows"] == {"events": 4, "alerts": 4}
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [o["table"] for o in lines] == ["events"] * 4 + ["alerts"] * 4
    events = [{k: v for k, v in o.items() if k != "table"} for o in lines[:4]]
    assert events == [r for r in db_rows(history, "events") if NOW + 3 <= r["ts"] <= NOW + 6]
    assert events[0]["data"] is None and events[1]["data"] == '{"i":4}'


def test_snapshot_filters_prune_the_copy(history, tmp_path):
    out = tmp_path / "part.db"
    result = export_snapshot(str(history), str(out), tables=["windows"], since=NOW + 8)
    assert result["rows"] == {"windows": 2}
    conn = sqlite3.connect(str(out))
    try:
        assert [r[0] for r in conn.execute("SELECT ts_start FROM windows")] == [NOW + 8, NOW + 9]
        assert conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0
    finally:
        conn.close()


def test_unknown_table_and_missing_db_are_store_errors(history, tmp_path):
    with pytest.raises(StoreError, match="unknown table: frames"):
        export_rows(str(history), str(tmp_path / "x.jsonl"), tables=["events", "frames"])
    with pytest.raises(StoreError, match="database not found"):
        export_snapshot(str(tmp_path / "none.db"), str(tmp_path / "x.db"))
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "none.db").exists()


def test_cli_export(history, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    code = main(["export", "--db", str(history), "--out", str(out), "--format", "jsonl",
                 "--tables", "windows,heartbeats", "--since", str(NOW + 5), "--until",
                 "2023-11-14T22:13:27Z"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line == f"exported jsonl to {out}: windows=3 heartbeats=3"
    assert len(out.read_text().splitlines()) == 6

    snap = tmp_path / "cli.db"
    assert main(["export", "--db", str(history), "--out", str(snap)]) == 0
    assert "events=10" in capsys.readouterr().out
    assert len(db_rows(snap, "outbox")) == 10

    assert main(["export", "--db", str(history), "--out", str(out), "--tables", "nope"]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgewatch: error: unknown table: nope (choose from windows, events, alerts, "
                   "heartbeats, outbox)"]
    assert main(["export", "--db", str(tmp_path / "gone.db"), "--out", str(out)]) == 5
    assert "database not found" in capsys.readouterr().err
    assert main(["export", "--db", str(history), "--out", str(out), "--since", "soon"]) == 7


def test_cli_export_has_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--db", "--out", "--since", "--until", "--tables", "--format"):
        assert option in text
    assert "<stem>_<table>.csv" in text


@pytest.mark.parametrize("fmt", ["sqlite", "jsonl", "csv"])
@pytest.mark.parametrize("target", ["db", "wal", "shm", "symlink", "tmp"])
def test_export_never_overwrites_the_history(history, tmp_path, capsys, fmt, target):
    """Today --format jsonl truncates the history to 0 bytes and --since replaces it."""
    if target == "tmp":  # the history is named like the snapshot's temporary file
        history = history.rename(tmp_path / "snap.db.tmp")
    out = {"db": history, "wal": f"{history}-wal", "shm": f"{history}-shm",
           "symlink": tmp_path / "link.db", "tmp": tmp_path / "snap.db"}[target]
    if target == "symlink":
        out.symlink_to(history)
    if fmt == "csv" and target != "tmp":  # the csv files are <stem>_<table>.csv
        out = tmp_path / "h.csv"
        (tmp_path / "h_events.csv").symlink_to(history)
    st = Store(str(history), clock=lambda: NOW).start()  # -wal, -shm: as with an agent
    try:
        st.put("events", {"ts": NOW + 20, "kind": "late"})
        st.submit(lambda db: None).result(5)
        code = main(["export", "--db", str(history), "--out", str(out), "--format", fmt,
                     "--since", "1s"])
    finally:
        st.close()
    assert len(db_rows(history, "events")) == 11  # all there
    if fmt != "sqlite" and target == "tmp":
        assert code == 0  # only the snapshot writes a temporary file
        return
    assert code == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"would overwrite the history {history}" in err


@pytest.mark.parametrize("fmt", ["sqlite", "jsonl", "csv"])
def test_export_to_a_directory_is_one_line_and_leaves_nothing(history, tmp_path, capsys, fmt):
    out = tmp_path / "exports"
    out.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    target = out if fmt != "csv" else out / ".." / "exports"
    assert main(["export", "--db", str(history), "--out", str(target), "--format", fmt]) in (0, 7)
    err = capsys.readouterr().err
    if fmt == "csv":  # the files are exports_<table>.csv beside the directory: fine
        assert not err
        return
    assert err.count("\n") == 1 and "is a directory" in err and "name a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .tmp behind
    assert list(out.iterdir()) == []


def test_export_reads_the_store_path_from_config(history, tmp_path, capsys, write_config):
    cfg = write_config(tmp_path / "c.toml", store={"path": history})
    out = tmp_path / "fromcfg.db"
    assert main(["export", "--config", str(cfg), "--out", str(out)]) == 0
    assert "events=10" in capsys.readouterr().out
    assert len(db_rows(out, "events")) == 10
