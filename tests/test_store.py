"""Tests of agent.store on real SQLite files: schema, batching, bounds, retention, faults."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from typing import Callable

import pytest

from agent import _writer as writer_mod
from agent import store as store_mod
from agent.errors import StoreError
from agent.store import SCHEMA_VERSION, Store, open_db
from agent.supervise import Supervisor

NOW = 1_700_000_000.0


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``cond`` until true or timeout; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def count(path, table: str) -> int:
    conn = store_mod.connect_readonly(str(path))
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def alert(i: int, state: str = "firing", severity: str = "warning", msg: str = "") -> dict:
    return {"schema": 1, "id": f"a{i:04d}", "fingerprint": f"{i:016x}", "seq": i,
            "transition": state, "state": state, "ts": NOW + i, "starts_at": NOW + i,
            "ends_at": None, "device": "dev", "camera": "cam0", "kind": "data_drift",
            "severity": severity, "feature": "brightness", "metric": "psi", "value": 0.3,
            "threshold": 0.2, "expected": {}, "observed": {}, "window": {},
            "model": {"path": "m", "sha256": "x"}, "message": msg or f"alert {i}",
            "acknowledged": False, "snoozed_until": None}


def outbox_msg(i: int, severity: str = "warning", ts: float = NOW) -> dict:
    return {"topic": f"edgewatch/dev/alerts/{i}", "payload": json.dumps({"i": i}), "qos": 1,
            "retain": False, "severity": severity, "ts": ts}


class Pause:
    """A job that holds the writer thread until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, db) -> None:
        self.started.set()
        assert self.release.wait(30)


def test_migrations_set_user_version_and_are_idempotent(tmp_path):
    path = tmp_path / "h.db"
    db = open_db(str(path))
    conn = db.conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert set(db.table_names()) >= {"windows", "events", "alerts", "controls", "heartbeats",
                                     "outbox", "reference", "meta", "commands"}
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"idx_windows_ts_start", "idx_events_ts", "idx_alerts_state",
            "idx_alerts_fingerprint", "idx_heartbeats_ts", "idx_outbox_id"} <= indexes
    conn.execute("INSERT INTO meta VALUES ('k', 'v')")
    conn.commit()
    db.close()
    db = open_db(str(path))  # reopen: no migration re-run, data kept
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.conn.execute("SELECT value FROM meta WHERE key='k'").fetchone()[0] == "v"
    db.conn.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="newer than this edgewatch"):
        open_db(str(path))


def test_open_db_missing_directory_is_a_clean_error(tmp_path):
    with pytest.raises(StoreError, match=r"create .*nope"):
        open_db(str(tmp_path / "nope" / "h.db"))


def test_rows_are_batched_until_flush_or_close(tmp_path):
    timed = tmp_path / "timed.db"
    started = time.monotonic()
    st = Store(str(timed), flush_interval_s=0.5, queue_size=64).start()
    try:
        for i in range(3):
            assert st.put("windows", {"ts_start": NOW + i, "ts_end": NOW + i + 1, "frames": 30,
                                      "camera": "cam0", "summary": {}})
        assert wait_for(lambda: count(timed, "windows") == 3)
        # One transaction per interval: nothing is visible before the first one is due.
        assert time.monotonic() - started >= 0.5
    finally:
        st.close()
    path = tmp_path / "h.db"
    st = Store(str(path), flush_interval_s=60.0, queue_size=64).start()
    try:
        for i in range(10):
            assert st.put("windows", {"ts_start": NOW + i, "ts_end": NOW + i + 1, "frames": 30,
                                      "camera": "cam0", "summary": {"brightness": {"mean": i}}})
    finally:
        st.close()  # long before the interval: closing flushes
    assert count(path, "windows") == 10
    with st.read() as conn:
        rows = conn.execute("SELECT * FROM windows WHERE ts_start BETWEEN ? AND ? "
                            "ORDER BY ts_start", (NOW + 5, NOW + 7)).fetchall()
    assert [r["ts_start"] for r in rows] == [NOW + 5, NOW + 6, NOW + 7]
    assert json.loads(rows[0]["summary"]) == {"brightness": {"mean": 5}}
    assert st.stats()["written"] == 10


def test_flush_interval_and_half_full_queue_trigger_writes(tmp_path):
    path = tmp_path / "h.db"
    with Store(str(path), flush_interval_s=0.2) as st:
        st.put("events", {"kind": "start", "message": "hello", "data": {"a": 1}})
        assert wait_for(lambda: count(path, "events") == 1, 5)
    with Store(str(path), flush_interval_s=60.0, queue_size=8) as st:
        for i in range(4):  # half of 8
            st.put("heartbeats", {"seq": i, "ts": NOW + i, "payload": {"seq": i}})
        assert wait_for(lambda: count(path, "heartbeats") == 4, 5)
        assert st.latest_heartbeat()["seq"] == 3


def test_put_validates_table_and_columns(tmp_path):
    st = Store(str(tmp_path / "h.db"))
    with pytest.raises(ValueError, match="windows"):
        st.put("alerts", {"id": "x"})
    with pytest.raises(ValueError, match="unknown columns for events"):
        st.put("events", {"ts": 1.0, "colour": "red"})
    with pytest.raises(ValueError, match="cannot store object"):
        st.put("events", {"ts": 1.0, "message": object()})


def test_bulk_overflow_is_counted_not_blocking(tmp_path):
    path = tmp_path / "h.db"
    pause = Pause()
    st = Store(str(path), queue_size=4, flush_interval_s=60.0).start()
    try:
        st.submit(pause)
        assert pause.started.wait(5)
        t0 = time.monotonic()
        results = [st.put("events", {"ts": NOW + i, "kind": "k"}) for i in range(10)]
        assert time.monotonic() - t0 < 0.5
        assert results == [True] * 4 + [False] * 6
        assert st.stats()["dropped"] == 6
    finally:
        pause.release.set()
        st.close()
    assert count(path, "events") == 4


def test_put_alert_is_never_dropped_when_queues_are_full(tmp_path):
    path = tmp_path / "h.db"
    pause = Pause()
    heard = []
    st = Store(str(path), queue_size=16, flush_interval_s=60.0).start()
    st.add_commit_listener(lambda: heard.append(1))
    try:
        st.submit(pause)
        assert pause.started.wait(5)
        t0 = time.monotonic()
        for i in range(40):  # the critical queue holds 16; the rest spill to memory
            st.put_alert(alert(i), [outbox_msg(i)])
        assert time.monotonic() - t0 < 40 * writer_mod.ALERT_WAIT_S + 1.0
        st.put_alert(alert(0, state="resolved"), [])  # a later transition of alert 0
        assert st.stats()["alerts_spilled"] >= 24
    finally:
        pause.release.set()
        st.close()
    assert count(path, "alerts") == 40
    assert count(path, "outbox") == 40
    assert heard
    with st.read() as conn:
        row = conn.execute("SELECT * FROM alerts WHERE id = 'a0000'").fetchone()
        assert row["state"] == "resolved"  # order kept: the later transition wins
        assert json.loads(row["payload"])["transition"] == "resolved"
    assert [r["id"] for r in st.open_alert_records()][:2] == ["a0001", "a0002"]


def test_submit_runs_in_writer_thread_and_reports_errors(tmp_path):
    path = tmp_path / "h.db"
    with Store(str(path)) as st:
        name = st.submit(lambda db: threading.current_thread().name).result(5)
        assert name == "edgewatch-store"

        def bad(db):
            db.conn.execute("INSERT INTO meta VALUES ('x', '1')")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            st.submit(bad).result(5)
        st.submit(lambda db: db.conn.execute(
            "INSERT INTO controls VALUES ('snooze', 'f1', 5.0, NULL)")).result(5)
    with st.read() as conn:
        assert conn.execute("SELECT count(*) FROM meta WHERE key='x'").fetchone()[0] == 0
        assert conn.execute("SELECT until FROM controls").fetchone()[0] == 5.0
    st.close()  # idempotent
    assert st.put("events", {"ts": 1.0}) is False
    with pytest.raises(StoreError, match="closed"):
        st.put_alert(alert(1), [])


def test_outbox_bound_drops_oldest_warnings_first_and_persists_count(tmp_path):
    path = tmp_path / "h.db"
    with Store(str(path), outbox_max=5, clock=lambda: NOW) as st:
        sev = ["critical", "warning"] * 5  # ids 1..10, criticals on odd ids
        for i, s in enumerate(sev):
            st.put_alert(alert(i, severity=s), [outbox_msg(i, s)])
        deleted = st.enforce_retention(NOW)
        assert deleted["outbox"] == 5
        with st.read() as conn:
            left = conn.execute("SELECT topic, severity FROM outbox ORDER BY id").fetchall()
        # All 5 criticals survive, plus no warning: 5 warnings were the 5 excess rows.
        assert [r["severity"] for r in left] == ["critical"] * 5
        assert st.stats()["outbox_dropped"] == 5
        for i in range(10, 13):  # now only criticals are left to drop: the oldest go
            st.put_alert(alert(i, severity="critical"), [outbox_msg(i, "critical")])
        st.enforce_retention(NOW)
        with st.read() as conn:
            topics = [r[0] for r in conn.execute("SELECT topic FROM outbox ORDER BY id")]
        assert topics == [f"edgewatch/dev/alerts/{i}" for i in (6, 8, 10, 11, 12)]
        assert count(path, "alerts") == 13  # alerts are never pruned by the outbox bound
    with Store(str(path), outbox_max=5, outbox_max_age_days=1.0, clock=lambda: NOW) as st:
        assert st.stats()["outbox_dropped"] == 8  # persisted in meta across restarts
        st.put_alert(alert(20, severity="critical"), [outbox_msg(20, "critical", NOW - 2 * 86400)])
        assert st.enforce_retention(NOW)["outbox"] == 1  # too old, whatever its severity
        assert st.stats()["outbox_depth"] == 5
        assert st.stats()["outbox_oldest_age_s"] == 0.0


def test_retention_by_age(tmp_path):
    path = tmp_path / "h.db"
    day = 86400.0
    with Store(str(path), retention_days=7.0, clock=lambda: NOW) as st:
        for age in (10, 8, 6, 1):
            t = NOW - age * day
            st.put("windows", {"ts_start": t, "ts_end": t + 10, "frames": 1, "camera": "c"})
            st.put("events", {"ts": t, "kind": "k"})
            st.put("heartbeats", {"seq": age, "ts": t})
        st.put_alert(alert(1) | {"ts": NOW - 30 * day}, [])
        st.submit(lambda db: None).result(5)  # the batch is written before the job runs
        deleted = st.enforce_retention(NOW)
        assert deleted == {"windows": 2, "events": 2, "heartbeats": 2, "outbox": 0}
        with st.read() as conn:
            assert [r["ts"] for r in conn.execute("SELECT ts FROM events ORDER BY ts")] == [
                NOW - 6 * day, NOW - day]
    assert count(path, "alerts") == 1  # alerts are kept


def test_retention_by_size_keeps_alerts_and_newest_rows(tmp_path):
    path = tmp_path / "h.db"
    limit_mb = 0.25
    blob = {f"f{k:02d}": {"mean": 0.123456789 * k, "std": 1.0} for k in range(40)}
    with Store(str(path), max_db_mb=limit_mb, queue_size=4096, clock=lambda: NOW) as st:
        for i in range(2000):
            assert st.put("windows", {"ts_start": NOW - 2000 + i, "ts_end": NOW, "frames": 1,
                                      "camera": "c", "summary": blob})
        for i in range(20):
            st.put_alert(alert(i), [outbox_msg(i)])
        st.submit(lambda db: None).result(10)
        before = st.submit(lambda db: db.execute("PRAGMA page_count").fetchone()[0]).result(5)
        deleted = st.enforce_retention(NOW)
        assert deleted["windows"] > 0

        def pages(db):
            c = db.conn
            return (c.execute("PRAGMA page_count").fetchone()[0],
                    c.execute("PRAGMA page_size").fetchone()[0])

        after, page_size = st.submit(pages).result(5)
        assert before * page_size > 4 * limit_mb * 2**20
        assert after * page_size <= limit_mb * 2**20  # incremental_vacuum gave pages back
        with st.read() as conn:
            newest = conn.execute("SELECT max(ts_start) FROM windows").fetchone()[0]
        assert newest == NOW - 1
    assert count(path, "alerts") == 20 and count(path, "outbox") == 20
    assert path.stat().st_size <= limit_mb * 2**20


def test_disk_full_keeps_alerts_in_memory_and_recovers(tmp_path, caplog):
    path = tmp_path / "h.db"
    caplog.set_level(logging.ERROR, logger="agent._writer")
    st = Store(str(path), queue_size=32, flush_interval_s=0.05, retry_interval_s=0.1).start()
    try:
        # SQLITE_FULL for real: cap the writer connection's file at its current size.
        st.submit(lambda db: db.execute("PRAGMA max_page_count=" + str(
            db.execute("PRAGMA page_count").fetchone()[0]))).result(5)
        big = "x" * 3000
        for i in range(60):
            st.put_alert(alert(i, msg=big), [outbox_msg(i)])
        assert wait_for(lambda: "full" in (st.stats()["last_error"] or ""), 5)
        assert "max_db_mb" in st.stats()["last_error"]
        errors_before = st.stats()["write_errors"]
        accepted = sum(st.put("events", {"ts": NOW + i, "kind": "k"}) for i in range(200))
        assert wait_for(lambda: st.stats()["write_errors"] >= errors_before + 2)  # retries fail
        stats = st.stats()
        assert stats["write_errors"] >= 2
        assert accepted < 200 and stats["dropped"] == 200 - accepted  # bulk bounded, counted
        assert count(path, "alerts") == 0
        failures = [r for r in caplog.records if "store write failed" in r.getMessage()]
        assert len(failures) == 1  # one line per fault per minute, with the fix
        assert "free space on" in failures[0].getMessage()
        st.submit(lambda db: db.execute("PRAGMA max_page_count=1073741823")).result(5)
        assert wait_for(lambda: count(path, "alerts") == 60, 5)
        assert st.stats()["last_error"] is None
    finally:
        st.close()
    assert count(path, "alerts") == 60  # no alert lost
    assert count(path, "outbox") == 60
    assert count(path, "events") == accepted


def test_read_works_concurrently_with_writes(tmp_path):
    path = tmp_path / "h.db"
    errors: list = []
    with Store(str(path), flush_interval_s=0.01, queue_size=256) as st:
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                if st.put("events", {"ts": NOW + i, "kind": "k"}):
                    i += 1
                else:
                    time.sleep(0.001)

        t = threading.Thread(target=writer)
        t.start()
        seen = []
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    with st.read() as conn:
                        seen.append(conn.execute("SELECT count(*) FROM events").fetchone()[0])
                        with pytest.raises(sqlite3.OperationalError, match="readonly"):
                            conn.execute("DELETE FROM events")
                except sqlite3.Error as exc:  # pragma: no cover - the assertion below reports it
                    errors.append(exc)
        finally:
            stop.set()
            t.join()
    assert not errors
    assert seen == sorted(seen) and seen[-1] > seen[0]


def test_named_methods_write_through_the_writer_and_read_back(tmp_path):
    """Every read and write the agent does is a named Store method."""
    path = tmp_path / "h.db"
    with Store(str(path), clock=lambda: NOW) as st:
        assert st.load_reference("abc", 2) is None
        st.save_reference(ts=NOW, model_sha256="abc", origin="warmup", blob=b"\x00\x01",
                          features_version=2).result(5)
        st.save_reference(ts=NOW, model_sha256="abc", origin="warmup", blob=b"\x02",
                          features_version=1).result(5)
        assert st.load_reference("abc", 2) == b"\x00\x01"
        assert st.load_reference("other", 2) is None
        for until in (5.0, 9.0):
            st.set_control("snooze", "f1", until, None)
        st.set_control("disable", "brightness", None, 1.0)
        st.set_control("disable", "brightness", None, None).result(5)  # both None: deleted
        assert st.controls() == [{"kind": "snooze", "target": "f1", "until": 9.0, "value": None}]
        for i in range(3):
            st.put_alert(alert(i), [outbox_msg(i)])
        st.put_alert(alert(1, state="resolved"), [])
        st.put("heartbeats", {"seq": 7, "ts": NOW, "payload": {"seq": 7}})
        st.submit(lambda db: None).result(5)  # queued rows are written before the job
        assert [a["id"] for a in st.open_alert_records()] == ["a0000", "a0002"]
        assert st.max_alert_seq() == 2
        assert [a["id"] for a in st.alerts(state="firing")] == ["a0002", "a0000"]
        assert st.alerts(limit=1)[0]["payload"]["transition"] == "firing"
        assert st.firing_alert_ids("a000") == ["a0000", "a0002"]
        assert st.find_firing_alert("0000000000000002")["id"] == "a0002"  # by fingerprint
        assert st.find_firing_alert("a0001") is None  # resolved
        rows = st.outbox_after(0, 2)
        assert [r.topic for r in rows] == ["edgewatch/dev/alerts/0", "edgewatch/dev/alerts/1"]
        st.delete_outbox([r.id for r in rows]).result(5)
        assert [r.topic for r in st.outbox_after(0, 10)] == ["edgewatch/dev/alerts/2"]
        assert st.latest_heartbeat() == {"seq": 7, "ts": NOW, "payload": {"seq": 7}}
        st.record_command("ack", {"alert": "a0000"}, {"ok": True}).result(5)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT verb, result FROM commands").fetchall() == [("ack", '{"ok":true}')]


def test_alert_transactions_are_fully_synced_and_bulk_is_not(tmp_path):
    """A committed alert survives a power cut; windows and heartbeats spare the flash."""
    seen = []
    with Store(str(tmp_path / "h.db"), flush_interval_s=0.05) as st:
        st.before_commit = lambda conn, label: seen.append(
            (label, conn.execute("PRAGMA synchronous").fetchone()[0]))
        st.put("heartbeats", {"seq": 1, "ts": NOW, "payload": {}})
        assert wait_for(lambda: ("bulk", 1) in seen)
        st.put_alert(alert(1), [outbox_msg(1)])
        st.set_control("ack", "fp", None, 1.0).result(5)
        st.put("windows", {"ts_start": NOW, "ts_end": NOW + 1, "frames": 1, "camera": "c"})
        st.submit(lambda db: None).result(5)
        assert wait_for(lambda: seen.count(("bulk", 1)) >= 2)
    full, normal = 2, 1  # SQLite's values of PRAGMA synchronous
    assert ("alerts", full) in seen and ("job", full) in seen  # the alert, the control
    assert {s for label, s in seen if label == "bulk"} == {normal}
    assert ("job", normal) in seen  # a plain job


def test_a_failing_writer_is_fatal_but_a_full_disk_is_not(tmp_path):
    """Failures other than a full disk count toward the supervisor's give-up."""
    fatal = []
    sup = Supervisor(max_consecutive=3, on_fatal=fatal.append)
    st = Store(str(tmp_path / "h.db"), flush_interval_s=0.01, retry_interval_s=0.01).start(sup)
    try:
        st.submit(lambda db: db.execute("PRAGMA max_page_count=" + str(
            db.execute("PRAGMA page_count").fetchone()[0]))).result(5)
        for i in range(30):
            st.put_alert(alert(i, msg="x" * 3000), [])
        assert wait_for(lambda: st.stats()["write_errors"] >= 5)
        assert fatal == [] and sup.health()["edgewatch-store"]["failures"] == 0  # full: retried
        st.submit(lambda db: db.execute("PRAGMA max_page_count=1073741823")).result(5)
        assert wait_for(lambda: count(tmp_path / "h.db", "alerts") == 30)
        st.submit(lambda db: db.execute("PRAGMA query_only=1")).result(5)  # writes now fail
        st.put_alert(alert(99), [])
        assert wait_for(lambda: fatal, 10)
        health = sup.health()["edgewatch-store"]
        assert health["critical"] and health["consecutive"] >= 3
        assert "readonly" in health["last_error"] and "free space" not in health["last_error"]
        assert "edgewatch-store failed 3 times in a row" in fatal[0]
    finally:
        sup.stop()
        st.close(timeout=1)


def test_close_after_the_supervisor_stopped_still_writes_everything(tmp_path):
    sup = Supervisor()
    st = Store(str(tmp_path / "h.db"), flush_interval_s=60.0).start(sup)
    for i in range(5):
        st.put("events", {"ts": NOW + i, "kind": "k"})
    st.put_alert(alert(1), [outbox_msg(1)])
    t0 = time.monotonic()
    sup.stop()  # the agent stopped its workers first
    st.close(timeout=30)
    assert time.monotonic() - t0 < 5  # drained at once, not after the timeout
    assert count(tmp_path / "h.db", "events") == 5 and count(tmp_path / "h.db", "alerts") == 1
