"""The device side of MQTT: topics, the link to the broker, store-and-forward of alerts.

Topic layout (every topic is built by :func:`topics`)::

    <prefix>/<device>/status                 "online" | "offline"   retained, QoS 1 (last will)
    <prefix>/<device>/heartbeat              heartbeat JSON          QoS 0, dropped when offline
    <prefix>/<device>/alerts                 alert record JSON       QoS 1, via the outbox
    <prefix>/<device>/alerts/state/<fp>      alert record JSON       retained, QoS 1, via the outbox
    <prefix>/<device>/cmd/<verb>             command JSON            the device subscribes cmd/+
    <prefix>/<device>/cmd/result             command result JSON     QoS 1

Alerts never go to the network directly: the alert manager writes them and their outbox rows
in one SQLite transaction (:func:`alert_outbox_messages` builds the rows), and the outbox pump
of :class:`MqttLink` publishes the rows in id order and deletes each one when the broker acks
it. Rows survive a broker outage and an agent crash; QoS 1 means a row may arrive twice, so
receivers deduplicate by ``(id, seq)``. Nothing here blocks the caller.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from queue import Full, Queue
from typing import Any, Callable, Dict, List, Mapping, Optional

import paho.mqtt.client as mqtt

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["MqttConfig", "Topics", "topics", "alert_outbox_messages", "MqttLink"]

PROTOCOLS = ("3.1.1", "5")
ONLINE = "online"
OFFLINE = "offline"
_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_POLL_S = 1.0  # outbox poll when no commit listener fires (fallback)
_COMMAND_QUEUE = 16


def _default_device_id() -> str:
    return socket.gethostname() or "edgewatch"


@dataclass(frozen=True)
class MqttConfig:
    """The ``[mqtt]`` section: broker, identity, TLS and the link's timings."""

    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    device_id: str = field(default_factory=_default_device_id)
    protocol: str = "3.1.1"
    keepalive: int = 30
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    tls_insecure: bool = False
    topic_prefix: str = "edgewatch/v1"
    heartbeat_interval_s: float = 30.0
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60
    max_inflight: int = 20
    max_payload_kb: int = 64

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> ConfigError:
            return ConfigError(f"mqtt.{key}: {allowed} (set [mqtt] {key})")

        for key in ("enabled", "tls", "tls_insecure"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, f"must be true or false, got {getattr(self, key)!r}")
        for key in ("port", "keepalive", "reconnect_min_s", "reconnect_max_s", "max_inflight",
                    "max_payload_kb"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(key, f"must be an integer, got {value!r}")
        if not self.host:
            raise bad("host", "must not be empty")
        if not 1 <= self.port <= 65535:
            raise bad("port", f"must be between 1 and 65535, got {self.port}")
        if self.protocol not in PROTOCOLS:
            raise bad("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not _ID_RE.match(self.device_id or ""):
            raise bad("device_id", f"must be 1-128 of A-Z a-z 0-9 . _ -, got {self.device_id!r}")
        prefix = self.topic_prefix
        if not prefix or prefix.startswith("/") or prefix.endswith("/") or set("+#") & set(prefix):
            raise bad("topic_prefix",
                      f"must be a topic without wildcards or edge '/', got {prefix!r}")
        if self.keepalive < 1:
            raise bad("keepalive", f"must be at least 1 second, got {self.keepalive}")
        if not self.heartbeat_interval_s > 0:
            raise bad("heartbeat_interval_s", f"must be > 0, got {self.heartbeat_interval_s}")
        if not 1 <= self.reconnect_min_s <= self.reconnect_max_s:
            raise bad("reconnect_max_s", "must be >= reconnect_min_s >= 1")
        if self.max_inflight < 1:
            raise bad("max_inflight", f"must be at least 1, got {self.max_inflight}")
        if self.max_payload_kb < 1:
            raise bad("max_payload_kb", f"must be at least 1, got {self.max_payload_kb}")
        if self.password is not None and self.username is None:
            raise bad("username", "is required when a password is set")
        if (self.cert_file is None) != (self.key_file is None):
            raise bad("key_file", "cert_file and key_file go together")
        if self.tls_insecure and not self.tls:
            raise bad("tls_insecure", "only applies when tls = true")
        if not self.tls and (self.ca_file or self.cert_file):
            raise bad("tls", "must be true when ca_file or cert_file is set")
        if self.enabled and self.tls:
            for key in ("ca_file", "cert_file", "key_file"):
                path = getattr(self, key)
                if path is not None and not os.path.isfile(path):
                    raise bad(key, f"file not found: {path}")


@dataclass(frozen=True)
class Topics:
    """Every topic of one device, built by :func:`topics`."""

    base: str
    status: str
    heartbeat: str
    alerts: str
    cmd: str
    cmd_result: str

    def alert_state(self, fingerprint: str) -> str:
        """The retained current-state topic of one alert fingerprint."""
        return f"{self.alerts}/state/{fingerprint}"

    def command(self, verb: str) -> str:
        """The topic a command verb is sent to (used by the operator side)."""
        return f"{self.base}/cmd/{verb}"


def topics(prefix: str, device_id: str) -> Topics:
    """All topics of ``device_id`` under ``prefix`` (``edgewatch/v1/<device>/...``)."""
    base = f"{prefix.rstrip('/')}/{device_id}"
    return Topics(
        base=base,
        status=f"{base}/status",
        heartbeat=f"{base}/heartbeat",
        alerts=f"{base}/alerts",
        cmd=f"{base}/cmd/+",
        cmd_result=f"{base}/cmd/result",
    )


def alert_outbox_messages(t: Topics, record: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The outbox rows for one alert transition: the event, then the retained state.

    The record goes to ``alerts`` (QoS 1, not retained) for every transition. The retained
    ``alerts/state/<fingerprint>`` holds the record while the alert fires and is *cleared*
    (empty retained payload) when it resolves, so a new subscriber sees exactly the open
    alerts; the resolved record itself is on ``alerts``.
    """
    payload = json.dumps(record, separators=(",", ":"), sort_keys=True)
    severity = str(record.get("severity", ""))
    state_topic = t.alert_state(str(record["fingerprint"]))
    resolved = record.get("state") == "resolved"
    return [
        {"topic": t.alerts, "payload": payload, "qos": 1, "retain": 0, "severity": severity},
        {"topic": state_topic, "payload": "" if resolved else payload, "qos": 1, "retain": 1,
         "severity": severity},
    ]


CommandHandler = Callable[[str, bytes], Dict[str, Any]]


class MqttLink:
    """The device's connection: status + last will, heartbeats, the outbox pump, commands."""

    def __init__(
        self,
        config: MqttConfig,
        store: Any,
        *,
        command_handler: Optional[CommandHandler] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._handler = command_handler
        self._clock = clock
        self.topics = topics(config.topic_prefix, config.device_id)
        self._client: Optional[mqtt.Client] = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # counters, in-flight list; never held while calling paho
        self._connected = False
        self._state = "stopped"
        self._last_error: Optional[str] = None
        self._logged: Optional[str] = None
        self._counts = dict(connects=0, disconnects=0, published=0, heartbeats_sent=0,
                            heartbeats_dropped=0, commands=0, commands_dropped=0,
                            outbox_undeliverable=0)
        # (outbox row id, paho MQTTMessageInfo) handed to paho and not yet acked; paho keeps
        # QoS 1 messages across reconnects and resends them (dup flag) until the PUBACK.
        self._inflight: List[tuple] = []
        self._acked: List[int] = []  # row ids acked, not yet deleted
        self._cursor = 0  # highest outbox id handed to paho
        self._commands: Queue[Optional[tuple]] = Queue(_COMMAND_QUEUE)
        self._threads: List[threading.Thread] = []
        self._listening = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (never blocks) and start the outbox and command threads."""
        if self._client is not None:
            return
        cfg = self._config
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.device_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.will_set(self.topics.status, OFFLINE, qos=1, retain=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file)
            if cfg.tls_insecure is True:
                log.warning("mqtt: TLS certificate checks are off (tls_insecure = true)")
                client.tls_insecure_set(True)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._stop.clear()
        self._set_state("connecting", None)
        add_listener = getattr(self._store, "add_commit_listener", None)
        if add_listener is not None and not self._listening:
            add_listener(self._wake.set)
            self._listening = True
        for name, target in (("edgewatch-mqtt-outbox", self._pump),
                             ("edgewatch-mqtt-commands", self._command_worker)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        client.loop_start()

    def close(self, timeout: float = 2.0) -> None:
        """Publish retained ``offline`` (waiting at most ``timeout``), disconnect, stop threads."""
        client = self._client
        if client is None:
            return
        self._stop.set()
        self._wake.set()
        try:
            self._commands.put_nowait(None)
        except Full:
            pass
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        if self._connected:
            info = client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.debug("mqtt: offline status not confirmed: %s", exc)
        client.disconnect()
        client.loop_stop()
        self._flush_acks()
        with self._lock:
            self._connected = False
            # Unacked rows stay in SQLite; a later start() (new paho client) resends them.
            self._inflight = []
            self._cursor = 0
        self._set_state("stopped", None)
        self._client = None

    def __enter__(self) -> MqttLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the service calls ------------------------------------------------------------

    def publish_heartbeat(self, payload: Mapping[str, Any]) -> bool:
        """Send a heartbeat (QoS 0) if connected; False (and counted) when dropped."""
        client = self._client
        if client is None or not self._connected:
            with self._lock:
                self._counts["heartbeats_dropped"] += 1
            return False
        data = json.dumps(payload, separators=(",", ":"), default=str)
        info = client.publish(self.topics.heartbeat, data, qos=0)
        ok = info.rc == mqtt.MQTT_ERR_SUCCESS
        with self._lock:
            self._counts["heartbeats_sent" if ok else "heartbeats_dropped"] += 1
        return ok

    def wake(self) -> None:
        """Ask the outbox pump to look for new rows now."""
        self._wake.set()

    @property
    def connected(self) -> bool:
        """True only while the broker has accepted the connection."""
        return self._connected

    def status(self) -> Dict[str, Any]:
        """Connection state, counters and the outbox figures from the store."""
        with self._lock:
            out: Dict[str, Any] = dict(
                connected=self._connected, state=self._state, last_error=self._last_error,
                broker=f"{self._config.host}:{self._config.port}",
                inflight=len(self._inflight), **self._counts,
            )
        stats: Mapping[str, Any] = {}
        try:
            stats = self._store.stats()
        except Exception as exc:  # noqa: BLE001 - status must answer even if the store is closing
            log.debug("mqtt: store stats unavailable: %s", exc)
        out["outbox_depth"] = stats.get("outbox_depth")
        out["outbox_oldest_age_s"] = stats.get("outbox_oldest_age_s")
        out["outbox_dropped"] = stats.get("outbox_dropped")
        return out

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _set_state(self, state: str, error: Optional[str]) -> None:
        with self._lock:
            self._state = state
            if error is not None:
                self._last_error = error
        line = f"{state}: {error}" if error else state
        if line != self._logged:  # one line per change of state, not per retry
            self._logged = line
            broker = f"{self._config.host}:{self._config.port}"
            if error:
                log.warning("mqtt %s %s", broker, line)
            else:
                log.info("mqtt %s %s", broker, line)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if reason.is_failure:
            self._set_state("refused", f"connection refused by broker: {reason}")
            return
        client.publish(self.topics.status, ONLINE, qos=1, retain=True)
        client.subscribe(self.topics.cmd, qos=1)
        with self._lock:
            self._connected = True
            self._counts["connects"] += 1
            self._last_error = None
        self._set_state("connected", None)
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        cfg = self._config
        self._set_state("connecting", f"cannot reach broker {cfg.host}:{cfg.port} "
                        "(broker down, wrong host/port, or TLS handshake failed)")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            if was:
                self._counts["disconnects"] += 1
        if self._stop.is_set():
            return
        if was:
            self._set_state("disconnected", f"connection lost: {reason}")
        elif self._state != "refused":
            cfg = self._config
            self._set_state("connecting", f"broker {cfg.host}:{cfg.port} closed the connection "
                            f"before accepting it ({reason}; does it expect TLS? check "
                            "[mqtt] tls and port)")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any = None,
                    properties: Any = None) -> None:
        # Called with paho's message lock held: only wake the pump, which checks its infos.
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        verb = msg.topic.rsplit("/", 1)[-1]
        if verb == "result" or msg.retain:
            return  # our own results, or a stale retained command (never replayed)
        try:
            self._commands.put_nowait((verb, bytes(msg.payload)))
        except Full:
            with self._lock:
                self._counts["commands_dropped"] += 1
            self._publish_result({"id": None, "verb": verb, "ok": False,
                                  "error": "agent busy: too many queued commands (retry)",
                                  "ts": self._clock()})

    # -- worker threads ---------------------------------------------------------------------

    def _command_worker(self) -> None:
        limit = self._config.max_payload_kb * 1024
        while True:
            item = self._commands.get()
            if item is None or self._stop.is_set():
                return
            verb, payload = item
            with self._lock:
                self._counts["commands"] += 1
            if len(payload) > limit:
                result = {"id": None, "verb": verb, "ok": False, "ts": self._clock(),
                          "error": f"payload too large: {len(payload)} bytes "
                                   f"(max {limit}, set [mqtt] max_payload_kb)"}
            elif self._handler is None:
                result = {"id": None, "verb": verb, "ok": False, "ts": self._clock(),
                          "error": "commands are not enabled on this agent"}
            else:
                try:
                    result = dict(self._handler(verb, payload))
                except Exception as exc:  # noqa: BLE001 - a bad command must not kill the link
                    log.exception("mqtt: command %r failed", verb)
                    result = {"id": None, "verb": verb, "ok": False, "ts": self._clock(),
                              "error": f"command failed: {type(exc).__name__}: {exc}"}
            self._publish_result(result)

    def _publish_result(self, result: Mapping[str, Any]) -> None:
        client = self._client
        if client is None:
            return
        data = json.dumps(result, separators=(",", ":"), default=str)
        client.publish(self.topics.cmd_result, data, qos=1)

    def _collect_acks(self) -> None:
        with self._lock:
            done = [row for row, info in self._inflight if info.is_published()]
            if done:
                self._inflight = [(r, i) for r, i in self._inflight if not i.is_published()]
                self._acked.extend(done)
                self._counts["published"] += len(done)

    def _flush_acks(self) -> None:
        self._collect_acks()
        with self._lock:
            rows, self._acked = self._acked, []
        if not rows:
            return
        try:
            self._store.delete_outbox(rows)
        except Exception as exc:  # noqa: BLE001 - store closing: rows are resent next start
            log.warning("mqtt: could not delete %d acked outbox rows: %s", len(rows), exc)

    def _pump(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_POLL_S)
            self._wake.clear()
            self._flush_acks()
            try:
                self._publish_rows()
            except Exception as exc:  # noqa: BLE001 - keep pumping; the rows stay in SQLite
                log.warning("mqtt: outbox pump error: %s", exc)
                self._stop.wait(_POLL_S)

    def _publish_rows(self) -> None:
        client = self._client
        while client is not None and self._connected and not self._stop.is_set():
            self._collect_acks()
            with self._lock:
                room = self._config.max_inflight - len(self._inflight)
            if room <= 0:
                return
            rows = self._store.outbox_after(self._cursor, room)
            if not rows:
                return
            for row in rows:
                qos = row.qos
                if qos == 0 and not self._connected:
                    return  # paho does not queue QoS 0 while offline: send after reconnect
                payload = row.payload if row.payload is not None else ""
                info = client.publish(row.topic, payload, qos=qos, retain=row.retain)
                if qos == 0 and info.rc == mqtt.MQTT_ERR_NO_CONN:
                    return  # not queued by paho: this row is sent again after reconnect
                self._cursor = row.id
                if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    with self._lock:
                        self._inflight.append((row.id, info))
                    continue
                log.error("mqtt: outbox row %d undeliverable to %s (%s): deleting it",
                          row.id, row.topic, mqtt.error_string(info.rc))
                with self._lock:
                    self._acked.append(row.id)
                    self._counts["outbox_undeliverable"] += 1
            self._flush_acks()
