"""What ``edgewatch fleet`` shows and sends: device rows, open alerts, commands.

The rows are read from the central's database (:class:`~agent.central.store.CentralReader`)
and carry machine values (unix times, seconds, numbers); the CLI formats them for people.
:func:`send_command` is the request/response helper behind ``edgewatch fleet ack|snooze``:
it publishes to the device's command topic and waits for the result with the same id.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping

import paho.mqtt.client as mqtt

from ..errors import CommandError
from ..mqtt import topics
from ..mqttclient import ClientSettings, build_client, stop_client
from .records import heartbeat_fps
from .store import CentralReader

__all__ = ["fleet_rows", "open_alerts", "recent_commands", "send_command", "FLEET_VERBS"]

#: ``edgewatch fleet VERB``: the device command each sends.
FLEET_VERBS = {"ack": "ack", "snooze": "snooze", "disable": "disable", "enable": "enable",
               "set": "set_threshold", "rebaseline": "rebaseline"}


def fleet_rows(reader: CentralReader, now: float) -> List[Dict[str, Any]]:
    """One dict per device: state, since, heartbeat age, fps, temperature, open alerts."""
    out = []
    for row in reader.devices():
        hb = json.loads(row["heartbeat"]) if row["heartbeat"] else {}
        host = hb.get("host")
        host = host if isinstance(host, dict) else {}
        last = row["last_heartbeat_ts"]
        out.append({
            "device": row["device"], "online": bool(row["online"]), "since": row["since"],
            "reason": row["reason"], "heartbeat_age_s": (now - last) if last else None,
            "fps": heartbeat_fps(hb),
            "temperature_c": host.get("max_temp_c"), "open_alerts": int(row["open_alerts"]),
        })
    return out


_WHO = ("acknowledged_by", "acknowledged_at", "snoozed_by")


def open_alerts(reader: CentralReader) -> List[Dict[str, Any]]:
    """Firing alerts across devices, oldest first, with their ack and snooze state and who.

    ``id`` is the alert's full id; every view prints its first 12 characters, which
    ``fleet ack`` and the device's ``alerts ack`` both take.
    """
    rows = reader.open_alerts()
    for row in rows:
        row["acknowledged"] = bool(row["acknowledged"])
        try:
            record = json.loads(row.pop("payload", None) or "{}")
        except ValueError:
            record = {}
        for key in _WHO:  # checked by agent.central.records when it was received
            row[key] = record.get(key) if isinstance(record, dict) else None
    return rows


def recent_commands(reader: CentralReader, limit: int = 20) -> List[Dict[str, Any]]:
    """The latest commands, newest first: ``ok`` is None while no result has come back."""
    rows = reader.recent_commands(limit)
    for row in rows:
        row["ok"] = None if row["ok"] is None else bool(row["ok"])
    return rows


def send_command(settings: ClientSettings, device: str, verb: str, body: Mapping[str, Any], *,
                 timeout: float = 10.0, prefix: str = "edgewatch/v1") -> Dict[str, Any]:
    """Publish a command to ``device`` and wait for its result (matched by request id)."""
    t = topics(prefix, device)
    request = {"id": uuid.uuid4().hex, **body}
    got: Dict[str, Any] = {}
    done, subscribed = threading.Event(), threading.Event()
    refused: List[str] = []
    client = build_client(settings)

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any = None) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            done.set()
            subscribed.set()
        else:
            c.subscribe(t.cmd_result, qos=1)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            result = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(result, dict) and result.get("id") == request["id"]:
            got.update(result)
            done.set()

    client.on_connect, client.on_message = on_connect, on_message
    client.on_subscribe = lambda *a: subscribed.set()
    deadline = time.monotonic() + timeout
    where = settings.describe()
    try:
        client.connect(**settings.connect_kwargs())
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandError(f"cannot reach broker {where}: {why} (check --broker and --port, "
                           "or [mqtt] in --config)") from None
    client.loop_start()
    try:
        if not subscribed.wait(max(0.0, deadline - time.monotonic())):
            raise CommandError(f"no answer from broker {where} within {timeout:.0f} s")
        if refused:
            raise CommandError(f"broker {where} refused the connection: {refused[0]} "
                               "(check the username, password and certificate)")
        client.publish(t.command(verb), json.dumps(request), qos=1)
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise CommandError(f"no result from {device} within {timeout:.0f} s "
                               f"(is it online? see 'edgewatch fleet')")
        return got
    finally:
        stop_client(client)
