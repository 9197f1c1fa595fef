"""The device's Prometheus metrics, scraped from a real agent over HTTP and from its textfile.

The agent runs the emulated night scene through the real model with MQTT to a real
Mosquitto and device health on: a warm-up reference is learned, night falls at 60 s of
frame time and data drift fires. Both forms are parsed with prometheus-client's own parser
and checked by ``promtool check metrics``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import numpy as np
import pytest
from broker import Broker, free_port
from helpers import REPO, wait
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from running import fast_config, feed_until

from agent.confidence import CONFIDENCE_FEATURES
from agent.errors import ConfigError
from agent.loop import drive, run, synthetic_times
from agent.metrics import REFERENCE_STATES
from agent.records import MONITORING_STATES
from agent.service import Agent
from agent.sources import open_source
from agent.stats import IMAGE_FEATURES

NIGHT = "emulated:night?seed=4&size=320x240&onset=60&duration=200"
Samples = Dict[str, List[Sample]]


def parse(text: str) -> Samples:
    """Every sample by its name (counters as ``_total``, histograms as ``_bucket`` etc.)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return float(found[0])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        return str(answer.read().decode())


def thermal_zone(root: Path, celsius: float) -> None:
    zone = root / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{int(celsius * 1000)}\n")


def drifted_with_health(agent: Agent) -> bool:
    kinds = [a["kind"] for a in agent.monitor.snapshot()["alerts_open"]]
    return (agent.heartbeats.rate.fps is not None and "data_drift" in kinds
            and bool(agent.heartbeats.health.last))


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory, model_path: Path,
          broker_session: Broker) -> Iterator[Dict[str, Any]]:
    """Scrapes of a running agent once night has raised data drift, and its heartbeat."""
    tmp = tmp_path_factory.mktemp("metrics")
    thermal_zone(tmp / "thermal", 52.5)
    port = free_port()
    textfile = tmp / "textfile" / "edgewatch.prom"
    textfile.parent.mkdir()
    cfg = fast_config(
        str(tmp / "m.db"), str(model_path), device={"id": "cam-metrics"},
        metrics={"enabled": True, "port": port, "textfile": str(textfile)},
        health={"enabled": True, "interval_s": 1, "thermal_root": str(tmp / "thermal")},
        mqtt={"enabled": True, "host": broker_session.host, "port": broker_session.port,
              "heartbeat_interval_s": 1.0, "keepalive": 5})
    fed = feed_until(cfg, NIGHT, drifted_with_health)
    agent = fed.agent
    try:
        wait(lambda: agent.mqtt is not None and agent.mqtt.status()["connected"], 15,
             "the agent connected to the broker")
        http = scrape(port)
        frames = f"edgewatch_frames_total {float(fed.frames)}"
        # The metrics worker rewrites the file every heartbeat interval: wait for one made
        # after the last frame.
        wait(lambda: textfile.exists() and frames in textfile.read_text(), 15,
             "a textfile written after the feed ended")
        beat = agent.heartbeat().to_dict()
        threads = agent.supervisor.health()
        alerts = agent.monitor.snapshot()["alerts_open"]
    finally:
        agent.close()
    yield {"http": http, "samples": parse(http), "textfile": textfile.read_text(),
           "textfile_mode": textfile.stat().st_mode & 0o777,
           "folder": textfile.parent, "beat": beat, "frames": fed.frames, "port": port,
           "sha256": fed.model.info()["sha256"], "threads": threads, "alerts": alerts}


def test_frames_fps_and_the_latency_histogram(night: Dict[str, Any]) -> None:
    s = night["samples"]
    assert value(s, "edgewatch_frames_total") == night["frames"] > 0
    assert value(s, "edgewatch_fps") > 0
    assert value(s, "edgewatch_frames_dropped_total", reason="bad_frame") == 0
    assert value(s, "edgewatch_frames_dropped_total", reason="source") == 0
    count = value(s, "edgewatch_inference_seconds_count")
    assert count == night["frames"]  # every frame's latency, folded in from the ring
    buckets = [(b.labels["le"], b.value) for b in s["edgewatch_inference_seconds_bucket"]]
    assert buckets[-1] == ("+Inf", count)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    total = value(s, "edgewatch_inference_seconds_sum")
    assert 0 < total / count < 5  # a mean latency in seconds, not milliseconds
    assert value(s, "edgewatch_uptime_seconds") > 0
    assert 0 <= value(s, "edgewatch_last_frame_age_seconds") < 60


def test_the_info_series_names_device_model_and_version(night: Dict[str, Any]) -> None:
    (info,) = night["samples"]["edgewatch_info"]
    assert info.value == 1
    assert info.labels["device"] == "cam-metrics" and info.labels["camera"]
    assert info.labels["model_sha256"] == night["sha256"]
    assert info.labels["runtime"] and info.labels["version"] == night["beat"]["agent_version"]


def test_every_image_statistic_with_its_reference_band_and_confidence(
        night: Dict[str, Any]) -> None:
    s = night["samples"]
    stats = {x.labels["feature"]: x.value for x in s["edgewatch_image_stat"]}
    assert set(stats) == set(IMAGE_FEATURES)
    assert stats["brightness"] == pytest.approx(night["beat"]["stats"]["brightness"], abs=1e-3)
    for feature in IMAGE_FEATURES:
        band = [value(s, "edgewatch_image_stat_reference", feature=feature, quantile=q)
                for q in ("0.05", "0.5", "0.95")]
        assert band == sorted(band), feature
    # Night: the frame is darker than the reference's 5th percentile.
    assert stats["brightness"] < value(s, "edgewatch_image_stat_reference",
                                       feature="brightness", quantile="0.05")
    conf = {x.labels["feature"] for x in s["edgewatch_confidence"]}
    assert conf == set(CONFIDENCE_FEATURES)


def test_drift_scores_and_distances_after_a_drift_test(night: Dict[str, Any]) -> None:
    s, beat = night["samples"], night["beat"]
    scores = {x.labels["feature"]: x.value for x in s["edgewatch_drift_score"]}
    distances = {x.labels["feature"]: x.value for x in s["edgewatch_drift_distance"]}
    assert scores == beat["drift_scores"] and distances == beat["drift"]
    assert max(scores.values()) >= 1  # night: over a threshold


def test_open_alerts_are_shaped_like_prometheus_alerts(night: Dict[str, Any]) -> None:
    series = night["samples"]["edgewatch_alerts"]
    got = {(x.labels["kind"], x.labels["feature"], x.labels["severity"]) for x in series}
    expected = {(a["kind"], a["feature"], a["severity"]) for a in night["beat"]["alerts_open"]}
    assert got == expected and ("data_drift", "image") in {(k, f) for k, f, _ in got}
    assert all(x.value == 1 and x.labels["alertstate"] == "firing" for x in series)


def test_the_drift_message_names_the_camera_image_and_what_moved(night: Dict[str, Any]) -> None:
    """Users know the camera image, not the "image" group; and the KS distance by that name."""
    drift = next(a["message"] for a in night["alerts"] if a["kind"] == "data_drift")
    assert re.match(r"data drift in the camera image: [a-z_, +0-9]*brightness[a-z_, +0-9]* "
                    r"moved; \w+ mean [-0-9.e+]+ vs reference .*KS distance \d\.\d\d > "
                    r"\d\.\d\d, PSI .*\(over \d+ s, [\d,]+ frames, since \d\d:\d\d:\d\d\)$", drift)


def test_monitoring_and_reference_states_are_one_hot(night: Dict[str, Any]) -> None:
    s = night["samples"]
    monitoring = {x.labels["state"]: x.value for x in s["edgewatch_monitoring_state"]}
    reference = {x.labels["state"]: x.value for x in s["edgewatch_reference_state"]}
    assert set(monitoring) == set(MONITORING_STATES) and set(reference) == set(REFERENCE_STATES)
    assert [k for k, v in monitoring.items() if v == 1] == ["active"]
    assert sum(monitoring.values()) == 1
    assert [k for k, v in reference.items() if v == 1] == ["learned"]
    assert sum(reference.values()) == 1


def test_queues_outbox_mqtt_and_threads(night: Dict[str, Any]) -> None:
    s = night["samples"]
    assert value(s, "edgewatch_store_queue_depth") >= 0
    assert value(s, "edgewatch_store_dropped_total") == 0
    assert value(s, "edgewatch_store_write_errors_total") == 0
    assert value(s, "edgewatch_outbox_depth") >= 0
    assert value(s, "edgewatch_outbox_oldest_age_seconds") >= 0
    assert value(s, "edgewatch_mqtt_connected") == 1
    assert value(s, "edgewatch_mqtt_refused_total") == 0
    threads = {x.labels["thread"]: x.value for x in s["edgewatch_thread_failures_total"]}
    assert {"edgewatch-heartbeat", "edgewatch-store", "edgewatch-metrics",
            "edgewatch-metrics-http"} <= set(threads)
    assert threads == {name: h["failures"] for name, h in night["threads"].items()}


def test_device_health(night: Dict[str, Any]) -> None:
    s = night["samples"]
    assert value(s, "edgewatch_temperature_celsius") == 52.5  # the thermal zone written
    assert 0 <= value(s, "edgewatch_cpu_ratio") <= 1
    assert 0 < value(s, "edgewatch_memory_ratio") < 1
    assert value(s, "edgewatch_disk_free_bytes") > 0
    assert "edgewatch_throttled" not in s  # no vcgencmd here: no reading, no series


def test_the_textfile_holds_the_same_series_and_no_temporary_file(
        night: Dict[str, Any]) -> None:
    from_file = parse(night["textfile"])
    assert set(from_file) == set(night["samples"])
    assert value(from_file, "edgewatch_frames_total") == night["frames"]
    assert [p.name for p in night["folder"].iterdir()] == ["edgewatch.prom"]
    assert night["textfile_mode"] == 0o644  # node_exporter runs as another user


def readme_table() -> Dict[str, Tuple[str, Set[str]]]:
    """The README's device metrics: name -> (type, label names)."""
    rows: Dict[str, Tuple[str, Set[str]]] = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(edgewatch_\w+)`", cells[0]) if len(cells) == 5 else None
        if m and not m.group(1).startswith("edgewatch_fleet_"):
            names = re.sub(r"\([^)]*\)", "", cells[3])  # "(values)" are the label's values
            rows[m.group(1)] = (cells[1], set(re.findall(r"`([a-z0-9_]+)`", names)))
    return rows


def test_the_readme_table_lists_every_metric_with_its_type_and_labels(
        night: Dict[str, Any]) -> None:
    table = readme_table()
    scraped: Dict[str, Tuple[str, Set[str]]] = {}
    for family in text_string_to_metric_families(night["http"]):
        name = family.name + ("_total" if family.type == "counter" else "")
        scraped[name] = (family.type, {k for s in family.samples for k in s.labels})
    for name, (kind, labels) in scraped.items():
        assert name in table, f"{name} is missing from the README's metrics table"
        assert table[name][0] == kind, f"{name}: README says {table[name][0]}, it is a {kind}"
        if labels or kind != "gauge":  # a labelled gauge with no series shows none
            assert table[name][1] == labels, f"{name}: README labels {table[name][1]} vs {labels}"
    # Only what this machine cannot show is listed without being scraped here.
    assert set(table) - set(scraped) == {"edgewatch_throttled"}


@pytest.mark.integration
@pytest.mark.parametrize("form", ["http", "textfile"])
def test_promtool_check_metrics_passes_without_lint_complaints(night: Dict[str, Any],
                                                                form: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed: run `make stack` (apt-get install prometheus)")
    done = subprocess.run([promtool, "check", "metrics"], input=night[form], text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        done.stdout + done.stderr)


def test_the_port_is_closed_with_the_agent(night: Dict[str, Any]) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", night["port"]), timeout=5).close()


def test_metrics_off_opens_no_port_and_starts_no_thread(tmp_path: Path, model_path: Path) -> None:
    port = free_port()
    cfg = fast_config(str(tmp_path / "m.db"), str(model_path),
                      metrics={"enabled": False, "port": port})
    agent = Agent.start(cfg, model_info={"path": str(model_path), "sha256": ""})
    try:
        assert agent.metrics is None
        assert not any(name.startswith("edgewatch-metrics") for name in agent.supervisor.health())
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        agent.close()


def test_a_port_in_use_stops_the_start_with_one_line_naming_the_setting(
        tmp_path: Path, model_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = fast_config(str(tmp_path / "m.db"), str(model_path),
                          metrics={"enabled": True, "port": port})
        with pytest.raises(ConfigError) as err:
            Agent.start(cfg, model_info={"path": str(model_path), "sha256": ""})
    message = str(err.value)
    assert "\n" not in message
    assert f"[metrics] port {port} is in use" in message and "set [metrics] port" in message
    # What the failed start opened was released: the same database opens again at once.
    again = Agent.start(fast_config(str(tmp_path / "m.db"), str(model_path)),
                        model_info={"path": str(model_path), "sha256": ""})
    again.close()


def test_the_cli_says_so_in_one_line_and_exits_with_the_config_code(
        tmp_path: Path, write_config: Any, capsys: Any) -> None:
    from agent.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "m.toml", metrics={"enabled": True, "port": port})
        code = main(["replay", "emulated:stationary?duration=1", "--config", str(config),
                     "--db", str(tmp_path / "m.db")])
    assert code == ConfigError.exit_code
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"edgewatch: error: [metrics] port {port} is in use") and "\n" not in err


def test_a_textfile_in_a_missing_folder_is_refused_naming_the_setting(
        tmp_path: Path, model_path: Path) -> None:
    cfg = fast_config(str(tmp_path / "m.db"), str(model_path),
                      metrics={"textfile": str(tmp_path / "nowhere" / "edgewatch.prom")})
    with pytest.raises(ConfigError, match=r"\[metrics\] textfile .* does not exist"):
        Agent.start(cfg, model_info={"path": str(model_path), "sha256": ""})


def test_the_textfile_alone_needs_no_port(tmp_path: Path, model_path: Path) -> None:
    textfile = tmp_path / "edgewatch.prom"
    cfg = fast_config(str(tmp_path / "m.db"), str(model_path),
                      metrics={"enabled": False, "textfile": str(textfile)})
    agent = Agent.start(cfg, model_info={"path": str(model_path), "sha256": ""})
    try:
        assert agent.metrics is not None and agent.metrics.port is None
        samples = parse(textfile.read_text())  # written at start
    finally:
        agent.close()
    assert value(samples, "edgewatch_frames_total") == 0
    assert json.dumps(sorted(samples))  # a parseable file with its series
    assert "edgewatch_inference_seconds_count" in samples


def test_a_live_run_serves_its_metrics_while_frames_flow(tmp_path: Path, model_path: Path) -> None:
    port = free_port()
    cfg = fast_config(str(tmp_path / "m.db"), str(model_path),
                      metrics={"enabled": True, "port": port})
    stop = threading.Event()
    done: Dict[str, int] = {}
    t = threading.Thread(target=lambda: done.setdefault("code", run(
        cfg, stop=stop, source=open_source("emulated:stationary?seed=2&size=320x240"))))
    t.start()

    def flowing() -> Samples:
        try:
            s = parse(scrape(port))
        except OSError:  # not listening yet
            return {}
        return s if s.get("edgewatch_fps") and value(s, "edgewatch_fps") > 0 else {}

    try:
        s = wait(flowing, 60, "a scrape showing frames flowing")
    finally:
        stop.set()
        t.join(30)
    assert done["code"] == 0
    assert value(s, "edgewatch_frames_total") > 0
    assert value(s, "edgewatch_frames_skipped_total") >= 0  # the live mailbox's count
    assert value(s, "edgewatch_frames_dropped_total", reason="source") == 0
    assert 0 <= value(s, "edgewatch_last_frame_age_seconds") < 10
    assert value(s, "edgewatch_reference_state", state="warming_up") == 1


def test_an_open_monitoring_alert_has_its_own_feature_in_the_metrics(
        tmp_path: Path, model_path: Path) -> None:
    """A warm-up too short for its windows opens monitoring/drift: the series says "drift"."""
    cfg = fast_config(str(tmp_path / "m.db"), str(model_path),
                      drift={"warmup_s": 10, "window_frames": 600},
                      metrics={"enabled": False, "textfile": str(tmp_path / "edgewatch.prom")})

    def monitoring_open(agent: Agent) -> bool:
        return any(a["kind"] == "monitoring" for a in agent.monitor.snapshot()["alerts_open"])

    fed = feed_until(cfg, "emulated:stationary?seed=2&size=320x240", monitoring_open)
    try:
        alerts = [a for a in fed.agent.monitor.snapshot()["alerts_open"]
                  if a["kind"] == "monitoring"]
        assert fed.agent.metrics is not None
        s = parse(generate_latest(fed.agent.metrics.registry).decode())
    finally:
        fed.agent.close()
    assert alerts, "the warm-up never raised its monitoring alert"
    # The timeframe is set apart from the advice the message ends with.
    assert re.search(r"or lower \[drift\] window_frames \(for \d+ s, since \d\d:\d\d:\d\d\)$",
                     alerts[0]["message"]), alerts[0]["message"]
    series = {(x.labels["kind"], x.labels["feature"]) for x in s["edgewatch_alerts"]}
    assert {("monitoring", a["feature"]) for a in alerts} <= series
    assert all(feature != "other" for _, feature in series)


def histogram_quantile(q: float, buckets: List[Tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile: linear within the bucket holding the q-th value."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def test_the_latency_histograms_median_is_within_a_bucket_of_the_real_one(
        tmp_path: Path, model_path: Path) -> None:
    """The real model's latencies (a fraction of a millisecond to a few here) are spread
    over buckets: the histogram's p50 is within one bucket's ratio of the frames' median."""
    cfg = fast_config(str(tmp_path / "m.db"), str(model_path),
                      metrics={"enabled": False, "textfile": str(tmp_path / "edgewatch.prom")})
    fed = feed_until(cfg, "emulated:stationary?seed=2&size=320x240", lambda _: False,
                     max_frames=600)
    try:
        ring = fed.agent.monitor.ring
        latencies_s = ring.last(fed.frames)[1][:, ring.names.index("latency_ms")] / 1000.0
        assert fed.agent.metrics is not None
        s = parse(generate_latest(fed.agent.metrics.registry).decode())
    finally:
        fed.agent.close()
    assert len(latencies_s) == fed.frames == 600
    buckets = sorted((float(x.labels["le"]), x.value)
                     for x in s["edgewatch_inference_seconds_bucket"])
    assert buckets[-1][1] == fed.frames and buckets[0][0] <= 0.0001
    bounds = [b for b, _ in buckets[:-1]]
    assert max(hi / lo for lo, hi in zip(bounds, bounds[1:])) <= 2.5
    median = float(np.median(latencies_s))
    p50 = histogram_quantile(0.5, buckets)
    assert 1 / 2.5 <= p50 / median <= 2.5, f"p50 {p50 * 1000:.3f} ms, median {median * 1000:.3f} ms"


def test_the_textfile_is_fresh_at_start_early_once_frames_flow_and_final_at_the_stop(
        tmp_path: Path, model_path: Path) -> None:
    """A minute's interval: the file still shows frames within seconds, and the last count."""
    textfile = tmp_path / "edgewatch.prom"
    textfile.write_text('edgewatch_alerts{kind="data_drift"} 1\nedgewatch_frames_total 999\n')
    cfg = fast_config(str(tmp_path / "m.db"), str(model_path), service={
        "heartbeat_interval_s": 60.0}, metrics={"enabled": False, "textfile": str(textfile)})
    agent = Agent.start(cfg, model_info={"path": str(model_path), "sha256": ""})
    try:
        assert value(parse(textfile.read_text()), "edgewatch_frames_total") == 0  # fresh
    finally:
        agent.close()
    fed = feed_until(cfg, "emulated:stationary?seed=2&size=320x240", lambda _: False,
                     max_frames=60)
    try:
        early = wait(lambda: "edgewatch_frames_total 60.0" in textfile.read_text(), 20,
                     "the textfile rewritten once frames flowed (well before the minute)")
        assert early
        more = open_source("emulated:stationary?seed=3&size=320x240")
        drive(synthetic_times(more, 1_700_000_100.0, 30.0, 30, lambda: True), fed.model,
              fed.agent.monitor.observe)
        more.close()
    finally:
        fed.agent.close()
    assert value(parse(textfile.read_text()), "edgewatch_frames_total") == 90  # final state


def test_an_endpoint_on_every_address_logs_where_to_reach_it_in_one_info_line(
        tmp_path: Path, model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    cfg = fast_config(str(tmp_path / "m.db"), str(model_path),
                      metrics={"enabled": True, "host": "0.0.0.0", "port": port})
    with caplog.at_level(logging.INFO, logger="agent.metrics"):
        agent = Agent.start(cfg, model_info={"path": str(model_path), "sha256": ""})
        try:
            assert "edgewatch_frames_total" in scrape(port)
        finally:
            agent.close()
    lines = [r for r in caplog.records if r.name == "agent.metrics"]
    assert [r.getMessage() for r in lines] == [
        f"metrics: http://{socket.gethostname()}:{port}/metrics (every address of this "
        "machine: reachable beyond loopback)"]
    assert all(r.levelno == logging.INFO for r in lines)
