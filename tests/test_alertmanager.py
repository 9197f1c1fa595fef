"""The central hands alerts to a real Alertmanager (v2 API) and they read back as agreed."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Dict, List

import central_helpers
import pytest
import stack
from broker import free_port
from central_helpers import CentralDb, heartbeat
from helpers import make_alert, wait
from stack import Alertmanager

from agent.central import Central
from agent.central.alertmanager import alertmanager_alert
from agent.cli import main
from agent.errors import ConfigError

central_factory = central_helpers.central_factory
central_db = central_helpers.central_db
alertmanager = stack.alertmanager

pytestmark = pytest.mark.integration


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _publish(broker: Any, listeners: Any, device: str, records: List[Dict[str, Any]]) -> None:
    pub = listeners(broker, [])
    pub.wait_connected()
    for record in records:
        pub.publish(f"edgewatch/v1/{device}/alerts", json.dumps(record))


def test_firing_then_resolved_read_back_from_alertmanager(
        broker, listeners, central_factory, central_db: CentralDb,
        alertmanager: Alertmanager) -> None:
    device = f"am-cam1-{central_db.kind}"
    central = central_factory(broker, db=central_db.target, alertmanager=alertmanager.url)
    firing = make_alert(1, device=device)
    _publish(broker, listeners, device, [firing])
    got = wait(lambda: alertmanager.alerts(device=device), what="the alert in Alertmanager")
    assert len(got) == 1
    alert = got[0]
    assert alert["status"]["state"] == "active"
    assert alert["labels"] == {"alertname": "edgewatch_data_drift", "device": device,
                               "camera": "cam0", "kind": "data_drift", "severity": "warning",
                               "feature": "brightness"}
    assert alert["annotations"]["summary"] == "brightness drifted #1"
    description = alert["annotations"]["description"]
    assert description.startswith("data drift on brightness: psi 0.4 (threshold 0.25)")
    assert "Expected: mean 120" in description and "Timeframe: 60 s (600 frames)" in description
    assert _ts(alert["startsAt"]) == pytest.approx(firing["starts_at"], abs=0.001)
    # Firing: it ends four intervals ahead unless posted again (as Prometheus sends them).
    assert _ts(alert["endsAt"]) > dt.datetime.now(dt.timezone.utc).timestamp() + 200

    _publish(broker, listeners, device,
             [make_alert(2, device=device, state="resolved", alert_id="a0001")])
    # Resolved: its endsAt is in the past, so Alertmanager lists it no more (minutes before
    # the firing post's endsAt would have lapsed).
    wait(lambda: alertmanager.alerts(device=device) == [], what="the alert resolved")
    # Alertmanager has the post before the central has its answer: wait for the count.
    status = wait(lambda: (lambda s: s if s["alertmanager_posts"] >= 2 else None)(central.status()),
                  what="both posts counted")
    assert status["alertmanager_failed_attempts"] == 0


def test_open_alerts_are_posted_again_every_interval(
        broker, listeners, central_factory, alertmanager: Alertmanager) -> None:
    central = central_factory(broker, alertmanager=alertmanager.url, alertmanager_interval_s=0.5)
    _publish(broker, listeners, "am-cam2", [make_alert(1, device="am-cam2")])
    first = wait(lambda: alertmanager.alerts(device="am-cam2"), what="posted")[0]
    posts = central.status()["alertmanager_posts"]
    # No new message: Alertmanager sees the alert again (its updatedAt and endsAt move on).
    again = wait(lambda: [a for a in alertmanager.alerts(device="am-cam2")
                          if a["updatedAt"] != first["updatedAt"]], what="posted again")[0]
    assert _ts(again["endsAt"]) > _ts(first["endsAt"])
    wait(lambda: central.status()["alertmanager_posts"] > posts, what="the new post counted")


def test_an_unreachable_alertmanager_is_retried_and_counted_without_blocking_ingest(
        broker, listeners, central_factory, tmp_path) -> None:
    central = central_factory(broker, alertmanager=f"http://127.0.0.1:{free_port()}",
                              alertmanager_interval_s=0.5)
    _publish(broker, listeners, "am-cam3", [make_alert(1, device="am-cam3")])
    wait(lambda: central.status()["alertmanager_failed_attempts"] >= 2, what="retried")
    assert central.status()["alertmanager_failing"] is True
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/am-cam3/heartbeat", json.dumps(heartbeat("am-cam3", 1)))
    wait(lambda: central.status()["heartbeats"] == 1, what="ingest goes on")
    assert central.status()["alerts"] == 1


@pytest.mark.parametrize("suffix", ["/api/v2/alerts", "/api/v2/"])
def test_a_url_given_with_the_api_path_posts_to_its_base(
        suffix: str, broker, listeners, central_factory, alertmanager: Alertmanager,
        caplog: pytest.LogCaptureFixture) -> None:
    """The API path given by hand is not doubled (a 404 on /api/v2/alerts/api/v2/alerts)."""
    device = f"am-cam4{suffix.replace('/', '-')}"
    with caplog.at_level(logging.INFO, logger="agent.central.alertmanager"):
        central = central_factory(broker, alertmanager=alertmanager.url + suffix)
    assert f"ends in {suffix.rstrip('/')}" in caplog.text and "give the base URL" in caplog.text
    _publish(broker, listeners, device, [make_alert(1, device=device)])
    wait(lambda: alertmanager.alerts(device=device), what="the alert in Alertmanager")
    wait(lambda: central.status()["alertmanager_posts"] >= 1, what="the post counted")
    assert central.status()["alertmanager_failed_attempts"] == 0


@pytest.mark.parametrize("url", ["ftp://am:9093", "am:9093", "http://"])
def test_a_bad_url_is_one_line_naming_the_flag(url: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match="^--alertmanager must be an http:// or https:// URL"):
        Central("127.0.0.1", 1, str(tmp_path / "c.db"), alertmanager=url)
    assert main(["central", "--db", str(tmp_path / "c.db"), "--alertmanager", url]) != 0


def test_a_bad_interval_is_one_line_naming_its_flag(tmp_path, capsys) -> None:
    assert main(["central", "--broker", "127.0.0.1", "--db", str(tmp_path / "c.db"),
                 "--alertmanager", "http://127.0.0.1:9093", "--alertmanager-interval",
                 "soon"]) != 0
    assert capsys.readouterr().err == ("edgewatch: error: --alertmanager-interval: duration "
                                       "must be like '30m', '1h' or seconds, got 'soon'\n")


def test_a_resolved_alert_never_ends_before_it_started_nor_in_the_future() -> None:
    row = {"device": "d", "id": "a", "state": "resolved", "kind": "anomaly",
           "severity": "critical", "feature": None, "camera": None, "message": None,
           "ts": 200.0, "starts_at": 100.0, "ends_at": 50.0, "received": 210.0,
           "payload": "{}"}
    alert = alertmanager_alert(row, now=300.0, hold_s=240.0)
    assert alert["startsAt"] == alert["endsAt"] == "1970-01-01T00:01:40.000000Z"
    assert alert["labels"] == {"alertname": "edgewatch_anomaly", "device": "d",
                               "kind": "anomaly", "severity": "critical"}
    future = alertmanager_alert({**row, "ends_at": 900.0}, now=300.0, hold_s=240.0)
    assert future["endsAt"] == "1970-01-01T00:05:00.000000Z"
