"""The central's database: numbered migrations, keys by device, and a writer that gives up.

Every test runs on SQLite and on PostgreSQL (``central_db``): one list of migrations, one set
of statements.
"""

from __future__ import annotations

import json
import re
import threading

import central_helpers
import pytest
from helpers import make_alert, wait

from agent.central import SCHEMA_VERSION, Central, CentralReader, CentralStore
from agent.central._postgres import translate
from agent.central.records import parse
from agent.central.store import _V1
from agent.errors import StoreError

central_factory = central_helpers.central_factory
central_db = central_helpers.central_db
CentralDb = central_helpers.CentralDb

P = "edgewatch/v1"


def test_a_first_schema_database_is_migrated_keeping_its_rows(central_db: CentralDb) -> None:
    db = central_db
    db.script(_V1)  # what the central wrote before migrations
    db.set_version(1)
    db.query("INSERT INTO alerts (id, device, fingerprint, seq, state, payload) "
             "VALUES ('a1', 'cam-a', 'fp', 3, 'firing', '{}')")
    db.query("INSERT INTO alert_events VALUES ('a1', 3, 'cam-a', 'firing', 1.0, '{}')")
    store = CentralStore(db.target)
    store.close()
    assert db.version() == SCHEMA_VERSION
    assert db.query("SELECT device, id, seq, state FROM alerts") == [("cam-a", "a1", 3,
                                                                      "firing")]
    assert db.query("SELECT device, id, seq FROM alert_events") == [("cam-a", "a1", 3)]
    CentralStore(db.target).close()  # a second open finds nothing to do
    assert db.version() == SCHEMA_VERSION


def test_a_newer_schema_is_refused(central_db: CentralDb) -> None:
    central_db.set_version(SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer than this edgewatch"):
        CentralStore(central_db.target)


def test_two_workers_starting_together_migrate_once(central_db: CentralDb) -> None:
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            CentralStore(central_db.target).close()
        except BaseException as exc:  # noqa: B036 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert central_db.version() == SCHEMA_VERSION


def test_times_keep_their_precision(central_db: CentralDb) -> None:
    # PostgreSQL's REAL is 4 bytes: a unix time stored in one loses its seconds.
    store = CentralStore(central_db.target)
    hb = parse(P, f"{P}/cam-a/heartbeat", json.dumps({"seq": 1}).encode())
    with store.transaction():
        store.put_heartbeat(hb, 1_780_000_123.25)  # type: ignore[arg-type]
    store.close()
    assert central_db.query("SELECT received FROM heartbeats") == [(1_780_000_123.25,)]


def test_same_alert_id_on_two_devices_are_two_alerts(central_db: CentralDb) -> None:
    store = CentralStore(central_db.target)
    for device in ("cam-a", "cam-b"):
        rec = parse(P, f"{P}/{device}/alerts",
                    json.dumps(make_alert(1, device=device, alert_id="same")).encode())
        with store.transaction():
            assert store.put_alert(rec, 1.0)  # type: ignore[arg-type]
    store.close()
    with CentralReader(central_db.target) as reader:
        assert [(r["device"], r["id"]) for r in reader.open_alerts()] == [
            ("cam-a", "same"), ("cam-b", "same")]


def test_a_writer_that_keeps_failing_makes_the_central_give_up(broker, central_db: CentralDb,
                                                                listeners) -> None:
    gave_up = threading.Event()
    reasons = []

    def on_fatal(reason: str) -> None:
        reasons.append(reason)
        gave_up.set()

    central = Central(broker.host, broker.port, central_db.target, max_consecutive=3,
                      on_fatal=on_fatal)
    central.start()
    try:
        assert central.subscribed.wait(5)
        central_db.query("DROP TABLE alert_events")  # someone breaks the database
        pub = listeners(broker, [])
        pub.wait_connected()
        pub.publish(f"{P}/cam-a/alerts", json.dumps(make_alert(1, device="cam-a")))
        assert gave_up.wait(20), "the central did not give up"
        assert "edgewatch-central-db failed 3 times in a row" in reasons[0]
        assert re.search(r"no such table: alert_events|relation \"alert_events\" does not "
                         "exist", reasons[0]), reasons[0]
        health = central.status()["threads"]["edgewatch-central-db"]
        assert health["failures"] >= 3 and health["critical"]
        assert central.fatal == reasons[0]
    finally:
        central.stop()


def test_status_reports_every_thread_and_is_saved_for_the_fleet_view(
        broker, central_db: CentralDb, central_factory) -> None:
    central = central_factory(broker, db=central_db.target, webhook="http://127.0.0.1:9/hook")
    names = set(central.status()["threads"])
    assert names == {"edgewatch-central-db", "edgewatch-central-overdue",
                     "edgewatch-central-webhook"}
    wait(lambda: '"connected":true' in "".join(
        v for (v,) in central_db.query("SELECT replace(value, ' ', '') FROM meta WHERE "
                                       "key='status'")),
        what="status row saved once connected")
    with CentralReader(central_db.target) as reader:
        saved = reader.central_status()
    assert saved is not None and saved["connected"] and set(saved["threads"]) == names


def test_history_older_than_the_retention_is_pruned(central_db: CentralDb) -> None:
    store = CentralStore(central_db.target)
    for seq, received in ((1, 100.0), (2, 200.0)):
        hb = parse(P, f"{P}/cam-a/heartbeat", json.dumps({"seq": seq}).encode())
        with store.transaction():
            store.put_heartbeat(hb, received)  # type: ignore[arg-type]
    with store.transaction():
        assert store.prune(150.0) == 1
    store.close()
    assert central_db.query("SELECT seq FROM heartbeats") == [(2,)]


@pytest.mark.parametrize(("sqlite", "postgresql"), [
    ("CREATE TABLE t (ts REAL, n INT)", "CREATE TABLE t (ts DOUBLE PRECISION, n INT)"),
    ("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)",
     "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v TEXT)"),
    ("INSERT OR IGNORE INTO t VALUES (?, '5%')",
     "INSERT INTO t VALUES (%s, '5%%') ON CONFLICT DO NOTHING"),
    ("SELECT real_name FROM t WHERE a=?", "SELECT real_name FROM t WHERE a=%s"),
])
def test_statements_are_translated_for_postgresql(sqlite: str, postgresql: str) -> None:
    assert translate(sqlite) == postgresql
