"""The central's Prometheus endpoint (``edgewatch central --metrics-port N``): the fleet's metrics.

Devices behind NAT are not scraped one by one: the central serves the whole fleet from its
database at scrape time (:class:`FleetCollector`, a custom ``prometheus_client`` collector;
nothing is computed between scrapes). Because the gauges come from the database, every
worker of a shared subscription on one PostgreSQL serves the same, whole fleet, whichever
share of the messages it handled; the counters (``edgewatch_fleet_messages_total``,
``..._rejected_total``) are the worker's own, as a process's counters are in Prometheus:
``sum()`` them over the workers' ``instance``.

The gauges, each labelled ``device`` (the device ids the central has seen):

- ``edgewatch_fleet_devices{state}``: devices online and offline;
- ``edgewatch_fleet_device_online``: 1 online, 0 offline (last will or overdue heartbeat);
- ``edgewatch_fleet_heartbeat_age_seconds``: since the central received its last heartbeat;
- ``edgewatch_fleet_fps``: the heartbeat's ``summary.fps`` (schema 3; older heartbeats'
  ``camera`` fps fields), absent when the device reports none or is offline;
- ``edgewatch_fleet_drift_score_max``: ``summary.worst_drift`` (distance over threshold of
  the worst feature; >= 1 is over its threshold), 0 when the heartbeat has none; absent
  while the device is offline (its last figures are not its state);
- ``edgewatch_fleet_alerts{kind,severity}``: open (firing) alerts; every kind of
  :data:`agent.records.KINDS` a device has no open alert of is a 0 with no severity, so
  "alerts by kind" has a series per device and kind;
- ``edgewatch_fleet_outbox_depth``, ``edgewatch_fleet_outbox_oldest_age_seconds``: the
  device's unsent MQTT messages, from its heartbeat;
- ``edgewatch_fleet_notifications_pending`` (no device): webhook notifications waiting.

The worker's own counters of notifications: ``edgewatch_fleet_alertmanager_posts_total``,
``edgewatch_fleet_alertmanager_failures_total`` and ``edgewatch_fleet_webhook_failures_total``
(by ``format``), so a failing Alertmanager or chat webhook shows in Prometheus.

The heartbeat's figures are kept in the device's row when the heartbeat is stored, so a
scrape reads three small queries and parses no heartbeat.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import ConfigError
from ..records import KINDS, SEVERITIES
from .notify import FORMATS
from .records import REASONS
from .store import CentralReader

log = logging.getLogger(__name__)

__all__ = ["FleetCollector", "MetricsServer", "Counters"]

#: What the worker counted itself: ``{"topics": {topic: n}, "bad": {reason: n}, "dropped": n}``.
Counters = Callable[[], Mapping[str, Any]]


class FleetCollector(Collector):
    """Reads the central's database on each scrape; one read connection, reopened on error."""

    def __init__(self, db_path: str, counters: Optional[Counters] = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.db_path = db_path
        self._counters = counters
        self._clock = clock
        self._lock = threading.Lock()  # scrapes may come in on several server threads
        self._reader: Optional[CentralReader] = None

    def close(self) -> None:
        """Close the read connection."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _read(self) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str, str, int]], int]:
        with self._lock:
            if self._reader is None:
                self._reader = CentralReader(self.db_path)
            reader = self._reader
            try:
                return reader.fleet_devices(), reader.open_alert_counts(), \
                    reader.pending_notifications()
            except reader.conn.errors:
                # A broken connection (PostgreSQL restarted): the next scrape opens a new one;
                # this one fails, so Prometheus shows the target down rather than stale values.
                reader.close()
                self._reader = None
                raise

    def collect(self) -> Iterable[Metric]:
        """The fleet's metrics now."""
        devices, alerts, pending = self._read()
        yield from self._device_metrics(devices, self._clock())
        yield self._alerts(devices, alerts)
        yield GaugeMetricFamily("edgewatch_fleet_notifications_pending",
                                "Webhook notifications waiting for delivery", value=pending)
        if self._counters is not None:
            yield from self._counter_metrics(self._counters())

    def _device_metrics(self, devices: List[Dict[str, Any]], now: float) -> Iterable[Metric]:
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"edgewatch_fleet_{name}", text, labels=["device"])

        online = gauge("device_online", "1 when the device is online, 0 when offline")
        age = gauge("heartbeat_age_seconds", "Seconds since the central received the "
                    "device's last heartbeat")
        fps = gauge("fps", "Frames per second the device reported in its last heartbeat")
        drift = gauge("drift_score_max", "Worst drift score (distance / threshold; >= 1 is "
                      "over threshold) in the device's last heartbeat, 0 when none")
        depth = gauge("outbox_depth", "Messages in the device's MQTT outbox")
        oldest = gauge("outbox_oldest_age_seconds", "Age of the oldest message in the "
                       "device's MQTT outbox (0 when empty)")
        counts = {"online": 0, "offline": 0}
        for row in devices:
            device, up = str(row["device"]), bool(row["online"])
            counts["online" if up else "offline"] += 1
            online.add_metric([device], 1.0 if up else 0.0)
            if row["last_heartbeat_ts"] is not None:
                age.add_metric([device], max(0.0, now - float(row["last_heartbeat_ts"])))
            if up:  # an offline device's last fps and drift are no longer its state
                drift.add_metric([device], float(row["worst_drift"] or 0.0))
                if row["fps"] is not None:
                    fps.add_metric([device], float(row["fps"]))
            if row["outbox_depth"] is not None:
                depth.add_metric([device], float(row["outbox_depth"]))
            if row["outbox_depth"] is not None:  # an empty outbox's oldest is 0, as on the device
                oldest.add_metric([device], float(row["outbox_age_s"] or 0.0))
        states = GaugeMetricFamily("edgewatch_fleet_devices", "Devices by state",
                                   labels=["state"])
        for state, n in counts.items():
            states.add_metric([state], n)
        return [states, online, age, fps, drift, depth, oldest]

    @staticmethod
    def _alerts(devices: List[Dict[str, Any]],
                alerts: List[Tuple[str, str, str, int]]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("edgewatch_fleet_alerts", "Open (firing) alerts by device, "
                                   "kind and severity", labels=["device", "kind", "severity"])
        counts: Dict[Tuple[str, str, str], int] = {}
        for device, kind, severity, n in alerts:
            key = (device, kind if kind in KINDS else "other",
                   severity if severity in SEVERITIES else "other")
            counts[key] = counts.get(key, 0) + n
        seen = {(device, kind) for device, kind, _ in counts}
        for row in devices:
            for kind in KINDS:
                if (str(row["device"]), kind) not in seen:
                    counts[(str(row["device"]), kind, "")] = 0
        for labels, n in sorted(counts.items()):
            family.add_metric(list(labels), n)
        return family

    @staticmethod
    def _counter_metrics(counters: Mapping[str, Any]) -> Iterable[Metric]:
        messages = CounterMetricFamily("edgewatch_fleet_messages", "MQTT messages this "
                                       "central worker received, by topic", labels=["topic"])
        for topic, n in sorted((counters.get("topics") or {}).items()):
            messages.add_metric([topic], n)
        rejected = CounterMetricFamily("edgewatch_fleet_messages_rejected", "Messages this "
                                       "central worker refused or dropped, by reason",
                                       labels=["reason"])
        bad = counters.get("bad") or {}
        for reason in REASONS:
            rejected.add_metric([reason], bad.get(reason, 0))
        rejected.add_metric(["queue_full"], counters.get("dropped", 0))
        return [messages, rejected, *FleetCollector._notification_metrics(counters)]

    @staticmethod
    def _notification_metrics(counters: Mapping[str, Any]) -> Iterable[Metric]:
        posts = CounterMetricFamily("edgewatch_fleet_alertmanager_posts", "Posts this central "
                                    "worker made to Alertmanager (each a batch of alerts)",
                                    value=counters.get("alertmanager_posts", 0))
        failures = CounterMetricFamily("edgewatch_fleet_alertmanager_failures", "Failed posts "
                                       "to Alertmanager (each retried, with every open alert)",
                                       value=counters.get("alertmanager_failures", 0))
        webhook = CounterMetricFamily("edgewatch_fleet_webhook_failures", "Failed webhook "
                                      "deliveries (each retried), by the webhook's format",
                                      labels=["format"])
        failed = counters.get("webhook_failures") or {}
        for fmt in FORMATS:
            webhook.add_metric([fmt], failed.get(fmt, 0))
        return [posts, failures, webhook]


class MetricsServer:
    """``/metrics`` over HTTP for one collector (prometheus_client's server thread)."""

    def __init__(self, collector: FleetCollector, host: str = "127.0.0.1", port: int = 9782
                 ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--metrics-port must be 0-65535, got {port}")
        self.collector, self.host, self.port = collector, host, port
        self._server: Any = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> MetricsServer:
        """Listen; ``port`` becomes the bound port (0 picks a free one)."""
        registry = CollectorRegistry()
        registry.register(self.collector)
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host,
                                                           registry=registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--metrics-port {self.port} is in use on {self.host}: set "
                                  "--metrics-port (or metrics_port) to a free one, or stop the "
                                  f"program listening there (ss -ltnp 'sport = :{self.port}')"
                                  ) from None
            raise ConfigError(f"cannot serve metrics on {self.host}:{self.port}: "
                              f"{exc.strerror or exc} (set --metrics-host and --metrics-port, "
                              "or metrics_host and metrics_port)") from None
        self.port = int(self._server.server_address[1])
        log.info("central: metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop listening and close the collector's connection."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
        self.collector.close()
