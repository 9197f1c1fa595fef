"""The operator side against a real Mosquitto: devices, alerts, dedup, offline, webhook, CLI."""

from __future__ import annotations

import json
import time
from functools import partial

import central_helpers
import pytest
from central_helpers import heartbeat, query
from helpers import (
    DictControl,
    kill9,
    link_config,
    make_alert,
    outbox_depth,
    put_alerts,
    start_link_process,
    wait,
)

from agent.central import CentralReader, fleet_rows, open_alerts, webhook_body
from agent.cli import main
from agent.commands import handle_command
from agent.mqtt import MqttLink
from agent.store import Store

central_factory = central_helpers.central_factory
webhook = central_helpers.webhook


@pytest.mark.integration
def test_two_devices_one_killed_shows_offline(broker, tmp_path, central_factory,
                                              capsys) -> None:
    central_factory(broker)
    db = tmp_path / "central.db"
    store = Store(str(tmp_path / "devA.db"), flush_interval_s=0.2).start()
    link = MqttLink(link_config(broker, device="devA"), store)
    proc = start_link_process(tmp_path, broker, device="devB", keepalive=2)
    try:
        link.start()
        wait(lambda: link.connected, what="devA connected")
        link.publish_heartbeat(heartbeat("devA", 1))
        put_alerts(store, [make_alert(1, device="devA")], device="devA")
        wait(lambda: query(db, "SELECT device_id, online FROM devices ORDER BY 1")
             == [("devA", 1), ("devB", 1)], what="both devices online")
        kill9(proc)
        wait(lambda: query(db, "SELECT online, reason FROM devices WHERE device_id='devB'")
             == [(0, "last will or clean shutdown")], what="devB offline by its last will")
        wait(lambda: len(query(db, "SELECT * FROM alerts")) == 1, what="devA's alert stored")
        with CentralReader(str(db)) as reader:
            rows = {r["device"]: r for r in fleet_rows(reader, time.time())}
        assert rows["devA"]["online"] and not rows["devB"]["online"]
        assert rows["devA"]["fps"] == 14.5 and rows["devA"]["temperature_c"] == 61.0
        assert rows["devA"]["open_alerts"] == 1 and rows["devB"]["heartbeat_age_s"] is None
        assert main(["fleet", "--db", str(db)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split()[:4] == ["DEVICE", "STATE", "SINCE", "HEARTBEAT"]
        assert out[1].split()[:2] == ["devA", "online"] and "14.5" in out[1] and "61C" in out[1]
        assert out[2].split()[:2] == ["devB", "offline"]
        assert "last will or clean shutdown" in out[2]
        assert main(["fleet", "--db", str(db), "alerts"]) == 0
        out = capsys.readouterr().out
        assert "devA" in out and "a0001" in out and "brightness drifted #1" in out
    finally:
        if proc.poll() is None:
            kill9(proc)
        link.close()
        store.close()


def test_duplicates_stored_once_and_state_kept_current(broker, tmp_path, central_factory,
                                                       listeners) -> None:
    central = central_factory(broker)
    db = tmp_path / "central.db"
    pub = listeners(broker, [])
    pub.wait_connected()
    firing, resolved = make_alert(1), make_alert(2, state="resolved", alert_id="a0001")
    for record in (firing, firing, resolved, resolved, firing):  # QoS 1 redelivery, late copy
        pub.publish("edgewatch/v1/dev1/alerts", json.dumps(record))
    pub.publish("edgewatch/v1/dev1/heartbeat", json.dumps(heartbeat("dev1", 5)))
    pub.publish("edgewatch/v1/dev1/heartbeat", json.dumps(heartbeat("dev1", 5)))
    pub.publish("edgewatch/v1/dev1/alerts", b"{broken")
    wait(lambda: central.status()["messages"] >= 8, what="all messages handled")
    assert query(db, "SELECT id, seq, state FROM alerts") == [("a0001", 2, "resolved")]
    assert query(db, "SELECT device, id, seq FROM alert_events ORDER BY seq") == [
        ("dev1", "a0001", 1), ("dev1", "a0001", 2)]
    assert query(db, "SELECT device, seq FROM heartbeats") == [("dev1", 5)]
    status = central.status()
    assert (status["alerts"], status["alert_duplicates"], status["bad_messages"]) == (2, 3, 1)
    assert status["bad"] == {"not_json": 1}
    with CentralReader(str(db)) as reader:
        assert open_alerts(reader) == []


def test_cleared_retained_state_resolves_a_missed_alert(broker, tmp_path, central_factory,
                                                        listeners) -> None:
    central = central_factory(broker)
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/dev1/alerts/state/00aa11bb22cc33dd", json.dumps(make_alert(1)),
                retain=True)
    wait(lambda: central.status()["alerts"] == 1, what="state stored")
    pub.publish("edgewatch/v1/dev1/alerts/state/00aa11bb22cc33dd", b"", retain=True)
    db = tmp_path / "central.db"
    wait(lambda: query(db, "SELECT state FROM alerts") == [("resolved",)], what="resolved")


def test_overdue_heartbeat_marks_device_offline(broker, tmp_path, central_factory,
                                                listeners) -> None:
    central_factory(broker, offline_after=0.8)
    db = tmp_path / "central.db"
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/dev9/heartbeat", json.dumps(heartbeat("dev9", 1)))
    wait(lambda: query(db, "SELECT online FROM devices") == [(1,)], what="online")
    wait(lambda: query(db, "SELECT online FROM devices") == [(0,)], timeout=5,
         what="offline once the heartbeat is overdue")
    assert query(db, "SELECT reason FROM devices")[0][0] == "heartbeat overdue (> 1 s)"
    pub.publish("edgewatch/v1/dev9/heartbeat", json.dumps(heartbeat("dev9", 2)))
    wait(lambda: query(db, "SELECT online FROM devices") == [(1,)], what="back online")


@pytest.mark.integration
def test_webhook_receives_alert_after_a_retry(broker, tmp_path, central_factory,
                                              webhook) -> None:
    central = central_factory(broker, webhook=webhook.url)
    store = Store(str(tmp_path / "dev1.db"), flush_interval_s=0.2).start()
    link = MqttLink(link_config(broker), store)
    try:
        link.start()
        put_alerts(store, [make_alert(1)])
        wait(lambda: len(webhook.received) == 1, timeout=10, what="webhook delivery")
        body = webhook.received[0]
        assert body == webhook_body(make_alert(1))
        assert body["text"] == "[WARNING] dev1/cam0 firing: brightness drifted #1"
        assert webhook.attempts == 2  # the first POST got HTTP 500 and was retried
        wait(lambda: outbox_depth(store) == 0, what="outbox drained")
        # A marker alert after it: once its webhook is in, the duplicate would have been too.
        put_alerts(store, [make_alert(2)])
        wait(lambda: len(webhook.received) >= 2, timeout=10, what="marker webhook")
        # The retained-state copy of alert 1 is a duplicate: no webhook of its own.
        assert webhook.received == [webhook_body(make_alert(1)), webhook_body(make_alert(2))]
        # The hook has the body before the central has its answer: wait for the count.
        wait(lambda: central.status()["webhook_sent"] == 2, what="both calls counted")
    finally:
        link.close()
        store.close()


def test_shared_subscription_mqtt5(broker, tmp_path, central_factory, listeners) -> None:
    central = central_factory(broker, share="ops")
    shared = [s for s in central.subscriptions() if s.startswith("$share/ops/edgewatch/v1/+/")]
    # Retained topics stay plain: brokers do not deliver retained messages through $share.
    assert sorted(set(central.subscriptions()) - set(shared)) == [
        "edgewatch/v1/+/alerts/state/#", "edgewatch/v1/+/status"]
    assert len(shared) == 3
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/dev1/alerts", json.dumps(make_alert(1)))
    wait(lambda: central.status()["alerts"] == 1, what="alert via $share")


@pytest.mark.integration
def test_fleet_ack_and_snooze_round_trip(broker, tmp_path, capsys) -> None:
    api = DictControl()
    store = Store(str(tmp_path / "dev1.db"), flush_interval_s=0.2).start()
    link = MqttLink(link_config(broker), store, command_handler=partial(handle_command, api=api))
    try:
        link.start()
        wait(lambda: link.connected, what="device connected")
        broker.wait_suback("dev1")  # the link's cmd/+ subscription
        common = ["--broker", broker.host, "--port", str(broker.port), "--timeout", "5"]
        assert main(["fleet", "ack", "dev1", "a1", "--json", *common]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["ok"] and answer["result"] == {"alert": "a1", "acknowledged": True}
        assert main(["fleet", "snooze", "dev1", "a1", "--for", "30m", "--json", *common]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["ok"] and answer["result"]["until"] == pytest.approx(
            time.time() + 1800, abs=10)
        assert main(["fleet", "snooze", "dev1", "a1", "--duration", "1h", *common]) == 0
        assert capsys.readouterr().out.startswith("dev1: ok: target a1; until ")
        assert main(["fleet", "rebaseline", "dev1", *common]) == 0
        assert api.rebaselines == 1 and "rebaseline started" in capsys.readouterr().out
        assert main(["fleet", "set", "dev1", "brightness", "0.4", "--by", "ops", *common]) == 0
        assert main(["fleet", "disable", "dev1", "blur", *common]) == 0
        assert main(["fleet", "enable", "dev1", "blur", *common]) == 0
        capsys.readouterr()
        assert api.thresholds == {("brightness", None): 0.4} and not api.disabled
        assert main(["fleet", "ack", "dev1", "nope", *common]) == 7
        assert capsys.readouterr().err.strip() == (
            "edgewatch: error: dev1 refused ack: unknown alert: nope")
        assert main(["fleet", "ack", "ghost", "a1", "--broker", broker.host, "--port",
                     str(broker.port), "--timeout", "1"]) == 7
        assert "no result from ghost within 1 s" in capsys.readouterr().err
    finally:
        link.close()
        store.close()


def test_fleet_without_database_is_a_clean_error(tmp_path, capsys) -> None:
    assert main(["fleet", "--db", str(tmp_path / "none.db")]) == 5
    assert "central database not found" in capsys.readouterr().err


def test_ack_and_snooze_in_the_retained_state_show_in_fleet_alerts(
        broker, tmp_path, central_factory, listeners, capsys) -> None:
    central = central_factory(broker)
    db = tmp_path / "central.db"
    pub = listeners(broker, [])
    pub.wait_connected()
    firing = make_alert(1)
    topic = f"edgewatch/v1/dev1/alerts/state/{firing['fingerprint']}"
    pub.publish(topic, json.dumps(firing), retain=True)
    until = time.time() + 3600
    pub.publish(topic, json.dumps({**firing, "acknowledged": True, "snoozed_until": until}),
                retain=True)
    wait(lambda: query(db, "SELECT acknowledged, snoozed_until FROM alerts") == [(1, until)],
         what="ack and snooze recorded")
    assert central.status()["alerts"] == 1  # one transition, its state updated
    assert main(["fleet", "alerts", "--db", str(db)]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert " yes " in line and time.strftime("%Y-%m-%d", time.localtime(until)) in line
    # Who did it travels in the retained state and shows in fleet alerts.
    pub.publish(topic, json.dumps({**firing, "acknowledged": True, "snoozed_until": until,
                                   "acknowledged_by": "ops@desk", "acknowledged_at": until - 60,
                                   "snoozed_by": "night@shift"}), retain=True)
    wait(lambda: "ops@desk" in query(db, "SELECT payload FROM alerts")[0][0],
         what="who acknowledged recorded")
    assert main(["fleet", "alerts", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "ops@desk" in out and "by night@shift" in out and firing["id"][:12] in out
    assert main(["fleet", "alerts", "--db", str(db), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["acknowledged_by"], row["snoozed_by"]) == ("ops@desk", "night@shift")
    # A device-supplied name is bounded like every field the central keeps.
    pub.publish(topic, json.dumps({**firing, "acknowledged_by": "x" * 5000}), retain=True)
    wait(lambda: central.status()["bad"].get("bad_field", 0) >= 1, what="long name refused")
