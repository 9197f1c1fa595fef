"""The device side of MQTT: topics, the link to the broker, store-and-forward of alerts.

Topic layout (every topic is built by :func:`topics`)::

    <prefix>/<device>/status                 "online" | "offline"   retained, QoS 1 (last will)
    <prefix>/<device>/heartbeat              heartbeat JSON          QoS 0, dropped when offline
    <prefix>/<device>/summary                heartbeat's summary     retained (Home Assistant)
    <prefix>/<device>/alerts                 alert record JSON       QoS 1, via the outbox
    <prefix>/<device>/alerts/state/<fp>      alert record JSON       retained, QoS 1, via the outbox
    <prefix>/<device>/cmd/<verb>             command JSON            the device subscribes cmd/+
    <prefix>/<device>/cmd/result             command result JSON     QoS 1

Alerts never go to the network directly: the alert manager writes them and their outbox rows
in one SQLite transaction (:func:`alert_outbox_messages` builds the rows), and the outbox pump
of :class:`MqttLink` publishes the rows in id order and deletes each one when the broker acks
it. Rows survive a broker outage and an agent crash; QoS 1 means a row may arrive twice, so
receivers deduplicate by ``(id, seq)``. Nothing here blocks the caller.

A PUBACK with a failure reason code (MQTT 5: e.g. 135 Not authorized, when the broker's ACL
does not let this username write the device's topics) is a refusal, not a delivery: the row
stays in the outbox and is offered again after :data:`REFUSED_RETRY_S`, the first refusal
is logged with the reason and the likely fix, and ``status()`` counts them (``refused``,
``last_refusal``) for the heartbeat, which raises a ``device_health`` alert (feature
``mqtt_refused``) while refusals persist. MQTT 3.1.1 has no reason code in a PUBACK: a
3.1.1 broker that refuses a publish acknowledges it anyway, which is why MQTT 5 is the
default.

Under MQTT 5 the CONNECT announces a Maximum Packet Size (``[mqtt] max_payload_kb`` plus
room for the topic), so the broker drops a larger command instead of sending it: a hostile
payload never reaches the agent's memory.

The outbox pump, the command worker and a watch on paho's own network thread are workers of
an :class:`agent.supervise.Supervisor` (the agent's): a failure is counted and reported in the
heartbeat's ``threads``, and a network thread that died is started again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from queue import Empty, Full, Queue
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import paho.mqtt.client as mqtt

from .config import MqttConfig
from .mqttclient import ClientSettings, Will, build_client, stop_client
from .records import Observation, Window
from .supervise import Supervisor

log = logging.getLogger(__name__)

__all__ = ["MqttConfig", "Topics", "topics", "alert_outbox_messages", "MqttLink"]

ONLINE = "online"
OFFLINE = "offline"
_POLL_S = 1.0  # outbox poll when no commit listener fires (fallback)
_COMMAND_QUEUE = 16
_NETWORK_CHECK_S = 5.0  # how often paho's network thread is checked
REFUSED_RETRY_S = 30.0  # a refused row is offered again after this long
REFUSED_ALERT_S = 60.0  # refusals pending this long raise device_health/mqtt_refused
PACKET_OVERHEAD = 4096  # room for the topic and properties beside the largest payload


@dataclass(frozen=True)
class Topics:
    """Every topic of one device, built by :func:`topics`."""

    base: str
    status: str
    heartbeat: str
    alerts: str
    cmd: str
    cmd_result: str
    summary: str

    def alert_state(self, fingerprint: str) -> str:
        """The retained current-state topic of one alert fingerprint."""
        return f"{self.alerts}/state/{fingerprint}"

    def command(self, verb: str) -> str:
        """The topic a command verb is sent to (used by the operator side)."""
        return f"{self.base}/cmd/{verb}"

    def sample_chunk(self, sample_id: int, chunk: int) -> str:
        """Where chunk ``chunk`` of a captured sample's JPEG goes (``fleet samples``)."""
        return f"{self.base}/samples/{sample_id}/{chunk}"


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
        summary=f"{base}/summary",
    )


def alert_outbox_messages(t: Topics, record: Mapping[str, Any], *,
                          state_only: bool = False) -> List[Dict[str, Any]]:
    """The outbox rows for one alert transition: the event, then the retained state.

    ``state_only``: just the retained state, for a change that is not a transition (an
    operator acknowledged or snoozed the alert: same ``seq``, new ``acknowledged_by``, ...).

    The record goes to ``alerts`` (QoS 1, not retained) for every transition. The retained
    ``alerts/state/<fingerprint>`` holds the record while the alert fires and is *cleared*
    (empty retained payload) when it resolves, so a new subscriber sees exactly the open
    alerts; the resolved record itself is on ``alerts``.
    """
    payload = json.dumps(record, separators=(",", ":"), sort_keys=True)
    severity = str(record.get("severity", ""))
    state_topic = t.alert_state(str(record["fingerprint"]))
    resolved = record.get("state") == "resolved"
    event = {"topic": t.alerts, "payload": payload, "qos": 1, "retain": 0, "severity": severity}
    return ([] if state_only else [event]) + [
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
                            outbox_undeliverable=0, refused=0)
        self._last_refusal: Optional[Dict[str, Any]] = None
        self._refused_mids: Dict[int, Any] = {}  # mid -> failure reason code, from on_publish
        self._refused_rows: Dict[int, float] = {}  # outbox row id -> when it was refused
        self._refusals_logged: set[int] = set()  # reason codes already logged
        # (outbox row id, paho MQTTMessageInfo) handed to paho and not yet acked; paho keeps
        # QoS 1 messages across reconnects and resends them (dup flag) until the PUBACK.
        self._inflight: List[Tuple[int, mqtt.MQTTMessageInfo]] = []
        self._acked: List[int] = []  # row ids acked, not yet deleted
        self._cursor = 0  # highest outbox id handed to paho
        self._commands: Queue[Optional[Tuple[str, bytes]]] = Queue(_COMMAND_QUEUE)
        self._supervisor: Optional[Supervisor] = None
        self._own_supervisor = False
        self._listening = False
        self._on_connect_messages: List[Callable[[], Sequence[Tuple[str, str]]]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, supervisor: Optional[Supervisor] = None, *,
              command_handler: Optional[CommandHandler] = None) -> None:
        """Connect in the background (never blocks) and start the outbox and command workers.

        The workers run under ``supervisor`` (the agent's, which stops them before
        :meth:`close`), or under the link's own when none is given.
        """
        if self._client is not None:
            return
        if command_handler is not None:
            self._handler = command_handler
        settings = self._settings()
        client = build_client(settings)
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
        client.connect_async(**self._connect_kwargs(settings))
        client.loop_start()
        self._own_supervisor = supervisor is None
        sup = self._supervisor = supervisor if supervisor is not None else Supervisor()
        sup.spawn("edgewatch-mqtt-outbox", self._pump_step, backoff_s=_POLL_S)
        sup.spawn("edgewatch-mqtt-commands", self._command_step)
        sup.spawn("edgewatch-mqtt-network", self._network_step, interval_s=_NETWORK_CHECK_S)

    def _settings(self) -> ClientSettings:
        """The paho client's settings: a clean session (the outbox is in SQLite), last will."""
        cfg = self._config
        return ClientSettings(
            host=cfg.host, client_id=cfg.device_id, port=cfg.port, keepalive=cfg.keepalive,
            protocol=cfg.protocol, username=cfg.username, password=cfg.password, tls=cfg.tls,
            ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file,
            tls_insecure=cfg.tls_insecure, will=Will(self.topics.status, OFFLINE),
            reconnect_min_s=cfg.reconnect_min_s, reconnect_max_s=cfg.reconnect_max_s,
            max_inflight=cfg.max_inflight)

    def _connect_kwargs(self, settings: ClientSettings) -> Dict[str, Any]:
        """``connect_async`` arguments; under MQTT 5 with our Maximum Packet Size."""
        kwargs = settings.connect_kwargs()
        if settings.v5:
            kwargs["properties"].MaximumPacketSize = self.max_packet_bytes
        return kwargs

    @property
    def max_packet_bytes(self) -> int:
        """The largest packet this device accepts (announced to MQTT 5 brokers)."""
        return self._config.max_payload_kb * 1024 + PACKET_OVERHEAD

    def close(self, timeout: float = 2.0) -> None:
        """Publish retained ``offline`` (waiting at most ``timeout``) and disconnect.

        The workers stop here when the link runs its own supervisor; under the agent's they
        go idle and stop with it.
        """
        client = self._client
        if client is None:
            return
        self._stop.set()
        self._wake.set()
        try:
            self._commands.put_nowait(None)
        except Full:
            pass
        if self._supervisor is not None and self._own_supervisor:
            self._supervisor.stop(timeout)
        self._supervisor = None
        if self._connected:
            info = client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.debug("mqtt: offline status not confirmed: %s", exc)
        stop_client(client, timeout)
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

    def publish_on_connect(self, messages: Callable[[], Sequence[Tuple[str, str]]]) -> None:
        """Publish ``messages()`` (topic, payload pairs; retained, QoS 1) on every connect."""
        self._on_connect_messages.append(messages)

    def publish_retained(self, topic: str, payload: str) -> bool:
        """Publish a retained QoS 1 message if connected (False when not)."""
        return self.publish_bytes(topic, payload.encode(), retain=True)

    def publish_bytes(self, topic: str, payload: bytes, qos: int = 1,
                      retain: bool = False) -> bool:
        """Queue raw bytes (a sample's chunk) with paho; False when not connected."""
        client = self._client
        if client is None or not self._connected:
            return False
        return bool(client.publish(topic, payload, qos=qos, retain=retain).rc
                    == mqtt.MQTT_ERR_SUCCESS)

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
                inflight=len(self._inflight), last_refusal=self._last_refusal,
                refused_pending=len(self._refused_rows), **self._counts,
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
        for messages in self._on_connect_messages:  # Home Assistant discovery
            for topic, payload in messages():
                client.publish(topic, payload, qos=1, retain=True)
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
        # Called with paho's message lock held, before paho marks the message published: note
        # a refusal and wake the pump, which checks its infos.
        if reason is not None and getattr(reason, "is_failure", False):
            with self._lock:
                self._refused_mids[mid] = reason
        self._wake.set()

    def refusal_observation(self, now: float) -> Observation:
        """``device_health``/``mqtt_refused``: breach while refused rows wait over a minute."""
        pending = self.refusal_pending_s(now)
        with self._lock:
            last = self._last_refusal or {}
            rows = len(self._refused_rows)
        summary = (f"broker refuses this device's messages ({rows} kept in the outbox, PUBACK "
                   f"{last.get('code')} {last.get('reason')}; check the broker ACL and that "
                   f"the MQTT username is the device id {self._config.device_id!r})"
                   if rows else "broker accepts this device's messages")
        return Observation(kind="device_health", feature="mqtt_refused", metric="refused_for_s",
                           value=pending, threshold=REFUSED_ALERT_S,
                           breach=pending >= REFUSED_ALERT_S, clear=rows == 0, summary=summary,
                           window=Window(now, now, 0))

    def refusal_pending_s(self, now: float) -> float:
        """How long the oldest refused row still in the outbox has waited (0 when none)."""
        with self._lock:
            oldest = min(self._refused_rows.values(), default=None)
        return 0.0 if oldest is None else max(0.0, now - oldest)

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

    def _command_step(self) -> None:
        """Answer one queued command, if any (a supervised worker's step)."""
        try:
            item = self._commands.get(timeout=_POLL_S)
        except Empty:
            return
        if item is None or self._stop.is_set():
            return
        verb, payload = item
        with self._lock:
            self._counts["commands"] += 1
        limit = self._config.max_payload_kb * 1024
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
            except Exception as exc:  # answered, then counted by the supervisor
                self._publish_result({"id": None, "verb": verb, "ok": False, "ts": self._clock(),
                                      "error": f"command failed: {type(exc).__name__}: {exc}"})
                raise
        self._publish_result(result)

    def _network_step(self) -> None:
        """Check that paho's network thread is alive; restart it (and count it) if it died."""
        client = self._client
        if client is None or self._stop.is_set():
            return
        thread = getattr(client, "_thread", None)  # paho's loop_start() thread
        if thread is not None and thread.is_alive():
            return
        client.loop_stop()
        # paho 2.x's loop_start() makes a new wake-up socket pair without closing the old one.
        reset = getattr(client, "_reset_sockets", None)
        if reset is not None:
            reset(sockpair_only=True)
        client.loop_start()
        raise ConnectionError("paho network thread had died; restarted it")

    def _publish_result(self, result: Mapping[str, Any]) -> None:
        client = self._client
        if client is None:
            return
        data = json.dumps(result, separators=(",", ":"), default=str)
        client.publish(self.topics.cmd_result, data, qos=1)

    def _collect_acks(self) -> None:
        refused: List[Tuple[int, Any]] = []
        with self._lock:
            done = [(row, info) for row, info in self._inflight if info.is_published()]
            if self._refused_mids:  # forget refusals of messages not ours (status, results)
                mine = {info.mid for _, info in self._inflight}
                self._refused_mids = {m: r for m, r in self._refused_mids.items() if m in mine}
            if not done:
                return
            self._inflight = [(r, i) for r, i in self._inflight if not i.is_published()]
            now = self._clock()
            for row, info in done:
                reason = self._refused_mids.pop(info.mid, None)
                if reason is None:
                    self._acked.append(row)
                    self._refused_rows.pop(row, None)
                    self._counts["published"] += 1
                    continue
                self._counts["refused"] += 1
                self._refused_rows.setdefault(row, now)
                self._last_refusal = {"code": int(reason.value), "reason": str(reason),
                                      "ts": now}
                refused.append((row, reason))
        for row, reason in refused:
            self._log_refusal(row, reason)

    def _log_refusal(self, row: int, reason: Any) -> None:
        """One line per reason code (not per row): the reason and the likely fix."""
        code = int(reason.value)
        if code in self._refusals_logged:
            return
        self._refusals_logged.add(code)
        cfg = self._config
        log.error("mqtt %s:%d refused outbox row %d: PUBACK %d %s; the row is kept and "
                  "retried every %.0f s (check the broker's ACL lets user %r write %s/#: with "
                  "the example ACL the username must equal the device id %r)", cfg.host,
                  cfg.port, row, code, reason, REFUSED_RETRY_S,
                  cfg.username, self.topics.base, cfg.device_id)

    def _retry_refused(self) -> None:
        """Offer refused rows again once they have waited :data:`REFUSED_RETRY_S`."""
        client = self._client
        now = self._clock()
        with self._lock:
            due = sorted(r for r, t in self._refused_rows.items() if now - t >= REFUSED_RETRY_S)
        for row_id in due:
            if client is None or not self._connected:
                return
            rows = self._store.outbox_after(row_id - 1, 1)
            with self._lock:
                self._refused_rows.pop(row_id, None)
            if not rows or rows[0].id != row_id:
                continue  # dropped by the outbox bounds meanwhile
            row = rows[0]
            info = client.publish(row.topic, row.payload if row.payload is not None else "",
                                  qos=row.qos, retain=row.retain)
            with self._lock:
                self._inflight.append((row.id, info))

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

    def _pump_step(self) -> None:
        """Wait for new outbox rows (or acks), then publish (a supervised worker's step)."""
        self._wake.wait(_POLL_S)
        self._wake.clear()
        if self._stop.is_set():
            return
        self._flush_acks()
        self._retry_refused()
        self._publish_rows()  # a failure is counted by the supervisor; the rows stay in SQLite

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
