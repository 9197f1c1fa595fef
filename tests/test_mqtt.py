"""The device's MQTT link against a real Mosquitto, with a real Store on tmp_path.

Listeners are real paho clients; nothing is mocked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from broker import make_password_file, make_tls_files
from helpers import (
    kill9,
    link_config,
    make_alert,
    outbox_depth,
    put_alerts,
    start_link_process,
    wait,
)

from agent.config import MqttConfig
from agent.errors import ConfigError
from agent.mqtt import MqttLink, alert_outbox_messages, topics
from agent.store import Store


@pytest.fixture
def store(tmp_path: Path):
    """A started real Store, closed at teardown."""
    s = Store(str(tmp_path / "agent.db"), flush_interval_s=0.2).start()
    yield s
    s.close()


# -- pure parts ---------------------------------------------------------------------------------

def test_topics_are_built_in_one_place() -> None:
    t = topics("edgewatch/v1", "cam-7")
    assert t.status == "edgewatch/v1/cam-7/status"
    assert t.heartbeat == "edgewatch/v1/cam-7/heartbeat"
    assert t.alerts == "edgewatch/v1/cam-7/alerts"
    assert t.alert_state("ff00") == "edgewatch/v1/cam-7/alerts/state/ff00"
    assert t.cmd == "edgewatch/v1/cam-7/cmd/+"
    assert t.cmd_result == "edgewatch/v1/cam-7/cmd/result"
    assert t.command("ack") == "edgewatch/v1/cam-7/cmd/ack"


def test_outbox_messages_firing_then_resolved_clears_retained_state() -> None:
    t = topics("edgewatch/v1", "dev1")
    firing = alert_outbox_messages(t, make_alert(1))
    assert [(m["topic"], m["qos"], m["retain"]) for m in firing] == [
        ("edgewatch/v1/dev1/alerts", 1, 0),
        ("edgewatch/v1/dev1/alerts/state/00aa11bb22cc33dd", 1, 1),
    ]
    assert json.loads(firing[0]["payload"]) == make_alert(1)
    assert json.loads(firing[1]["payload"])["state"] == "firing"
    resolved = alert_outbox_messages(t, make_alert(2, state="resolved"))
    assert json.loads(resolved[0]["payload"])["state"] == "resolved"
    assert resolved[1]["payload"] == "" and resolved[1]["retain"] == 1


@pytest.mark.parametrize("bad, key", [
    (dict(port=0), "port"),
    (dict(port="1883"), "port"),
    (dict(protocol="3"), "protocol"),
    (dict(device_id="a/b"), "device_id"),
    (dict(device_id="dev+"), "device_id"),
    (dict(topic_prefix="edgewatch/#"), "topic_prefix"),
    (dict(topic_prefix="/edgewatch"), "topic_prefix"),
    (dict(keepalive=0), "keepalive"),
    (dict(reconnect_min_s=10, reconnect_max_s=5), "reconnect_max_s"),
    (dict(password="x"), "username"),
    (dict(cert_file="c.pem"), "key_file"),
    (dict(tls_insecure=True), "tls_insecure"),
    (dict(tls=True, tls_insecure="yes"), "tls_insecure"),
    (dict(enabled="true"), "enabled"),
    (dict(max_inflight=0), "max_inflight"),
    (dict(enabled=True, tls=True, ca_file="/nonexistent/ca.crt"), "ca_file"),
])
def test_config_rejects_bad_values(bad: Dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"mqtt\.{key}"):
        MqttConfig(**{"device_id": "dev1", **bad})


def test_config_defaults() -> None:
    cfg = MqttConfig(device_id="dev1")
    assert (cfg.enabled, cfg.port, cfg.protocol, cfg.topic_prefix) == (
        False, 1883, "5", "edgewatch/v1")
    assert MqttConfig().device_id  # the hostname


# -- with a broker --------------------------------------------------------------------------------

def test_status_online_on_connect_offline_on_close(broker, store, listeners) -> None:
    listener = listeners(broker, ["edgewatch/v1/dev1/status"])
    listener.wait_connected()
    link = MqttLink(link_config(broker), store)
    t0 = time.monotonic()
    link.start()
    assert time.monotonic() - t0 < 0.5  # start never waits on the network
    listener.wait_for(lambda ms: [m.payload for m in ms] == [b"online"])
    assert listener.on("edgewatch/v1/dev1/status")[0].retain is False  # live delivery
    status = link.status()
    assert status["connected"] is True and status["connects"] == 1
    assert status["last_error"] is None and status["outbox_depth"] == 0
    link.close()
    listener.wait_for(lambda ms: [m.payload for m in ms] == [b"online", b"offline"])
    assert link.status()["connected"] is False
    # A late subscriber sees the retained offline.
    late = listeners(broker, ["edgewatch/v1/dev1/status"])
    msgs = late.wait_for(lambda ms: len(ms) >= 1)
    assert msgs[0].payload == b"offline" and msgs[0].retain


def test_heartbeat_published_when_connected_dropped_when_not(broker, store, listeners) -> None:
    listener = listeners(broker, ["edgewatch/v1/dev1/heartbeat"])
    listener.wait_connected()
    link = MqttLink(link_config(broker), store)
    assert link.publish_heartbeat({"seq": 0}) is False  # not started: dropped, counted
    link.start()
    wait(lambda: link.connected, what="link connected")
    assert link.publish_heartbeat({"schema": 1, "seq": 1, "interval_s": 30}) is True
    msgs = listener.wait_for(lambda ms: len(ms) == 1)
    assert json.loads(msgs[0].payload) == {"schema": 1, "seq": 1, "interval_s": 30}
    status = link.status()
    assert (status["heartbeats_sent"], status["heartbeats_dropped"]) == (1, 1)
    link.close()


def test_alerts_arrive_in_order_and_outbox_is_emptied(broker, store, listeners) -> None:
    listener = listeners(broker, ["edgewatch/v1/dev1/alerts", "edgewatch/v1/dev1/alerts/state/#"])
    listener.wait_connected()
    link = MqttLink(link_config(broker, max_inflight=5), store)
    link.start()
    records = [make_alert(i, fingerprint=f"{i % 3:016x}") for i in range(1, 41)]
    records.append(make_alert(41, state="resolved", fingerprint=f"{41 % 3:016x}"))
    put_alerts(store, records)
    listener.wait_for(lambda ms: len(ms) >= 2 * len(records))
    events = [json.loads(m.payload) for m in listener.on("edgewatch/v1/dev1/alerts")]
    assert events == records  # every payload exactly, in order
    states = [m for m in listener.messages if "/alerts/state/" in m.topic]
    assert states[-1].topic.endswith(f"{41 % 3:016x}") and states[-1].payload == b""
    wait(lambda: outbox_depth(store) == 0, what="outbox emptied after PUBACKs")
    assert link.status()["published"] == 2 * len(records)
    link.close()
    # Retained state: only the still-firing fingerprints remain on the broker.
    late = listeners(broker, ["edgewatch/v1/dev1/alerts/state/#"])
    late.wait_connected()
    # Retained messages come right after the SUBACK, so once a message published later has
    # arrived, every retained one has.
    late.publish("edgewatch/v1/dev1/alerts/state/marker", b"m")
    msgs = late.wait_for(lambda ms: any(m.topic.endswith("/marker") for m in ms))
    assert sorted(m.topic.rsplit("/", 1)[1] for m in msgs if m.retain) == [
        f"{0:016x}", f"{1:016x}"]


@pytest.mark.integration
def test_broker_outage_then_delivery_in_order(broker, store, listeners) -> None:
    listener = listeners(broker, ["edgewatch/v1/dev1/alerts"], client_id="ops-persistent",
                         persistent=True)
    listener.wait_connected()
    link = MqttLink(link_config(broker), store)
    link.start()
    wait(lambda: link.connected, what="link connected")
    put_alerts(store, [make_alert(1)])
    listener.wait_for(lambda ms: len(ms) == 1)
    wait(lambda: outbox_depth(store) == 0, what="first alert acked")
    broker.stop()
    wait(lambda: not link.connected, what="link sees the outage")
    assert link.status()["disconnects"] == 1
    records = [make_alert(i) for i in range(2, 52)]
    put_alerts(store, records)
    wait(lambda: outbox_depth(store) == 2 * len(records), what="outbox holds them")
    assert not link.connected  # kept while the broker is down
    broker.start()
    msgs = listener.wait_for(lambda ms: len(ms) >= 1 + len(records), timeout=20)
    seqs = [json.loads(m.payload)["seq"] for m in msgs]
    assert sorted(set(seqs)) == list(range(1, 52))  # none lost
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == list(range(1, 52))  # in order (QoS 1 may repeat one)
    wait(lambda: outbox_depth(store) == 0, what="outbox emptied after reconnect")
    status = link.status()
    assert status["connects"] == 2 and status["connected"]
    link.close()


@pytest.mark.integration
def test_last_will_offline_when_process_is_killed(broker, tmp_path, listeners) -> None:
    listener = listeners(broker, ["edgewatch/v1/dev1/status"])
    listener.wait_connected()
    proc = start_link_process(tmp_path, broker, keepalive=2)
    try:
        listener.wait_for(lambda ms: [m.payload for m in ms] == [b"online"])
        t0 = time.monotonic()
        kill9(proc)
        msgs = listener.wait_for(lambda ms: len(ms) == 2, timeout=10)
        assert msgs[1].payload == b"offline"
        assert time.monotonic() - t0 < 6  # 1.5 x keepalive, plus scheduling slack
    finally:
        if proc.poll() is None:
            kill9(proc)
    late = listeners(broker, ["edgewatch/v1/dev1/status"])
    assert late.wait_for(lambda ms: len(ms) == 1)[0].payload == b"offline"


@pytest.mark.integration
def test_crash_while_broker_down_then_restart_delivers_outbox(broker, tmp_path,
                                                              listeners) -> None:
    listener = listeners(broker, ["edgewatch/v1/dev1/alerts"], client_id="ops-persistent",
                         persistent=True)
    listener.wait_connected()
    broker.stop()
    proc = start_link_process(tmp_path, broker, first=1, last=31, need_connected=False,
                              expect_depth=60)
    kill9(proc)  # crashed with 30 alerts undelivered
    broker.start()
    store = Store(str(tmp_path / "dev1.db"), flush_interval_s=0.2).start()
    try:
        assert outbox_depth(store) == 60
        link = MqttLink(link_config(broker), store)
        link.start()
        msgs = listener.wait_for(lambda ms: len(ms) >= 30, timeout=20)
        seqs = list(dict.fromkeys(json.loads(m.payload)["seq"] for m in msgs))
        assert seqs == list(range(1, 31))
        wait(lambda: outbox_depth(store) == 0, what="outbox emptied")
        link.close()
    finally:
        store.close()


@pytest.mark.integration
def test_tls_password_and_acl(broker_factory, tmp_path, store, listeners, caplog) -> None:
    tls = make_tls_files(tmp_path / "tls")
    pw = make_password_file(tmp_path / "passwd", {"dev1": "s3cret", "ops": "opspw"})
    acl = tmp_path / "acl"
    acl.write_text("user dev1\ntopic readwrite edgewatch/v1/dev1/#\n\n"
                   "user ops\ntopic read edgewatch/v1/#\n")
    secure = broker_factory(password_file=pw, acl_file=acl, **tls)
    listener = listeners(secure, ["edgewatch/v1/+/status"], username="ops", password="opspw",
                         ca_file=tls["cafile"])
    listener.wait_connected()
    good = MqttLink(link_config(secure, tls=True, ca_file=str(tls["cafile"]),
                                username="dev1", password="s3cret"), store)
    good.start()
    listener.wait_for(lambda ms: [m.payload for m in ms] == [b"online"])
    assert good.status()["connected"]
    good.close()

    bad = MqttLink(link_config(secure, device_id="dev2", tls=True, ca_file=str(tls["cafile"]),
                               username="dev1", password="wrong"), store)
    bad.start()
    try:
        wait(lambda: bad.status()["last_error"] is not None, what="refusal reported")
        wait(lambda: secure.log().count("disconnected, not authorised") >= 3,
             what="the link keeps retrying")
        status = bad.status()
        assert status["connected"] is False and status["connects"] == 0
        assert status["state"] == "refused"
        assert "refused by broker" in status["last_error"]
        assert ("Not authorized" in status["last_error"]
                or "Bad user name or password" in status["last_error"])
    finally:
        bad.close()
    refusals = [r for r in caplog.records if "refused by broker" in r.getMessage()]
    assert len(refusals) == 1  # one log line per change of state, not one per retry

    no_ca = MqttLink(link_config(secure, device_id="dev3", tls=False, username="dev1",
                                 password="s3cret"), store)
    no_ca.start()
    try:
        wait(lambda: no_ca.status()["last_error"] is not None, what="plain-TCP failure reported")
        assert not no_ca.status()["connected"]
    finally:
        no_ca.close()


def test_commands_dispatched_and_handler_errors_answered(broker, store, listeners) -> None:
    calls: List[tuple] = []

    def handler(verb: str, payload: bytes) -> Dict[str, Any]:
        calls.append((verb, payload))
        if verb == "boom":
            raise RuntimeError("handler exploded")
        return {"id": json.loads(payload)["id"], "verb": verb, "ok": True, "result": {}}

    listener = listeners(broker, ["edgewatch/v1/dev1/cmd/result"])
    listener.wait_connected()
    link = MqttLink(link_config(broker, max_payload_kb=1), store, command_handler=handler)
    link.start()
    wait(lambda: link.connected, what="link connected")
    broker.wait_suback("dev1")  # the link's cmd/+ subscription
    listener.publish("edgewatch/v1/dev1/cmd/ping", json.dumps({"id": "r1"}))
    listener.publish("edgewatch/v1/dev1/cmd/boom", json.dumps({"id": "r2"}))
    listener.publish("edgewatch/v1/dev1/cmd/ping", b"x" * 2048)
    listener.publish("edgewatch/v1/dev1/cmd/ping", json.dumps({"id": "r3"}))
    msgs = listener.wait_for(lambda ms: len(ms) == 4)
    results = [json.loads(m.payload) for m in msgs]
    assert results[0] == {"id": "r1", "verb": "ping", "ok": True, "result": {}}
    assert results[1]["ok"] is False and "handler exploded" in results[1]["error"]
    assert results[2]["ok"] is False and "payload too large" in results[2]["error"]
    assert results[3]["id"] == "r3" and results[3]["ok"]
    assert [c[0] for c in calls] == ["ping", "boom", "ping"]  # the huge one never reached it
    assert link.status()["connected"]
    link.close()


def test_close_while_broker_is_down_returns_quickly(broker, store) -> None:
    broker.stop()
    link = MqttLink(link_config(broker), store)
    link.start()
    wait(lambda: link.status()["last_error"], what="a connection attempt")
    status = link.status()
    assert not status["connected"] and "cannot reach broker" in status["last_error"]
    t0 = time.monotonic()
    link.close()
    assert time.monotonic() - t0 < 3.0


# -- supervised workers ---------------------------------------------------------------------------

def test_a_failing_command_is_answered_and_counted_by_the_supervisor(broker, store,
                                                                      listeners) -> None:
    from agent.supervise import Supervisor

    def handler(verb: str, payload: bytes) -> Dict[str, Any]:
        raise RuntimeError("handler exploded")

    listener = listeners(broker, ["edgewatch/v1/dev1/cmd/result"])
    listener.wait_connected()
    sup = Supervisor()
    link = MqttLink(link_config(broker), store, command_handler=handler)
    link.start(sup)
    try:
        wait(lambda: link.connected, what="link connected")
        # The subscription lands after CONNACK: resend until the device answers.
        deadline = time.monotonic() + 10
        while not listener.messages and time.monotonic() < deadline:
            listener.publish("edgewatch/v1/dev1/cmd/ping", json.dumps({"id": "r1"}))
            with listener.cond:
                listener.cond.wait_for(lambda: bool(listener.messages), 0.5)
        answer = json.loads(listener.messages[0].payload)
        assert answer["ok"] is False and "handler exploded" in answer["error"]
        wait(lambda: sup.health()["edgewatch-mqtt-commands"]["failures"] >= 1,
             what="the failure counted")
        health = sup.health()["edgewatch-mqtt-commands"]
        assert health["alive"] and health["last_error"] == "RuntimeError: handler exploded"
    finally:
        link.close()
        sup.stop()


def test_a_dead_paho_network_thread_is_restarted_and_counted(broker, store) -> None:
    from agent.supervise import Supervisor

    sup = Supervisor()
    link = MqttLink(link_config(broker), store)
    link.start(sup)
    try:
        wait(lambda: link.connected, what="link connected")
        client = link._client
        assert client is not None
        client.loop_stop()  # paho's network thread ends, as when a callback raises in it
        wait(lambda: sup.health()["edgewatch-mqtt-network"]["failures"] >= 1, timeout=15,
             what="the dead network thread noticed")
        assert "network thread had died" in str(sup.health()["edgewatch-mqtt-network"]["last_error"])
        thread = getattr(client, "_thread", None)
        assert thread is not None and thread.is_alive()  # restarted
        assert link.publish_heartbeat({"seq": 1})
    finally:
        link.close()
        sup.stop()
