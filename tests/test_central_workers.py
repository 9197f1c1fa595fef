"""Several central workers on one PostgreSQL, and storms grouped into few webhook calls.

Real parts only: Mosquitto (MQTT 5 shared subscriptions, persistent sessions), a throwaway
PostgreSQL cluster, ``edgewatch central`` processes, a local webhook receiver.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import central_helpers
import pytest
from helpers import make_alert, wait

from agent.central import CentralStore

central_factory = central_helpers.central_factory
central_db = central_helpers.central_db
webhook = central_helpers.webhook
CentralDb = central_helpers.CentralDb

P = "edgewatch/v1"
# A persistent session's queue must hold a whole storm while its worker is down.
UNBOUNDED = ("max_queued_messages 0", "max_inflight_messages 100")


def start_worker(broker: Any, db: str, client_id: str, hook: str,
                 log: Path) -> subprocess.Popen[str]:
    """``edgewatch central`` as one worker of the share group ``ops``, logging to ``log``."""
    with open(log, "a") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "central", "--broker", broker.host, "--port",
             str(broker.port), "--db", db, "--share", "ops", "--client-id", client_id,
             "--webhook", hook, "--group-wait", "3s", "--group-interval", "0"],
            stdout=subprocess.DEVNULL, stderr=err, text=True, env=dict(os.environ))


def notified(bodies: List[Dict[str, Any]]) -> List[Tuple[str, str, int]]:
    """Every ``(device, id, seq)`` the webhook was told about, single or grouped bodies."""
    out = []
    for body in bodies:
        for note in body.get("notifications", [body]):
            alert = note.get("alert")
            if alert is not None:
                out.append((alert["device"], alert["id"], int(alert["seq"])))
    return out


@pytest.fixture
def workers() -> Iterator[List[subprocess.Popen[str]]]:
    procs: List[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_two_workers_one_killed_mid_storm_record_and_notify_each_transition_once(
        broker_factory, pg_url: str, webhook, listeners, workers, tmp_path: Path) -> None:
    broker = broker_factory(extra=UNBOUNDED)
    webhook.fail_first = 0
    CentralStore(pg_url).close()  # migrated before the workers race to it
    for name in ("w1", "w2"):
        workers.append(start_worker(broker, pg_url, name, webhook.url, tmp_path / "w.log"))
        broker.wait_suback(name)
    db = CentralDb("postgresql", pg_url)
    n = 300
    pub = listeners(broker, [])
    pub.wait_connected()
    import psycopg

    # The database stalls (a lock): the workers hold messages they have not committed.
    payloads = [json.dumps(make_alert(1, device=f"cam-{i:03d}", fingerprint=f"fp{i:014d}"))
                for i in range(n)]
    with psycopg.connect(pg_url) as blocker:
        blocker.execute("LOCK TABLE alert_events IN SHARE ROW EXCLUSIVE MODE")
        for i, payload in enumerate(payloads):
            pub.publish(f"{P}/cam-{i:03d}/alerts", payload)  # shared: one worker
        broker.wait_log(r"Sending PUBLISH to w1 \(d0, q1, r0", count=50)
        workers[0].send_signal(signal.SIGKILL)  # with messages received, none committed
        workers[0].wait(10)
        blocker.rollback()
    workers[0] = start_worker(broker, pg_url, "w1", webhook.url, tmp_path / "w.log")
    wait(lambda: db.query("SELECT count(*) FROM alert_events")[0][0] == n, timeout=90,
         what="every transition recorded")
    wait(lambda: len(notified(webhook.received)) >= n, timeout=90, what="every notification")
    events = db.query("SELECT device, id, seq, count(*) FROM alert_events "
                      "GROUP BY device, id, seq")
    assert len(events) == n and all(row[3] == 1 for row in events)  # 0 lost, 0 twice
    wait(lambda: db.query("SELECT count(*) FROM notifications")[0][0] == 0, timeout=30,
         what="nothing left to notify")
    # The same transitions as retained state: every worker gets each (plain subscription),
    # the database records and notifies none of them again.
    acks = {w: len(re.findall(f"Received PUBACK from {w} ", broker.log())) for w in ("w1", "w2")}
    for i, payload in enumerate(payloads):
        pub.publish(f"{P}/cam-{i:03d}/alerts/state/fp{i:014d}", payload, retain=True)
    for w, before in acks.items():  # PUBACK comes after the commit
        broker.wait_log(f"Received PUBACK from {w} ", count=before + n, timeout=60)
    assert db.query("SELECT count(*) FROM alert_events")[0][0] == n
    assert db.query("SELECT count(*) FROM notifications")[0][0] == 0
    sent = notified(webhook.received)
    assert len(sent) == n and len(set(sent)) == n  # 0 notified twice
    assert len(webhook.received) < n  # and grouped
    for proc in workers:
        assert proc.poll() is None, (tmp_path / "w.log").read_text()[-2000:]


def test_a_storm_of_devices_going_dark_is_one_call_per_group_window(
        broker, central_db: CentralDb, central_factory, webhook, listeners) -> None:
    webhook.fail_first = 0
    central = central_factory(broker, db=central_db.target, webhook=webhook.url,
                              group_wait_s=2.0, group_interval_s=600.0)
    pub = listeners(broker, [])
    pub.wait_connected()
    devices = [f"cam-{i:03d}" for i in range(300)]
    for device in devices:
        pub.publish(f"{P}/{device}/status", "online", retain=True)
    wait(lambda: len(central_db.query("SELECT device_id FROM devices")) == 300,
         what="300 devices online")
    for device in devices:  # dusk
        pub.publish(f"{P}/{device}/status", "offline", retain=True)
    wait(lambda: central.status()["went_offline"] == 300, timeout=30, what="300 offline")
    first = webhook.wait_for(1, timeout=30)[0]
    wait(lambda: central.status()["webhook_sent"] == 1, what="the first call recorded")
    assert first["group"] == "device/offline"
    listed: Set[str] = set(first["devices"])
    # The call is counted just before the commit that records it: wait for that commit.
    sent_at = wait(lambda: central_db.query("SELECT last_sent FROM notify_groups WHERE grp=?",
                                            "device/offline"), what="the call committed")[0][0]
    # Whatever missed the first call waits out the group interval: one call per window.
    waiting = central_db.query("SELECT device, next_at FROM notifications")
    assert listed | {d for d, _ in waiting} == set(devices)
    assert all(next_at >= sent_at + 600.0 for _, next_at in waiting)
    assert central.status()["webhook_sent"] == 1
    assert first["text"].startswith(f"[OFFLINE] {len(listed)} devices: cam-000")


def test_group_interval_holds_a_group_that_just_went_out(central_db: CentralDb) -> None:
    store = CentralStore(central_db.target)
    with store.transaction():
        store.delivered([], "alert/firing/data_drift", 100.0)
        store.enqueue("alert", "alert/firing/data_drift", "cam-a", {"text": "x"}, 110.0,
                      wait_s=5.0, interval_s=30.0)
        store.enqueue("alert", "alert/firing/other", "cam-a", {"text": "y"}, 110.0,
                      wait_s=5.0, interval_s=30.0)
    store.close()
    assert sorted(central_db.query("SELECT grp, next_at FROM notifications")) == [
        ("alert/firing/data_drift", 130.0), ("alert/firing/other", 115.0)]


def test_a_notification_is_claimed_by_one_worker(central_db: CentralDb) -> None:
    from agent.central import CentralReader

    first, second = CentralStore(central_db.target), CentralStore(central_db.target)
    with first.transaction():
        first.enqueue("device", "device/offline", "cam-a", {"text": "x"}, 100.0)
    with CentralReader(central_db.target) as reader:
        due = reader.due_notifications(200.0)
    with first.transaction():
        assert [n.id for n in first.claim(due, 300.0)] == [due[0].id]
    with second.transaction():
        assert second.claim(due, 300.0) == []  # it read the same row: too late
    first.close()
    second.close()


def test_grouping_keys_in_the_central_config() -> None:
    from agent.central.config import central_config_from_dict
    from agent.errors import ConfigError

    cfg = central_config_from_dict({"central": {"group_interval_s": 120, "group_by": ["kind"]}},
                                   "c.toml")
    assert (cfg.central.group_interval_s, cfg.central.group_by) == (120.0, ("kind",))
    with pytest.raises(ConfigError, match=r"c.toml: central.group_by: 'colour' is not a label "
                                          r"to group by \(valid: transition, kind"):
        central_config_from_dict({"central": {"group_by": ["colour"]}}, "c.toml")
