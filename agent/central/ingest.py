"""From one MQTT message to rows: parse, store, queue what the operator must hear.

:class:`Ingest` runs on the central's writer thread only. For each message it parses a typed
record (:mod:`agent.central.records`; a refusal is counted by reason and the message
skipped), applies it through :class:`~agent.central.store.CentralStore` in one transaction,
and in the same transaction queues the webhook notifications it causes: a new alert
transition (not a QoS 1 duplicate), a device going offline (last will or overdue heartbeat)
or coming back online. Each notification has a group (``device/offline``,
``alert/firing/data_drift``, ...: ``group_by`` labels) and waits ``group_wait_s`` before it is
due, and ``group_interval_s`` after its group last went out, so that a storm (300 cameras
going dark at dusk) leaves as one webhook call per group and window.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from .notify import DEFAULT_GROUP_BY, alert_body, alert_group, device_body
from .records import (
    DEFAULT_LIMITS,
    REASONS,
    AlertTransition,
    BadMessage,
    ClearedState,
    CommandResult,
    CommandSent,
    Heartbeat,
    Limits,
    Record,
    Status,
    parse,
)
from .store import CentralStore, DeviceChange

log = logging.getLogger(__name__)

__all__ = ["Ingest", "TOPICS", "topic_kind"]

#: The ``topic`` label of ``edgewatch_fleet_messages_total``: what follows the device id.
TOPICS = ("status", "heartbeat", "alerts", "alert_state", "cmd", "cmd_result", "other")

_COUNTS = ("messages", "alerts", "alert_duplicates", "heartbeats", "status", "results",
           "commands", "went_offline", "came_online")


def topic_kind(prefix: str, topic: str) -> str:
    """The topic's kind (one of :data:`TOPICS`), a bounded label whatever a device sends."""
    rest = topic[len(prefix) + 1:].split("/", 1)[1:] if topic.startswith(prefix + "/") else []
    kind = rest[0] if rest else ""
    if kind in ("status", "heartbeat", "alerts"):
        return kind
    if kind.startswith("alerts/state/"):
        return "alert_state"
    if kind == "cmd/result":
        return "cmd_result"
    return "cmd" if kind.startswith("cmd/") else "other"


class Ingest:
    """Applies messages to the store; counters of what was kept and what was refused."""

    def __init__(self, store: CentralStore, prefix: str, *, notify: bool,
                 offline_after: Optional[float] = None, limits: Limits = DEFAULT_LIMITS,
                 group_wait_s: float = 0.0, group_interval_s: float = 0.0,
                 group_by: Sequence[str] = DEFAULT_GROUP_BY, targets: Sequence[str] = ("",),
                 clock: Callable[[], float]) -> None:
        self.store, self.prefix, self.notify = store, prefix, notify
        self.offline_after, self.limits, self._clock = offline_after, limits, clock
        self.group_wait_s, self.group_interval_s = group_wait_s, group_interval_s
        self.group_by, self.targets = tuple(group_by), tuple(targets)  # one row per webhook
        self.counts: Dict[str, int] = dict.fromkeys(_COUNTS, 0)
        self._work = self.counts
        self.bad: Dict[str, int] = {}
        self.topics: Dict[str, int] = dict.fromkeys(TOPICS, 0)  # every message, kept or not
        self._bad_logged: set[str] = set()

    @property
    def bad_total(self) -> int:
        """Messages refused, all reasons."""
        return sum(self.bad.values())

    def handle(self, topic: str, payload: bytes) -> int:
        """Parse and store one message; how many notifications (or device changes) it caused."""
        self.counts["messages"] += 1
        self.topics[topic_kind(self.prefix, topic)] += 1
        try:
            record = parse(self.prefix, topic, payload, self.limits)
        except BadMessage as exc:
            self._refused(topic, exc)
            return 0
        with self._committed():
            return self._apply(record, self._clock())

    @contextlib.contextmanager
    def _committed(self) -> Iterator[None]:
        """A transaction whose counters (bumped in ``_work``) show only once it has committed."""
        self._work = dict(self.counts)
        with self.store.transaction():
            yield
        self.counts = self._work

    def _refused(self, topic: str, exc: BadMessage) -> None:
        assert exc.reason in REASONS
        self.bad[exc.reason] = self.bad.get(exc.reason, 0) + 1
        device = topic[len(self.prefix) + 1:].split("/", 1)[0][:128]
        key = f"{device}/{exc.reason}"
        if key not in self._bad_logged:  # once per device and reason: a flood is one line
            self._bad_logged.add(key)
            log.warning("central: skipped a bad message on %r: %s (further ones from this "
                        "device for this reason are counted, not logged)", topic[:200], exc)

    def _apply(self, record: Record, now: float) -> int:
        changes: List[Optional[DeviceChange]] = []
        queued = 0
        if isinstance(record, Status):
            self._work["status"] += 1
            reason = "online" if record.online else "last will or clean shutdown"
            changes.append(self.store.set_online(record.device, record.online, reason, now))
        elif isinstance(record, Heartbeat):
            self._work["heartbeats"] += 1
            changes.append(self.store.put_heartbeat(record, now))
        elif isinstance(record, AlertTransition):
            if self.store.put_alert(record, now):
                self._work["alerts"] += 1
                if self.notify:
                    self.store.enqueue("alert", alert_group(record, self.group_by),
                                       record.device, alert_body(record), now,
                                       self.group_wait_s, self.group_interval_s, self.targets)
                    queued += 1
            else:
                self._work["alert_duplicates"] += 1
        elif isinstance(record, ClearedState):
            self.store.resolve_cleared(record.device, record.fingerprint, now)
        elif isinstance(record, CommandSent):
            self._work["commands"] += 1
            self.store.put_command(record, now)
        elif isinstance(record, CommandResult):
            self._work["results"] += 1
            self.store.put_result(record, now)
        return queued + self._changed([c for c in changes if c is not None], now)

    def _changed(self, changes: List[DeviceChange], now: float) -> int:
        for change in changes:
            self._work["came_online" if change.online else "went_offline"] += 1
            log.info("central: device %s %s (%s)", change.device,
                     "back online" if change.online else "offline", change.reason)
            if self.notify:
                group = f"device/{'online' if change.online else 'offline'}"
                self.store.enqueue("device", group, change.device, device_body(change), now,
                                   self.group_wait_s, self.group_interval_s, self.targets)
        return len(changes)

    def check_overdue(self) -> int:
        """Mark online devices whose heartbeat is overdue offline; how many changed."""
        now = self._clock()
        changes: List[DeviceChange] = []
        with self._committed():
            for device, since, last, interval in self.store.online_devices():
                limit = self.offline_after or (3 * interval if interval else None)
                if limit is None:
                    continue  # no heartbeat interval known yet: rely on the last will
                if now - (last or since) > limit:
                    change = self.store.set_online(device, False,
                                                   f"heartbeat overdue (> {limit:.0f} s)", now)
                    if change is not None:
                        changes.append(change)
            return self._changed(changes, now)
