"""One factory for every paho-mqtt client edgewatch makes: the device, the central, the fleet CLI.

A :class:`ClientSettings` says everything about a connection: where (host, port, keepalive),
who (client id, credentials, client certificate), how (MQTT 5 or 3.1.1, a clean or a
persistent session, TLS), what happens when it drops (last will, reconnect delays) and how
much may be in flight, and whether the caller acknowledges received messages itself
(``manual_ack``). :func:`build_client` turns it into a paho 2.x client and
:meth:`ClientSettings.connect_kwargs` gives what ``connect``/``connect_async`` need, so that
session semantics are spelled once:

- MQTT 5: ``clean_start`` is ``not persistent`` and the ``SessionExpiryInterval`` property is
  ``session_expiry_s`` for a persistent session, 0 otherwise (the session ends with the
  connection).
- MQTT 3.1.1: ``clean_session`` is ``not persistent``; the broker decides how long it keeps
  the session.

A persistent session needs a fixed client id: the broker finds the session by it.

>>> s = ClientSettings(host="broker.local", client_id="cam-a", protocol="3.1.1")
>>> s.connect_kwargs()
{'host': 'broker.local', 'port': 1883, 'keepalive': 30}
>>> build_client(s).protocol == mqtt.MQTTv311
True
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["PROTOCOLS", "Will", "ClientSettings", "build_client", "stop_client",
           "read_password"]

PROTOCOLS = ("5", "3.1.1")
_WEEK_S = 7 * 86400


@dataclass(frozen=True)
class Will:
    """The last will the broker publishes when the connection drops without a DISCONNECT."""

    topic: str
    payload: str
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class ClientSettings:
    """Everything that shapes one MQTT connection; validated on construction."""

    host: str
    client_id: str
    port: int = 1883
    keepalive: int = 30
    protocol: str = "5"
    persistent: bool = False  # keep the session (subscriptions, queued QoS 1) across connections
    session_expiry_s: int = _WEEK_S  # MQTT 5 only: how long the broker keeps a persistent session
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    tls_insecure: bool = False
    will: Optional[Will] = None
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60
    max_inflight: int = 20
    max_queued: int = 0  # messages paho queues while offline; 0 = unlimited
    manual_ack: bool = False  # the caller PUBACKs each message itself (client.ack(mid, qos))

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"MQTT protocol must be one of {', '.join(PROTOCOLS)}, "
                              f"got {self.protocol!r}")
        if not self.host:
            raise ConfigError("MQTT broker host must not be empty")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"MQTT port must be between 1 and 65535, got {self.port}")
        if self.keepalive < 1:
            raise ConfigError(f"MQTT keepalive must be at least 1 second, got {self.keepalive}")
        if not 1 <= self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("MQTT reconnect delays must satisfy 1 <= min <= max, got "
                              f"{self.reconnect_min_s} and {self.reconnect_max_s}")
        if self.max_inflight < 1 or self.max_queued < 0:
            raise ConfigError("MQTT max_inflight must be >= 1 and max_queued >= 0")
        if self.persistent and not self.client_id:
            raise ConfigError("a persistent MQTT session needs a fixed client id")
        if self.password is not None and self.username is None:
            raise ConfigError("an MQTT password needs a username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("an MQTT client certificate and its key go together "
                              "(give both cert and key files)")
        if not self.tls and (self.ca_file or self.cert_file or self.tls_insecure):
            raise ConfigError("MQTT CA, client certificate and tls_insecure need TLS on")

    @property
    def v5(self) -> bool:
        """True for MQTT 5."""
        return self.protocol == "5"

    def connect_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``client.connect``/``connect_async`` (session semantics)."""
        kwargs: Dict[str, Any] = {"host": self.host, "port": self.port,
                                  "keepalive": self.keepalive}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.session_expiry_s if self.persistent else 0
            kwargs.update(clean_start=not self.persistent, properties=props)
        return kwargs

    def describe(self) -> str:
        """``host:port`` with the scheme, for log lines and errors (no secrets)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def build_client(s: ClientSettings) -> mqtt.Client:
    """A paho 2.x client (callback API version 2) configured from ``s``, not yet connected."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=s.client_id,
        protocol=mqtt.MQTTv5 if s.v5 else mqtt.MQTTv311,
        # MQTT 5 takes clean_start at connect time (connect_kwargs); paho wants None here.
        clean_session=None if s.v5 else not s.persistent,
    )
    if s.will is not None:
        client.will_set(s.will.topic, s.will.payload, qos=s.will.qos, retain=s.will.retain)
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if s.tls:
        client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
        if s.tls_insecure:
            log.warning("mqtt %s: TLS certificate checks are off (tls_insecure)", s.describe())
            client.tls_insecure_set(True)
    client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
    client.max_inflight_messages_set(s.max_inflight)
    client.max_queued_messages_set(s.max_queued)
    # Acknowledge only once the message is safe (the central: committed); with a persistent
    # session, one not acknowledged before a crash is delivered again.
    client.manual_ack_set(s.manual_ack)
    return client


def stop_client(client: mqtt.Client, timeout: float = 2.0) -> None:
    """Disconnect (waiting up to ``timeout`` for it), stop the network thread, close sockets.

    ``disconnect()`` then ``loop_stop()`` alone can stop the thread before it has sent the
    DISCONNECT and closed the socket; the socket then leaks until garbage collection.
    """
    gone = threading.Event()
    previous = client.on_disconnect

    def on_disconnect(*args: Any) -> None:
        gone.set()
        if previous is not None:
            previous(*args)

    client.on_disconnect = on_disconnect
    connected = client.is_connected()
    client.disconnect()  # also stops reconnect attempts
    if connected:
        gone.wait(timeout)
    client.loop_stop()
    # Also the wake-up socket pair loop_start() opened: paho closes it only in __del__, which
    # in a reference cycle (client <-> callbacks' owner) may run after the sockets' own
    # finalisers, leaking them. paho has no public call for it.
    client._reset_sockets()


def read_password(*, value: Optional[str] = None, env: Optional[str] = None,
                  file: Optional[str] = None) -> Optional[str]:
    """The broker password from at most one of: a value, an environment variable, a file.

    A file's trailing newline is dropped. Naming an unset variable or an unreadable file is
    an error, not an anonymous connection.
    """
    given = [name for name, v in (("password", value), ("password env", env),
                                  ("password file", file)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give the MQTT password one way, not {' and '.join(given)}")
    if env is not None:
        if env not in os.environ:
            raise ConfigError(f"environment variable {env} is not set (it should hold the "
                              "MQTT password)")
        return os.environ[env]
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                return fh.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read the MQTT password file: {file}: "
                              f"{exc.strerror or exc}") from None
    return value
