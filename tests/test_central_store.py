"""The central's database: numbered migrations, keys by device, and a writer that gives up."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import central_helpers
import pytest
from central_helpers import query
from helpers import make_alert, wait

from agent.central import SCHEMA_VERSION, Central, CentralReader, CentralStore
from agent.central.records import parse
from agent.central.store import _V1
from agent.errors import StoreError

central_factory = central_helpers.central_factory

P = "edgewatch/v1"


def test_a_first_schema_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # what the central wrote before migrations
        conn.executescript(_V1)
        conn.execute("PRAGMA user_version=1")
        conn.execute("INSERT INTO alerts (id, device, fingerprint, seq, state, payload) "
                     "VALUES ('a1', 'cam-a', 'fp', 3, 'firing', '{}')")
        conn.execute("INSERT INTO alert_events VALUES ('a1', 3, 'cam-a', 'firing', 1.0, '{}')")
    store = CentralStore(str(db))
    store.close()
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(db, "SELECT device, id, seq, state FROM alerts") == [("cam-a", "a1", 3,
                                                                       "firing")]
    assert query(db, "SELECT device, id, seq FROM alert_events") == [("cam-a", "a1", 3)]
    CentralStore(str(db)).close()  # a second open finds nothing to do
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this edgewatch"):
        CentralStore(str(db))


def test_same_alert_id_on_two_devices_are_two_alerts(tmp_path: Path) -> None:
    store = CentralStore(str(tmp_path / "c.db"))
    for device in ("cam-a", "cam-b"):
        rec = parse(P, f"{P}/{device}/alerts",
                    json.dumps(make_alert(1, device=device, alert_id="same")).encode())
        with store.transaction():
            assert store.put_alert(rec, 1.0)  # type: ignore[arg-type]
    store.close()
    with CentralReader(str(tmp_path / "c.db")) as reader:
        assert [(r["device"], r["id"]) for r in reader.open_alerts()] == [
            ("cam-a", "same"), ("cam-b", "same")]


def test_a_writer_that_keeps_failing_makes_the_central_give_up(broker, tmp_path: Path,
                                                                listeners) -> None:
    gave_up = threading.Event()
    reasons = []

    def on_fatal(reason: str) -> None:
        reasons.append(reason)
        gave_up.set()

    db = tmp_path / "central.db"
    central = Central(broker.host, broker.port, str(db), max_consecutive=3, on_fatal=on_fatal)
    central.start()
    try:
        assert central.subscribed.wait(5)
        with sqlite3.connect(db) as conn:  # someone breaks the database under the central
            conn.execute("DROP TABLE alert_events")
        pub = listeners(broker, [])
        pub.wait_connected()
        pub.publish(f"{P}/cam-a/alerts", json.dumps(make_alert(1, device="cam-a")))
        assert gave_up.wait(20), "the central did not give up"
        assert "edgewatch-central-db failed 3 times in a row" in reasons[0]
        assert "no such table: alert_events" in reasons[0]
        health = central.status()["threads"]["edgewatch-central-db"]
        assert health["failures"] >= 3 and health["critical"]
        assert central.fatal == reasons[0]
    finally:
        central.stop()


def test_status_reports_every_thread_and_is_saved_for_the_fleet_view(
        broker, tmp_path: Path, central_factory) -> None:
    central = central_factory(broker, webhook="http://127.0.0.1:9/hook")
    names = set(central.status()["threads"])
    assert names == {"edgewatch-central-db", "edgewatch-central-overdue",
                     "edgewatch-central-webhook"}
    db = tmp_path / "central.db"
    wait(lambda: '"connected":true' in "".join(
        v for (v,) in query(db, "SELECT replace(value, ' ', '') FROM meta WHERE key='status'")),
        what="status row saved once connected")
    with CentralReader(str(db)) as reader:
        saved = reader.central_status()
    assert saved is not None and saved["connected"] and set(saved["threads"]) == names


def test_history_older_than_the_retention_is_pruned(tmp_path: Path) -> None:
    store = CentralStore(str(tmp_path / "c.db"))
    for seq, received in ((1, 100.0), (2, 200.0)):
        hb = parse(P, f"{P}/cam-a/heartbeat", json.dumps({"seq": seq}).encode())
        with store.transaction():
            store.put_heartbeat(hb, received)  # type: ignore[arg-type]
    with store.transaction():
        assert store.prune(150.0) == 1
    store.close()
    assert query(tmp_path / "c.db", "SELECT seq FROM heartbeats") == [(2,)]
