"""The one MQTT client factory against a real Mosquitto: protocols, sessions, will, TLS."""

from __future__ import annotations

import threading
from typing import List, Tuple

import broker as broker_fixtures
import paho.mqtt.client as mqtt
import pytest

from agent.errors import ConfigError
from agent.mqttclient import ClientSettings, Will, build_client, read_password, stop_client


class Probe:
    """A client from the factory that records connects and messages."""

    def __init__(self, settings: ClientSettings, topic: str = "") -> None:
        self.settings = settings
        self.client = build_client(settings)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.messages: List[Tuple[str, bytes]] = []
        self.got = threading.Condition()
        self.session_present = False
        self.topic = topic
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, u: object, flags: mqtt.ConnectFlags,
                    reason: object, p: object = None) -> None:
        self.session_present = flags.session_present
        if self.topic and not self.session_present:
            client.subscribe(self.topic, qos=1)
        else:
            self.subscribed.set()
        self.connected.set()

    def _on_message(self, client: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.got:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.got.notify_all()

    def start(self) -> Probe:
        self.client.connect_async(**self.settings.connect_kwargs())
        self.client.loop_start()
        assert self.connected.wait(5) and self.subscribed.wait(5), "probe did not connect"
        return self

    def wait_messages(self, n: int) -> List[Tuple[str, bytes]]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.messages) >= n, 10), self.messages
            return list(self.messages)

    def stop(self) -> None:
        stop_client(self.client)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_persistent_session_keeps_qos1_messages_while_away(broker, listeners,
                                                           protocol: str) -> None:
    settings = ClientSettings(host=broker.host, port=broker.port, client_id=f"p-{protocol}",
                              protocol=protocol, persistent=True)
    probe = Probe(settings, "t/persist").start()
    assert not probe.session_present
    probe.stop()
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("t/persist", b"while away", qos=1)
    again = Probe(settings, "t/persist").start()
    try:
        assert again.session_present
        assert again.wait_messages(1) == [("t/persist", b"while away")]
    finally:
        again.stop()


def test_with_manual_ack_an_unacknowledged_message_comes_again(broker, listeners) -> None:
    settings = ClientSettings(host=broker.host, port=broker.port, client_id="manual",
                              persistent=True, manual_ack=True)
    probe = Probe(settings, "t/ack").start()
    mids: List[int] = []
    record = probe.client.on_message
    probe.client.on_message = lambda c, u, m: (mids.append(m.mid), record(c, u, m))
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("t/ack", b"committed", qos=1)
    pub.publish("t/ack", b"lost in a crash", qos=1)
    probe.wait_messages(2)
    probe.client.ack(mids[0], 1)  # only the first was made safe
    broker.wait_log(r"Received PUBACK from manual")
    probe.stop()
    again = Probe(settings, "t/ack").start()
    try:
        assert again.wait_messages(1) == [("t/ack", b"lost in a crash")]
    finally:
        again.stop()
    assert all(payload != b"committed" for _, payload in again.messages)


def test_clean_session_forgets(broker, listeners) -> None:
    settings = ClientSettings(host=broker.host, port=broker.port, client_id="clean")
    Probe(settings, "t/clean").start().stop()
    again = Probe(settings, "t/clean").start()
    try:
        assert not again.session_present
    finally:
        again.stop()


def test_last_will_is_published_when_the_client_vanishes(broker, listeners) -> None:
    watcher = listeners(broker, ["dev/status"])
    watcher.wait_connected()
    settings = ClientSettings(host=broker.host, port=broker.port, client_id="dev", keepalive=1,
                              will=Will("dev/status", "offline"))
    probe = Probe(settings).start()
    probe.client.loop_stop()  # no more pings, no DISCONNECT: the broker times the client out
    try:
        msgs = watcher.wait_for(lambda m: any(x.payload == b"offline" for x in m))
        assert [(m.topic, m.payload) for m in msgs][-1] == ("dev/status", b"offline")
    finally:
        stop_client(probe.client)


def test_tls_with_ca_and_client_certificate(broker_factory, tmp_path) -> None:
    files = broker_fixtures.make_tls_files(tmp_path / "tls")
    tls_broker = broker_factory(**files)
    settings = ClientSettings(host=tls_broker.host, port=tls_broker.port, client_id="tls",
                              tls=True, ca_file=str(files["cafile"]),
                              cert_file=str(files["certfile"]), key_file=str(files["keyfile"]))
    probe = Probe(settings).start()
    probe.stop()
    assert settings.describe() == f"mqtts://127.0.0.1:{tls_broker.port}"


@pytest.mark.parametrize("kwargs, words", [
    ({"protocol": "4"}, "protocol must be one of 5, 3.1.1"),
    ({"port": 0}, "port must be between"),
    ({"persistent": True, "client_id": ""}, "needs a fixed client id"),
    ({"password": "x"}, "password needs a username"),
    ({"tls": True, "cert_file": "c.pem"}, "certificate and its key go together"),
    ({"ca_file": "ca.pem"}, "need TLS on"),
    ({"reconnect_min_s": 5, "reconnect_max_s": 2}, "reconnect delays"),
])
def test_bad_settings_are_one_line_errors(kwargs: dict, words: str) -> None:
    base = {"host": "h", "client_id": "c", **kwargs}
    with pytest.raises(ConfigError, match=words):
        ClientSettings(**base)


def test_password_from_env_or_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EW_TEST_PW", "s3cret")
    assert read_password(env="EW_TEST_PW") == "s3cret"
    (tmp_path / "pw").write_text("from-file\n")
    assert read_password(file=str(tmp_path / "pw")) == "from-file"
    assert read_password(value="v") == "v" and read_password() is None
    with pytest.raises(ConfigError, match="EW_TEST_MISSING is not set"):
        read_password(env="EW_TEST_MISSING")
    with pytest.raises(ConfigError, match="cannot read the MQTT password file"):
        read_password(file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="one way"):
        read_password(value="v", env="EW_TEST_PW")
