"""Fixtures that start a real Mosquitto on a free loopback port, with its config in tmp.

``broker`` is one plain broker per test (anonymous, persistence on). ``broker_factory`` makes
brokers with options (TLS, password file, ACL file, a shared persistence dir) that tests can
stop, start and restart; every process is killed at teardown even when the test fails.
Without Mosquitto the fixtures skip, except under ``CI=true`` where they fail.
``listeners`` makes real paho clients that record what they receive. conftest.py registers
every fixture here; tests that use them are marked ``integration``.

Synchronisation is on what the broker did, never on a delay: ``Listener.wait_connected``
returns once the broker's SUBACK has arrived, and ``Broker.wait_suback(client_id)`` waits for
the broker to log its SUBACK to another client (the agent's MQTT link, the central).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple, Union

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from procs import stop_process

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_path() -> Optional[str]:
    """The mosquitto executable, or None when it is not installed."""
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mosquitto")


def require_mosquitto() -> str:
    """The mosquitto path; skip the test (fail under CI=true) when it is missing."""
    path = mosquitto_path()
    if path is None:
        reason = "mosquitto not installed (apt-get install mosquitto)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BrokerOptions:
    """What a test broker is started with."""

    cafile: Optional[Path] = None
    certfile: Optional[Path] = None
    keyfile: Optional[Path] = None
    password_file: Optional[Path] = None
    acl_file: Optional[Path] = None
    persistence: bool = True
    max_packet_size: Optional[int] = None
    extra: Tuple[str, ...] = ()  # more mosquitto.conf lines (max_queued_messages 0, ...)


class Broker:
    """One Mosquitto process on 127.0.0.1: a fixed port and data dir across restarts."""

    host = "127.0.0.1"

    def __init__(self, exe: str, workdir: Path, options: BrokerOptions) -> None:
        self.exe = exe
        self.workdir = workdir
        self.options = options
        self.port = free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()

    @property
    def tls(self) -> bool:
        """True when the listener speaks TLS."""
        return self.options.certfile is not None

    def _write_config(self) -> None:
        opts = self.options
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if opts.password_file else 'true'}",
            "log_dest stderr",  # the process's stderr goes to log_path (unbuffered)
            "log_type all",
            "connection_messages true",
        ]
        if os.getuid() == 0:
            # As root, mosquitto drops to user 'mosquitto', which cannot write the tmp dir.
            lines.append("user root")
        if opts.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "persistence_file mosquitto.db",
                "autosave_interval 1",
            ]
        if opts.password_file:
            lines.append(f"password_file {opts.password_file}")
        if opts.acl_file:
            lines.append(f"acl_file {opts.acl_file}")
        if opts.certfile:
            lines += [
                f"certfile {opts.certfile}",
                f"keyfile {opts.keyfile}",
            ]
            if opts.cafile:
                lines.append(f"cafile {opts.cafile}")
        if opts.max_packet_size:
            lines.append(f"max_packet_size {opts.max_packet_size}")
        lines += opts.extra
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until its port accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(self.conf_path)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop mosquitto cleanly (SIGTERM: it saves its persistence file)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout)

    def kill(self) -> None:
        """Kill mosquitto at once (SIGKILL), as a crash would."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop then start on the same port, keeping the persistence dir."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """The broker's log so far (for failure messages)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` lines of the broker's log match the regex ``pattern``."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while len(regex.findall(self.log())) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"broker log: {pattern!r} not seen {count}x in {timeout}s")
            time.sleep(0.02)

    def wait_suback(self, client_id: str, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until the broker has sent ``count`` SUBACKs to ``client_id`` (its subscriptions
        are in place; messages published from now on reach it)."""
        self.wait_log(rf"Sending SUBACK to {re.escape(client_id)}$", count, timeout)


BrokerFactory = Callable[..., Broker]


@pytest.fixture
def broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFactory]:
    """Make started brokers: ``broker_factory(password_file=..., certfile=..., ...)``."""
    exe = require_mosquitto()
    made: List[Broker] = []

    def make(start: bool = True, **options: Any) -> Broker:
        workdir = tmp_path_factory.mktemp("mosquitto")
        broker = Broker(exe, workdir, BrokerOptions(**options))
        made.append(broker)
        if start:
            broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in made:
            broker.kill()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    """A running anonymous Mosquitto with persistence on, one per test."""
    return broker_factory()


@pytest.fixture(scope="session")
def broker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One anonymous Mosquitto shared by the session (tests must use distinct topics)."""
    exe = require_mosquitto()
    broker = Broker(exe, tmp_path_factory.mktemp("mosquitto-session"), BrokerOptions())
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


class Endpoint(Protocol):
    """Where a broker listens (a :class:`Broker`, or a broker a test started itself)."""

    host: str
    port: int


class Listener:
    """A real paho client that records what it receives, for assertions in tests.

    It subscribes to ``topics`` (QoS 1) on every connect; ``wait_connected`` returns once the
    broker has acknowledged them. A subscription the broker refuses (an ACL) is recorded in
    ``refused_topics``, not raised: tests of the ACL check it.
    """

    def __init__(self, broker: Endpoint, topics: List[str], *, client_id: str = "",
                 persistent: bool = False, protocol: str = "3.1.1", username: Optional[str] = None,
                 password: Optional[str] = None, ca_file: Optional[Path] = None) -> None:
        self.messages: List[mqtt.MQTTMessage] = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.refused: Optional[str] = None
        self.refused_topics: List[str] = []
        self._topics = topics
        self._sub_mid: Optional[int] = None
        v5 = protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.client.connect_async(broker.host, broker.port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any = None) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            return
        if not self._topics:
            self.subscribed.set()
            return
        # One SUBSCRIBE for every topic: one SUBACK says they are all in place.
        _, self._sub_mid = client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: List[ReasonCode], properties: Any = None) -> None:
        if mid != self._sub_mid:
            return
        self.refused_topics = [t for t, r in zip(self._topics, reasons) if r.is_failure]
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait_connected(self, timeout: float = 5.0) -> None:
        """Block until connected and the broker's SUBACK for every topic has arrived."""
        if not self.subscribed.wait(timeout):
            raise AssertionError(f"listener not connected and subscribed in {timeout}s "
                                 f"(refused: {self.refused})")

    def wait_for(self, predicate: Callable[[List[mqtt.MQTTMessage]], bool],
                 timeout: float = 10.0) -> List[mqtt.MQTTMessage]:
        """Wait until ``predicate(messages)`` holds; the messages so far, or AssertionError."""
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.messages), timeout):
                seen = [(m.topic, _brief(m.payload)) for m in self.messages]
                raise AssertionError(f"condition not met in {timeout}s; received {seen}")
            return list(self.messages)

    def on(self, topic: str) -> List[mqtt.MQTTMessage]:
        """Messages received so far on exactly ``topic``."""
        with self.cond:
            return [m for m in self.messages if m.topic == topic]

    def publish(self, topic: str, payload: Union[bytes, str], qos: int = 1,
                retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Publish and wait for it to leave."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)
        return info

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def _brief(payload: Union[bytes, bytearray]) -> object:
    """The seq of a JSON payload when it has one, else its first bytes."""
    try:
        return json.loads(payload).get("seq", payload[:60])
    except (ValueError, AttributeError):
        return payload[:60]


@pytest.fixture
def listeners() -> Iterator[Callable[..., Listener]]:
    """Make :class:`Listener` clients that are closed at teardown."""
    made: List[Listener] = []

    def make(broker: Broker, topics: List[str], **kwargs: Any) -> Listener:
        listener = Listener(broker, topics, **kwargs)
        made.append(listener)
        return listener

    try:
        yield make
    finally:
        for listener in made:
            listener.close()


def make_tls_files(directory: Path, host: str = "127.0.0.1") -> Dict[str, Path]:
    """A throw-away CA and a server cert for ``host`` made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not installed")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = d / "ca.key", d / "ca.crt"
    key, csr, crt, ext = d / "server.key", d / "server.csr", d / "server.crt", d / "ext.cnf"
    ext.write_text(f"subjectAltName=IP:{host},DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=edgewatch-test-ca", "-keyout", str(ca_key), "-out", str(ca_crt))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
        "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-out", str(crt), "-extfile", str(ext))
    return {"cafile": ca_crt, "certfile": crt, "keyfile": key}


def make_password_file(path: Path, users: Dict[str, str]) -> Path:
    """A Mosquitto password file for ``{user: password}`` made with mosquitto_passwd."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(tool, os.X_OK):
        pytest.skip("mosquitto_passwd not installed")
    path.write_text("")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
    os.chmod(path, 0o600)
    return path
