"""Operator commands applied to the database when no agent runs (the CLI's fallback).

The command goes through the same validation (:func:`agent.commands.handle_command`) and the
same :class:`~agent.alerts.AlertManager` the agent would use, restored from the database as
the agent restores it at start; the manager's controls and transitions are written through
the named :class:`~agent.store.Store` methods, with the database lock held. A database that
does not exist is an error (a typo'd ``--db`` never creates an empty one).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Dict, List, Optional

from .alerts import AlertManager
from .commands import handle_command
from .config import Config
from .errors import CommandError, StoreError
from .monitor import KNOWN_FEATURES
from .records import AlertTransition
from .store import Store, fault_fix


class OfflineControls:
    """The operator API over an AlertManager restored from the database (no monitor)."""

    def __init__(self, alerts: AlertManager, now: float) -> None:
        self._alerts = alerts
        self._now = now

    def ack(self, alert: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Acknowledge a firing alert."""
        return self._alerts.ack(alert, by, self._now)

    def snooze(self, target: str, until: float, by: Optional[str] = None) -> Dict[str, Any]:
        """Snooze an alert, kind or feature until a unix time."""
        return self._alerts.snooze(target, until, by, self._now)

    def disable(self, target: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Disable alerts of a kind or feature (firing ones resolve)."""
        return self._alerts.disable(target, self._now, by)

    def enable(self, target: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Enable a kind or feature again."""
        return self._alerts.enable(target, by)

    def set_threshold(self, feature: str, value: float, metric: Optional[str] = None,
                      by: Optional[str] = None) -> Dict[str, Any]:
        """Override a feature's threshold."""
        return self._alerts.set_threshold(feature, value, metric or "", by)

    def rebaseline(self) -> Dict[str, Any]:
        """Only the running agent can learn a reference."""
        raise CommandError("rebaseline needs the running agent (start it, then retry)")

    def status(self) -> Dict[str, Any]:
        """Only the running agent has a live status."""
        raise CommandError("status needs the running agent (see edgewatch status)")

    def samples(self, alert: str, want: Optional[Any], chunk_kb: int) -> Dict[str, Any]:
        """Only the running agent sends samples (over MQTT); locally, use edgewatch samples."""
        raise CommandError("samples go over MQTT from the running agent (on the device, "
                           "use 'edgewatch samples export')")


def apply_offline(config: Config, verb: str, payload: Dict[str, Any]) -> Dict[str, Any]:
    """Run one command against the database of ``config`` with no agent running.

    AgentLockedError when an agent holds the database (ask it instead).
    """
    store = Store(config.store.path, create=False, maintain=False, lock_wait_s=0.0).start()
    try:
        answer = _run(config, store, verb, payload)
    finally:
        store.close()
    return answer


def _run(config: Config, store: Store, verb: str, payload: Dict[str, Any]) -> Dict[str, Any]:
    now = time.time()
    outbox = None
    if config.mqtt.enabled:
        from .mqtt import alert_outbox_messages, topics

        outbox = topics(config.mqtt.topic_prefix, config.mqtt.device_id)

    def emit(transition: AlertTransition) -> None:
        record = transition.to_dict()
        messages = alert_outbox_messages(outbox, record) if transition.notify and outbox else []
        store.put_alert(record, messages)

    def update(transition: AlertTransition) -> None:  # ack/snooze: the new retained state
        record = transition.to_dict()
        store.put_alert(record, alert_outbox_messages(outbox, record, state_only=True)
                        if outbox else [])

    writes: List[Any] = []
    alerts = AlertManager(device=config.device.id, camera=config.device.camera, model={},
                          emit=emit, repeat_interval_s=config.alerts.repeat_interval_s,
                          persist_control=lambda *c: writes.append(store.set_control(*c)),
                          update=update)
    alerts.declare_features(KNOWN_FEATURES)  # the agent's monitor declares the same names
    controls = [c for c in store.controls() if c["kind"] != "snooze" or (c["until"] or 0) > now]
    alerts.restore(store.open_alert_records(), controls, store.max_alert_seq())
    request = json.dumps({"id": "offline", **payload}).encode()
    answer = handle_command(verb, request, OfflineControls(alerts, now), clock=lambda: now)
    try:
        for future in [*writes, store.submit(lambda db: None)]:  # the last: after the alerts
            future.result(30)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot write {store.path}: {exc} ({fault_fix(exc, store.path)})"
                         ) from None
    error = store.stats()["last_error"]
    if error:
        raise StoreError(f"cannot write {store.path}: {error}")
    out: Dict[str, Any] = {"ok": bool(answer.get("ok")), "offline": True}
    out.update({"result": answer.get("result", {})} if answer.get("ok")
               else {"error": answer.get("error")})
    return out
