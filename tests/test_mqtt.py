"""The device's MQTT link against a real Mosquitto, with a real Store on tmp_path.

Listeners are real paho clients; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List

import broker as broker_fixtures
import pytest
from broker import Broker, make_password_file, make_tls_files

from agent.config import MqttConfig
from agent.errors import ConfigError
from agent.mqtt import MqttLink, alert_outbox_messages, topics
from agent.store import Store

listeners = broker_fixtures.listeners  # the fixture, registered for this module

REPO = Path(__file__).resolve().parents[1]


def make_alert(seq: int, *, device: str = "dev1", state: str = "firing",
               fingerprint: str = "00aa11bb22cc33dd", alert_id: str = "") -> Dict[str, Any]:
    """A schema-1 alert record as the alert manager makes them."""
    now = 1_700_000_000.0 + seq
    return {
        "schema": 1, "id": alert_id or f"a{seq:04x}", "fingerprint": fingerprint, "seq": seq,
        "transition": "firing" if state == "firing" else "resolved", "state": state,
        "ts": now, "starts_at": now, "ends_at": None if state == "firing" else now,
        "device": device, "camera": "cam0", "kind": "data_drift", "severity": "warning",
        "feature": "brightness", "metric": "psi", "value": 0.4, "threshold": 0.25,
        "expected": {"mean": 120.0}, "observed": {"mean": 60.0},
        "window": {"start": now - 60, "end": now, "frames": 600},
        "model": {"path": "m.tflite", "sha256": "ab"}, "message": f"brightness drifted #{seq}",
        "acknowledged": False, "snoozed_until": None,
    }


def link_config(broker: Broker, device: str = "dev1", **kw: Any) -> MqttConfig:
    """An enabled config pointing at the test broker, with fast timings."""
    base = dict(enabled=True, host=broker.host, port=broker.port, device_id=device,
                keepalive=5, reconnect_min_s=1, reconnect_max_s=1)
    base.update(kw)
    return MqttConfig(**base)


@pytest.fixture
def store(tmp_path: Path):
    """A started real Store, closed at teardown."""
    s = Store(str(tmp_path / "agent.db"), flush_interval_s=0.2).start()
    yield s
    s.close()


def put_alerts(store: Store, records: List[Dict[str, Any]], device: str = "dev1") -> None:
    """Write alert transitions with their outbox rows, as the alert manager does."""
    t = topics("edgewatch/v1", device)
    for record in records:
        store.put_alert(record, alert_outbox_messages(t, record))


def wait(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


def outbox_depth(store: Store) -> int:
    with store.read() as conn:
        return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]


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
        False, 1883, "3.1.1", "edgewatch/v1")
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
    late.wait_for(lambda ms: len(ms) >= 2)
    time.sleep(0.3)
    assert sorted(m.topic.rsplit("/", 1)[1] for m in late.messages) == [
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
    time.sleep(0.5)
    assert outbox_depth(store) == 2 * len(records)  # kept while the broker is down
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


_LINK_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from agent.mqtt import MqttConfig, MqttLink, alert_outbox_messages, topics
    from agent.store import Store
    sys.path.insert(0, {tests!r})
    from test_mqtt import make_alert
    store = Store({db!r}, flush_interval_s=0.1).start()
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port={port}, device_id={device!r},
                     keepalive={keepalive}, reconnect_min_s=1, reconnect_max_s=1)
    link = MqttLink(cfg, store)
    link.start()
    t = topics("edgewatch/v1", {device!r})
    for seq in range({first}, {last}):
        rec = make_alert(seq, device={device!r})
        store.put_alert(rec, alert_outbox_messages(t, rec))
    while True:
        with store.read() as conn:
            n = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        if n >= {expect_depth} and (link.connected or not {need_connected}):
            break
        time.sleep(0.05)
    print("ready", n, flush=True)
    time.sleep(600)
""")


def start_link_process(tmp_path: Path, broker: Broker, *, first: int = 0, last: int = 0,
                       keepalive: int = 2, need_connected: bool = True,
                       expect_depth: int = 0, device: str = "dev1") -> subprocess.Popen:
    """A separate Python process running a Store + MqttLink; waits for its 'ready' line."""
    script = _LINK_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"),
                                 db=str(tmp_path / f"{device}.db"), port=broker.port,
                                 device=device,
                                 keepalive=keepalive, first=first, last=last,
                                 need_connected=need_connected, expect_depth=expect_depth)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("ready"):
        proc.kill()
        _, err = proc.communicate(5)
        raise AssertionError(f"link process did not start: {line!r} {err[-2000:]}")
    return proc


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


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
    time.sleep(0.2)  # let the cmd/+ SUBACK land
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
    time.sleep(0.5)
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
