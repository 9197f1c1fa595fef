"""The central service: the MQTT client, the writer, the webhook sender, the overdue check.

Threads, each supervised (:mod:`agent.supervise`: failures counted, logged once per interval,
reported in :meth:`Central.status` and ``edgewatch fleet``):

- paho's network loop only queues messages (a bounded queue; overflow counted); a message is
  acknowledged to the broker (manual PUBACK) only once the writer has committed it, so with a
  persistent session (``client_id``) a worker killed mid-message loses nothing: the broker
  delivers it again and the database's keys make the second delivery a no-op;
- ``edgewatch-central-db`` (critical) is the one writer: it applies each message through
  :class:`~agent.central.ingest.Ingest` and runs the other threads' store operations;
  after ``max_consecutive`` failures in a row the central gives up (``on_fatal``) and
  ``edgewatch central`` exits non-zero so that systemd restarts it;
- ``edgewatch-central-webhook`` posts notifications from the database;
- ``edgewatch-central-alertmanager`` posts open and resolved alerts to Alertmanager
  (:mod:`agent.central.alertmanager`), every interval and on each change;
- ``edgewatch-central-overdue`` marks silent devices offline and saves the status row;
- with ``metrics_port``, prometheus-client's server thread answers ``/metrics`` from the
  database (:mod:`agent.central.metrics`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import paho.mqtt.client as mqtt

from ..errors import CommandError
from ..mqttclient import ClientSettings, build_client, stop_client
from ..supervise import Supervisor
from .alertmanager import AlertmanagerSender
from .ingest import Ingest
from .metrics import FleetCollector, MetricsServer
from .notify import DEFAULT_GROUP_BY, WebhookSender, check_group_by, webhook_targets
from .store import CentralStore

log = logging.getLogger(__name__)

__all__ = ["Central"]

_QUEUE = 10000
_CHECK_S = 1.0
_STATUS_EVERY_S = 5.0


@dataclass
class _Op:
    """A store operation another thread asks the writer to run."""

    fn: Callable[[CentralStore], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Optional[BaseException] = None


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    generation: int = 0  # the connection it came on: a packet id means nothing on another


class Central:
    """Follows every device under ``prefix`` on one broker into ``db_path``.

    ``settings`` (from :mod:`agent.mqttclient`) replaces the broker arguments when given.
    """

    def __init__(self, host: str, port: int = 1883, db_path: str = "edgewatch-central.db", *,
                 prefix: str = "edgewatch/v1", webhook: Optional[str] = None,
                 webhooks: Sequence[str] = (), share: Optional[str] = None, username: Optional[str] = None,
                 password: Optional[str] = None, tls_ca: Optional[str] = None,
                 cert_file: Optional[str] = None, key_file: Optional[str] = None,
                 protocol: str = "5", offline_after: Optional[float] = None,
                 client_id: Optional[str] = None, keepalive: int = 30,
                 notify_expire_s: float = 86400.0, webhook_backoff_s: float = 1.0,
                 keep_history_s: float = 30 * 86400.0, group_wait_s: float = 5.0,
                 group_interval_s: float = 30.0,
                 group_by: Sequence[str] = DEFAULT_GROUP_BY, max_consecutive: int = 10,
                 on_fatal: Optional[Callable[[str], None]] = None,
                 settings: Optional[ClientSettings] = None,
                 metrics_port: Optional[int] = None, metrics_host: str = "127.0.0.1",
                 alertmanager: Optional[str] = None, alertmanager_interval_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        if offline_after is not None and offline_after <= 0:
            raise CommandError(f"--offline-after must be > 0 seconds, got {offline_after}")
        # Each "[FORMAT=]URL"; ``webhook`` first, so that it keeps the notifications queued
        # before there were several.
        self.webhooks = webhook_targets([*([webhook] if webhook is not None else []),
                                         *webhooks])
        self.db_path, self.prefix = db_path, prefix
        self.share, self.offline_after, self._clock = share, offline_after, clock
        self._notify_expire_s, self._webhook_backoff_s = notify_expire_s, webhook_backoff_s
        if keep_history_s <= 0:
            raise CommandError(f"history retention must be > 0 seconds, got {keep_history_s}")
        self.keep_history_s = keep_history_s
        if min(group_wait_s, group_interval_s) < 0:
            raise CommandError("group wait and interval must be >= 0 seconds, got "
                               f"{group_wait_s} and {group_interval_s}")
        self.group_wait_s, self.group_interval_s = group_wait_s, group_interval_s
        self.group_by = check_group_by(group_by)
        # A given client id means a persistent session: the broker queues QoS 1 alerts while
        # the central is down. Without one, a random id and a clean session.
        self.settings = replace(settings or ClientSettings(
            host=host, port=port, keepalive=keepalive, protocol=protocol,
            client_id=client_id or f"edgewatch-central-{uuid.uuid4().hex[:8]}",
            persistent=client_id is not None, username=username, password=password,
            tls=bool(tls_ca or cert_file), ca_file=tls_ca, cert_file=cert_file,
            key_file=key_file, reconnect_max_s=30), manual_ack=True)
        self._client = self._build_client()
        self._generation = 0
        self._queue: queue.Queue[Union[_Message, _Op]] = queue.Queue(_QUEUE)
        self._pending: Optional[_Message] = None
        self._supervisor = Supervisor(max_consecutive=max_consecutive, on_fatal=on_fatal)
        self._store: Optional[CentralStore] = None
        self._ingest: Optional[Ingest] = None
        self._senders: List[WebhookSender] = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker has acknowledged the subscriptions
        self.dropped = 0
        self.broker_error: Optional[str] = None
        self._next_status, self._saved_connected = 0.0, False
        # Both checked here (URL, port range): a bad flag fails before anything starts.
        self._alertmanager = None if alertmanager is None else AlertmanagerSender(
            alertmanager, db_path, interval_s=alertmanager_interval_s, clock=clock)
        self._metrics = None if metrics_port is None else MetricsServer(
            FleetCollector(db_path, self._counters, clock=clock), metrics_host, metrics_port)

    def _build_client(self) -> mqtt.Client:
        if self.share and not self.settings.persistent:
            log.warning("central: --share without --client-id: a clean session, so messages "
                        "in flight when this worker dies are lost (give each worker a fixed "
                        "--client-id)")
        client = build_client(self.settings)  # manual_ack: PUBACK once committed (_ack)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def subscriptions(self) -> List[str]:
        """The topic filters the central subscribes to.

        With ``share``, the streams (heartbeats, transitions, commands) are shared: each
        message goes to one worker of the group. The retained topics (device status, current
        alert state) stay plain: a broker does not deliver retained messages through a shared
        subscription, and every worker must converge on them after a restart.
        """
        p = self.prefix
        shared = f"$share/{self.share}/" if self.share else ""
        return [f"{p}/+/status", f"{shared}{p}/+/heartbeat", f"{shared}{p}/+/alerts",
                f"{p}/+/alerts/state/#", f"{shared}{p}/+/cmd/+"]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Central:
        """Open the database, start the threads, connect (retrying in the background)."""
        self._store = CentralStore(self.db_path)
        if self._metrics is not None:
            try:
                self._metrics.start()
            except BaseException:
                self._store.close()
                self._store = None
                raise
        self._ingest = Ingest(self._store, self.prefix, notify=bool(self.webhooks),
                              targets=[t.key for t in self.webhooks],
                              offline_after=self.offline_after,
                              group_wait_s=self.group_wait_s,
                              group_interval_s=self.group_interval_s, group_by=self.group_by,
                              clock=self._clock)
        sup = self._supervisor
        sup.spawn("edgewatch-central-db", self._write_step, critical=True, backoff_s=0.5)
        sup.spawn("edgewatch-central-overdue", self._periodic, interval_s=_CHECK_S)
        for i, target in enumerate(self.webhooks):
            sender = WebhookSender(target.url, self.db_path, self.run_in_writer,
                                   fmt=target.format, keys=(target.key, "") if i == 0
                                   else (target.key,), expire_s=self._notify_expire_s,
                                   backoff_s=self._webhook_backoff_s, clock=self._clock)
            self._senders.append(sender)
            sup.spawn("edgewatch-central-webhook" + (f"-{i + 1}" if i else ""), sender.step,
                      backoff_s=1.0)
        if self._alertmanager is not None:
            sup.spawn("edgewatch-central-alertmanager", self._alertmanager.step, backoff_s=1.0)
        self._connect()
        return self

    @property
    def metrics_port(self) -> Optional[int]:
        """The port ``/metrics`` is served on (the bound one when 0 was asked), or None."""
        return None if self._metrics is None else self._metrics.port

    def _counters(self) -> Dict[str, Any]:
        ingest = self._ingest
        webhook_failures: Dict[str, int] = {}
        for sender in self._senders:
            fmt = sender.format
            webhook_failures[fmt] = webhook_failures.get(fmt, 0) + sender.counts["failed_attempts"]
        am = self._alertmanager.counts if self._alertmanager is not None else {}
        return {"topics": dict(ingest.topics) if ingest is not None else {},
                "bad": dict(ingest.bad) if ingest is not None else {}, "dropped": self.dropped,
                "alertmanager_posts": am.get("posts", 0),
                "alertmanager_failures": am.get("failed_attempts", 0),
                "webhook_failures": webhook_failures}

    def _connect(self) -> None:
        try:
            # The first attempt in the foreground: its error says why (refused, no route,
            # DNS). paho's loop then retries with backoff whatever happened here.
            self._client.connect(**self.settings.connect_kwargs())
        except (OSError, ValueError) as exc:
            self._broker_down(f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc))
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect, write what is queued, stop the threads."""
        self.connected.clear()  # a requested disconnect is not a lost connection
        if self._metrics is not None:
            self._metrics.stop()
        stop_client(self._client)
        with self._queue.all_tasks_done:
            self._queue.all_tasks_done.wait_for(lambda: not self._queue.unfinished_tasks,
                                                timeout)
        self._supervisor.stop_event.set()  # then woken, the senders' steps do not wait again
        for sender in (*self._senders, self._alertmanager):
            if sender is not None:
                sender.wake()
        self._supervisor.stop(timeout)
        for sender in (*self._senders, self._alertmanager):
            if sender is not None:
                sender.close()
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Central:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def fatal(self) -> Optional[str]:
        """Why the central gave up (a critical thread kept failing), or None."""
        return self._supervisor.fatal

    def status(self) -> Dict[str, Any]:
        """Counters of messages handled and refused, threads, webhook delivery."""
        ingest = self._ingest
        out: Dict[str, Any] = dict(ingest.counts) if ingest is not None else {}
        out.update(
            connected=self.connected.is_set(), broker=self.settings.describe(),
            broker_error=self.broker_error, queue_depth=self._queue.qsize(),
            dropped=self.dropped, bad=dict(ingest.bad) if ingest is not None else {},
            bad_messages=ingest.bad_total if ingest is not None else 0,
            threads=self._supervisor.health(), thread_failures=self._supervisor.failures(),
            fatal=self._supervisor.fatal, ts=self._clock())
        if self._senders:  # the first webhook's as before; every one's under "webhooks"
            out.update({f"webhook_{k}": v for k, v in self._senders[0].status().items()})
            out["webhooks"] = [sender.status() for sender in self._senders]
        if self._alertmanager is not None:
            out.update({f"alertmanager_{k}": v for k, v in self._alertmanager.status().items()})
        return out

    # -- network thread ---------------------------------------------------------------------

    def _broker_down(self, why: str) -> None:
        if why != self.broker_error:
            log.warning("central: cannot reach broker %s: %s (retrying every %d-%d s)",
                        self.settings.describe(), why, self.settings.reconnect_min_s,
                        self.settings.reconnect_max_s)
        self.broker_error = why

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if reason.is_failure:
            self._broker_down(f"the broker refused the connection: {reason} (check the "
                              "username, password and client certificate)")
            return
        self._generation += 1
        client.subscribe([(f, 1) for f in self.subscriptions()])
        log.info("central: connected to %s", self.settings.describe())
        self.broker_error = None
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any = None) -> None:
        self.subscribed.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._broker_down(self.broker_error or "connection failed (broker down, wrong host or "
                          "port, or a TLS handshake error)")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        if self.connected.is_set():
            log.warning("central: connection to %s lost: %s", self.settings.describe(), reason)
        self.connected.clear()
        self.subscribed.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            # Back-pressure on the broker for a while before dropping.
            self._queue.put(_Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos,
                                     self._generation), timeout=5.0)
        except queue.Full:
            # Counted and acknowledged: an unacknowledged message would hold one of the
            # broker's in-flight slots for the rest of the connection.
            self.dropped += 1
            client.ack(msg.mid, msg.qos)

    # -- the writer and the periodic check ---------------------------------------------------

    def run_in_writer(self, fn: Callable[[CentralStore], Any], timeout: float = 30.0) -> Any:
        """Run ``fn(store)`` on the writer thread and return its result (or raise its error)."""
        op = _Op(fn)
        self._queue.put(op, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not op.done.wait(0.1):
            if self._supervisor.stop_event.is_set() or time.monotonic() > deadline:
                raise TimeoutError("the central's writer did not run the operation "
                                   "(stopping, or busy for longer than "
                                   f"{timeout:.0f} s)")
        if op.error is not None:
            raise op.error
        return op.result

    def _write_step(self) -> None:
        assert self._ingest is not None and self._store is not None
        item: Union[_Message, _Op, None] = self._pending
        if item is None:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                return
        try:
            if isinstance(item, _Op):
                self._run_op(item)
            else:
                # Kept until applied: a failure (disk full, say) retries it after a backoff.
                self._pending = item
                if self._ingest.handle(item.topic, item.payload):
                    self._wake_senders()
                if self._alertmanager is not None and "/alerts" in item.topic:
                    self._alertmanager.wake()
                self._pending = None
                self._ack(item)
        finally:
            if self._pending is None:
                self._queue.task_done()

    def _ack(self, msg: _Message) -> None:
        """PUBACK a committed message, on the connection it came on (else it comes again)."""
        if msg.qos and msg.generation == self._generation:
            self._client.ack(msg.mid, msg.qos)

    def _run_op(self, op: _Op) -> None:
        assert self._store is not None
        try:
            op.result = op.fn(self._store)
        except BaseException as exc:
            op.error = exc
            raise
        finally:
            op.done.set()

    def _periodic(self) -> None:
        ingest = self._ingest
        assert ingest is not None
        self._supervisor.check()  # a dead thread is noticed (and logged) within a second

        def check(store: CentralStore) -> int:
            changed = ingest.check_overdue()
            now, connected = time.monotonic(), self.connected.is_set()
            if now >= self._next_status or connected != self._saved_connected:
                self._next_status = now + _STATUS_EVERY_S
                self._saved_connected = connected
                with store.transaction():
                    pruned = store.prune(self._clock() - self.keep_history_s)
                    store.put_status(self.status())
                if pruned:
                    log.info("central: dropped %d heartbeats and commands older than %.0f days",
                             pruned, self.keep_history_s / 86400)
            return changed

        if self.run_in_writer(check):
            self._wake_senders()

    def _wake_senders(self) -> None:
        for sender in self._senders:
            sender.wake()

    def check_overdue(self) -> int:
        """Mark online devices whose heartbeat is overdue offline now; how many changed."""
        assert self._ingest is not None
        ingest = self._ingest
        return int(self.run_in_writer(lambda store: ingest.check_overdue()))
