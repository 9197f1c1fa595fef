"""Prometheus metrics for one device: an HTTP endpoint and node_exporter's textfile form.

Everything is read at scrape time from what the agent already keeps (the monitor's
snapshot and counters, the store's and the MQTT link's status, the supervisor's thread
health, the heartbeat's measured fps and the last device-health reading): the per-frame
hot path does nothing for metrics. The inference-latency histogram is built from the
ring buffer's latency column, folded in once a second and at each scrape, so it counts
every frame the ring held at that moment (with the ring's thousands of frames, every frame
at edge frame rates).

Labels are bounded: features come from the fixed feature lists (an alert's feature is its
own, as in its record and at the central, from every name the detectors raise alerts under;
only one outside them shows as ``other``), states and reasons from fixed tuples, threads from the agent's own
names. Names follow Prometheus conventions (``edgewatch_`` prefix, base units, ``_total``
counters), and the output passes ``promtool check metrics``.

``[metrics] enabled`` serves ``http://host:port/metrics`` (prometheus-client's WSGI app on a
supervised thread); ``[metrics] textfile`` writes the same metrics to a ``.prom`` file at start,
a few seconds later once frames flow, then every heartbeat interval and a last time at a clean
stop (the final state: node_exporter keeps serving it; its mtime tells it is old), replaced
atomically and readable by node_exporter's user (for its
textfile collector), with or without the endpoint. A port already in use stops the agent
from starting, with a one-line error naming ``[metrics] port``: nothing switches itself off
silently.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._version import __version__
from .buffers import RingBuffer
from .confidence import CONFIDENCE_FEATURES
from .config import Config
from .errors import ConfigError
from .heartbeat import Heartbeats
from .lifecycle import MONITORING_FEATURES, VIEWS
from .monitor import KNOWN_FEATURES, Monitor
from .mqtt import MqttLink
from .records import MONITORING_STATES
from .stats import IMAGE_FEATURES
from .store import Store
from .supervise import Supervisor

log = logging.getLogger(__name__)

__all__ = ["ALERT_FEATURES", "LATENCY_BUCKETS_S", "REFERENCE_STATES", "AgentCollector",
           "LatencyHistogram", "MetricsServer", "Parts"]

#: Inference latency buckets, seconds, 1-2-5 steps: a small model on a fast CPU at a tenth of a
#: millisecond to a large one on a Pi CPU at seconds (each bucket at most 2.5 times the last,
#: so a quantile from them is within a bucket of the real one).
LATENCY_BUCKETS_S = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2,
                     0.5, 1.0, 2.0, 5.0, 10.0)
#: ``edgewatch_reference_state``'s states, from the reference status.
REFERENCE_STATES = ("learned", "warming_up", "calibrating", "failed", "none")
_REFERENCE_STATE = {"ready": "learned", "warming_up": "warming_up",
                    "calibrating": "calibrating", "failed": "failed", "disabled": "none"}
#: Every feature an alert is raised under: controls' names, monitoring's and the views.
ALERT_FEATURES = KNOWN_FEATURES | frozenset(MONITORING_FEATURES + VIEWS)
_QUANTILES = (("0.05", "p05"), ("0.5", "p50"), ("0.95", "p95"))
_TICK_S = 1.0  # the latency histogram is folded in this often
_EARLY_FILE_S = 3.0  # the textfile's first rewrite: this long after start, once frames flow
_REQUEST_WAIT_S = 0.5  # the server's step returns this often, so a stop is noticed
_MB = 1024 * 1024


class LatencyHistogram:
    """Cumulative inference-latency buckets, folded in from the ring buffer's latency column.

    >>> ring = RingBuffer(("latency_ms",), 8)
    >>> for ms in (1.5, 4.0, 30.0):
    ...     ring.push(0.0, [ms])
    >>> h = LatencyHistogram(ring, "latency_ms", buckets=(0.002, 0.01))
    >>> h.update()
    >>> h.read()
    ([('0.002', 1), ('0.01', 2), ('+Inf', 3)], 0.0355)
    """

    def __init__(self, ring: RingBuffer, column: str,
                 buckets: Tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self._ring = ring
        self._col = ring.names.index(column)
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self._sum = 0.0
        self._seen = 0  # ring.count at the last update
        self._lock = threading.Lock()  # the tick and scrapes (HTTP threads) both update

    def update(self) -> None:
        """Fold in the frames pushed since the last update (those the ring still holds)."""
        with self._lock:
            total = self._ring.count
            new = total - self._seen if total >= self._seen else total
            self._seen = total
            if new <= 0:
                return
            rows = self._ring.last(new)[1]
            ms = rows[:, self._col].astype(np.float64)
            seconds = ms[np.isfinite(ms)] / 1000.0
            # Bucket i holds values <= bound i (Prometheus's "le"); the last one, the rest.
            idx = np.searchsorted(self._bounds, seconds, side="left")
            self._counts += np.bincount(idx, minlength=len(self._counts))
            self._sum += float(seconds.sum())

    def read(self) -> Tuple[List[Tuple[str, int]], float]:
        """Cumulative ``(le, count)`` pairs ending with ``+Inf``, and the sum of seconds."""
        with self._lock:
            cum = np.cumsum(self._counts).tolist()
            total = round(self._sum, 6)
        les = [_le(b) for b in self._bounds.tolist()] + ["+Inf"]
        return list(zip(les, [int(c) for c in cum])), total


def _le(bound: float) -> str:
    return repr(bound).rstrip("0").rstrip(".") if bound < 1 else repr(bound)


@dataclass(frozen=True)
class Parts:
    """What the collector reads: the running agent's parts (nothing of its own)."""

    config: Config
    monitor: Monitor
    store: Store
    mqtt: Optional[MqttLink]
    supervisor: Supervisor
    heartbeats: Heartbeats
    model_info: Mapping[str, Any]
    camera: Mapping[str, Any]


def _gauge(name: str, doc: str, value: Optional[float], unit: str = "") -> Iterator[Metric]:
    """One unlabelled gauge, or nothing when the value is unknown."""
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=float(value), unit=unit)


def _counter(name: str, doc: str, value: Optional[float]) -> Iterator[Metric]:
    if value is not None:
        yield CounterMetricFamily(name, doc, value=float(value))


def _num(value: Any) -> float:
    """A snapshot value as a sample: NaN when missing (the series stays, the value is unknown)."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def _states(name: str, doc: str, label: str, states: Tuple[str, ...],
            current: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for state in states:
        family.add_metric([state], 1.0 if state == current else 0.0)
    return family


class AgentCollector(Collector):
    """The device's metrics, read from the running agent at each scrape."""

    def __init__(self, parts: Parts) -> None:
        self._p = parts
        self.latency = LatencyHistogram(parts.monitor.ring, "latency_ms")

    def collect(self) -> Iterator[Metric]:
        """Every metric, from one monitor snapshot."""
        self.latency.update()
        snap = self._p.monitor.snapshot()
        yield from self._frames()
        yield from self._image(snap)
        yield from self._alerts(snap)
        yield from self._queues()
        yield from self._health()

    def _frames(self) -> Iterator[Metric]:
        p = self._p
        info = GaugeMetricFamily("edgewatch_info", "The agent: device, camera, model and version "
                                 "(always 1)", labels=["device", "camera", "model_sha256",
                                                       "runtime", "version"])
        info.add_metric([p.config.device.id, p.config.device.camera,
                         str(p.model_info.get("sha256") or ""),
                         str(p.model_info.get("runtime") or ""), __version__], 1.0)
        yield info
        yield from _counter("edgewatch_frames", "Frames observed", p.monitor.frames)
        dropped = CounterMetricFamily("edgewatch_frames_dropped", "Frames lost: unusable "
                                      "(bad_frame) or lost reading the source (source)",
                                      labels=["reason"])
        for reason, count in p.heartbeats.dropped().items():
            dropped.add_metric([reason], float(count))
        yield dropped
        yield from _counter("edgewatch_frames_skipped", "Frames the camera delivered while "
                            "the model was busy (replaced by newer ones, never observed)",
                            p.camera.get("skipped"))
        yield from _gauge("edgewatch_fps", "Frames observed per second over the last "
                          "heartbeat interval", p.heartbeats.rate.fps)
        buckets, total = self.latency.read()
        yield HistogramMetricFamily("edgewatch_inference_seconds", "Model inference latency",
                                    buckets=buckets, sum_value=total, unit="seconds")
        yield from _gauge("edgewatch_uptime_seconds", "Seconds since the agent started",
                          p.heartbeats.uptime_s)
        arrived = p.monitor.last_arrival
        yield from _gauge("edgewatch_last_frame_age_seconds", "Seconds since the last frame "
                          "arrived", None if arrived is None else time.monotonic() - arrived)

    def _image(self, snap: Mapping[str, Any]) -> Iterator[Metric]:
        stat = GaugeMetricFamily("edgewatch_image_stat", "Image statistic of the last frame "
                                 "(NaN when it could not be computed)", labels=["feature"])
        for f in IMAGE_FEATURES:
            stat.add_metric([f], _num(snap["stats"].get(f)))
        yield stat
        reference = self._p.monitor.reference
        # A summary of each statistic over the reference's frames (promtool allows the
        # quantile label on summaries only): the band, its count and sum.
        name = "edgewatch_image_stat_reference"
        band = Metric(name, "The reference's 5th, 50th and 95th percentile of each image "
                      "statistic (count: reference frames)", "summary")
        for f in IMAGE_FEATURES:
            if reference is not None and f in reference.names:
                summary = reference.summary(f)
                for q, key in _QUANTILES:
                    band.add_sample(name, {"feature": f, "quantile": q}, _num(summary.get(key)))
                frames = float(reference.frames)
                band.add_sample(f"{name}_count", {"feature": f}, frames)
                band.add_sample(f"{name}_sum", {"feature": f}, _num(summary.get("mean")) * frames)
        yield band
        conf = GaugeMetricFamily("edgewatch_confidence", "Confidence summary of the last "
                                 "frame's detections (NaN when none)", labels=["feature"])
        for f in CONFIDENCE_FEATURES:
            conf.add_metric([f], _num(snap["confidence"].get(f)))
        yield conf
        score = GaugeMetricFamily("edgewatch_drift_score", "Drift test distance over its "
                                  "threshold at the last test (>= 1: over)", labels=["feature"])
        distance = GaugeMetricFamily("edgewatch_drift_distance", "Drift test distance (KS) at "
                                     "the last test", labels=["feature"])
        for f, value in snap["drift_scores"].items():
            if f in KNOWN_FEATURES:
                score.add_metric([f], float(value))
        for f, value in snap["drift"].items():
            if f in KNOWN_FEATURES:
                distance.add_metric([f], float(value))
        yield score
        yield distance

    def _alerts(self, snap: Mapping[str, Any]) -> Iterator[Metric]:
        alerts = GaugeMetricFamily("edgewatch_alerts", "Open alerts, one series each (shaped "
                                   "like Prometheus's ALERTS)",
                                   labels=["kind", "feature", "severity", "alertstate"])
        seen = set()
        for a in snap["alerts_open"]:
            feature = a["feature"] if a["feature"] in ALERT_FEATURES else "other"
            key = (a["kind"], feature, a["severity"], "firing")
            if key not in seen:  # "other" may gather several: one series
                seen.add(key)
                alerts.add_metric(list(key), 1.0)
        yield alerts
        yield _states("edgewatch_monitoring_state", "Is drift detection running: 1 for the "
                      "current state", "state", MONITORING_STATES, snap["monitoring"]["state"])
        status = self._p.monitor.reference_status.state
        yield _states("edgewatch_reference_state", "The drift reference: 1 for the current "
                      "state", "state", REFERENCE_STATES, _REFERENCE_STATE.get(status, "none"))

    def _queues(self) -> Iterator[Metric]:
        p = self._p
        stats = p.store.stats()
        yield from _gauge("edgewatch_store_queue_depth", "Rows waiting for the SQLite writer",
                          stats.get("queue_depth"))
        yield from _counter("edgewatch_store_dropped", "Rows dropped because the writer's "
                            "queue was full", stats.get("dropped"))
        yield from _counter("edgewatch_store_write_errors", "SQLite writes that failed",
                            stats.get("write_errors"))
        yield from _gauge("edgewatch_outbox_depth", "MQTT messages waiting in the outbox",
                          stats.get("outbox_depth"))
        yield from _gauge("edgewatch_outbox_oldest_age_seconds", "Age of the oldest message "
                          "waiting in the outbox (0 when empty)",
                          stats.get("outbox_oldest_age_s") or 0.0)
        if p.mqtt is not None:
            status = p.mqtt.status()
            yield from _gauge("edgewatch_mqtt_connected", "1 when connected to the broker",
                              1.0 if status.get("connected") else 0.0)
            yield from _counter("edgewatch_mqtt_refused", "Publishes the broker refused",
                                status.get("refused"))
        threads = CounterMetricFamily("edgewatch_thread_failures", "Failures of each "
                                      "background thread", labels=["thread"])
        for name, health in p.supervisor.health().items():
            failures = health.get("failures")
            threads.add_metric([name], float(failures if isinstance(failures, int) else 0))
        yield threads

    def _health(self) -> Iterator[Metric]:
        """Device health from the last reading (none without ``[health] enabled``)."""
        h: Dict[str, Any] = self._p.heartbeats.health.last
        cpu, memory = h.get("cpu_percent"), (h.get("memory") or {}).get("percent")
        yield from _gauge("edgewatch_cpu_ratio", "Busy CPU, all cores (0-1)",
                          None if cpu is None else cpu / 100.0, unit="ratio")
        yield from _gauge("edgewatch_memory_ratio", "Memory in use (0-1)",
                          None if memory is None else memory / 100.0, unit="ratio")
        yield from _gauge("edgewatch_temperature_celsius", "Hottest temperature sensor",
                          h.get("max_temp_c"), unit="celsius")
        throttled = h.get("throttled")
        yield from _gauge("edgewatch_throttled", "1 while the Raspberry Pi is throttled or "
                          "under-voltage (vcgencmd)",
                          None if not throttled else float(any(throttled["now"].values())))
        free = (h.get("disk") or {}).get("free_mb")
        yield from _gauge("edgewatch_disk_free_bytes", "Free space on the database's disk",
                          None if free is None else free * _MB, unit="bytes")


class _Server(ThreadingMixIn, WSGIServer):
    """A WSGI server answering each scrape on its own short-lived thread."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scrape that failed (the scraper went away): one log line, not a traceback on
        stderr (the server's default)."""
        log.info("metrics: a scrape from %s failed: %s", client_address[0], sys.exc_info()[1])


class _Quiet(WSGIRequestHandler):
    """No access log line per scrape (journald would get one every 15 s)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Say nothing."""


def _bind(host: str, port: int, app: Any) -> WSGIServer:
    """The listening server, or a ConfigError naming ``[metrics]`` and the fix."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ConfigError(f"[metrics] host {host!r} is not an address of this machine "
                          f"({exc.strerror}): set [metrics] host, e.g. 127.0.0.1 or 0.0.0.0"
                          ) from None
    server_class = type("_MetricsServer", (_Server,), {"address_family": family})
    try:
        server: WSGIServer = make_server(host, port, app, server_class, handler_class=_Quiet)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"[metrics] port {port} is in use on {host}: set [metrics] port "
                              f"to a free one, or stop the program listening there "
                              f"(ss -ltnp 'sport = :{port}')") from None
        raise ConfigError(f"[metrics] cannot listen on {host}:{port}: {exc.strerror} "
                          "(set [metrics] host and port)") from None
    server.timeout = _REQUEST_WAIT_S
    return server


def _where(host: str, port: int) -> str:
    """The endpoint as a scraper would reach it, and whether it is exposed beyond loopback.

    >>> _where("127.0.0.1", 9781)
    'http://127.0.0.1:9781/metrics'
    >>> _where("0.0.0.0", 9781).endswith(":9781/metrics (every address of this machine: "
    ...                                  "reachable beyond loopback)")
    True
    """
    try:
        loopback = ipaddress.ip_address(host).is_loopback
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a name
        loopback, wildcard = host == "localhost", False
    shown = socket.gethostname() if wildcard else host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/metrics"
    if loopback:
        return url
    return url + (" (every address of this machine: reachable beyond loopback)" if wildcard
                  else " (reachable beyond loopback)")


def _check_textfile(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"[metrics] textfile {path}: the folder {folder} does not exist "
                          "(create it, or set [metrics] textfile to a file in node_exporter's "
                          "--collector.textfile.directory)")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"[metrics] textfile {path}: edgewatch cannot write in {folder} "
                          "(give its user write access to the folder)")


class MetricsServer:
    """The ``[metrics]`` endpoint and textfile, on supervised threads.

    ``edgewatch-metrics-http`` answers scrapes (when ``enabled``); ``edgewatch-metrics``
    folds in the latency histogram every second and rewrites the textfile (when set) every
    ``textfile_every_s``, once early when the first frames have come, and at :meth:`close`.
    """

    def __init__(self, config: Config, parts: Parts, *, textfile_every_s: float) -> None:
        self._config = config.metrics
        self.collector = AgentCollector(parts)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._every = textfile_every_s
        self._next_file = math.inf  # set at start
        self._early: Optional[float] = None  # when frames flow past this, a write comes early
        self._monitor = parts.monitor
        self._server: Optional[WSGIServer] = None

    @property
    def port(self) -> Optional[int]:
        """The port the endpoint listens on, None when it does not."""
        return None if self._server is None else int(self._server.server_address[1])

    def start(self, supervisor: Supervisor) -> MetricsServer:
        """Check the textfile's folder and bind the port (or raise ConfigError), then serve."""
        m = self._config
        if m.textfile:  # fresh at start (not the last run's file), early once frames flow
            _check_textfile(m.textfile)
            self.write_textfile()
            now = time.monotonic()
            self._next_file, self._early = now + self._every, now + _EARLY_FILE_S
        if m.enabled:
            self._server = _bind(m.host, m.port, make_wsgi_app(self.registry))
            supervisor.spawn("edgewatch-metrics-http", self._serve, backoff_s=_REQUEST_WAIT_S)
            log.info("metrics: %s", _where(m.host, int(self._server.server_address[1])))
        if m.textfile:
            log.info("metrics: %s every %.0f s", m.textfile, self._every)
        supervisor.spawn("edgewatch-metrics", self._tick, interval_s=_TICK_S)
        return self

    def _serve(self) -> None:
        assert self._server is not None  # spawned only once bound
        self._server.handle_request()  # one scrape (on its own thread), or a timeout

    def _tick(self) -> None:
        self.collector.latency.update()
        now = time.monotonic()
        early = self._early is not None and now >= self._early and self._monitor.frames > 0
        if self._config.textfile and (now >= self._next_file or early):
            self._next_file, self._early = now + self._every, None
            self.write_textfile()

    def write_textfile(self) -> None:
        """Write the metrics to ``[metrics] textfile``: a temporary file, then renamed over it,
        so node_exporter never reads half a file. Readable by all (node_exporter runs as its
        own user; the service's umask would hide the file from it)."""
        path = self._config.textfile
        tmp = f"{path}.{os.getpid()}.tmp"  # node_exporter reads only *.prom
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o644)
                out.write(generate_latest(self.registry))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def close(self) -> None:
        """Write the textfile's final state, close the listening socket (once its thread has
        stopped); idempotent."""
        if self._config.textfile and self._next_file < math.inf:
            self._next_file = math.inf
            try:
                self.write_textfile()
            except OSError as exc:
                log.warning("metrics: could not write the final %s: %s", self._config.textfile,
                            exc)
        if self._server is not None:
            self._server.server_close()
            self._server = None
