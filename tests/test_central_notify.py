"""What the operator hears: durable webhook notifications, device changes, redacted URLs."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import broker as broker_fixtures
import central_helpers
import pytest
from central_helpers import heartbeat, query
from helpers import make_alert, wait

from agent.central import check_url, redact
from agent.errors import ConfigError

central_factory = central_helpers.central_factory
webhook = central_helpers.webhook

P = "edgewatch/v1"
SECRET = "T0KEN-abc123"


class LateHook:
    """A webhook receiver started later, on a port chosen now (an outage, then recovery)."""

    def __init__(self) -> None:
        self.port = broker_fixtures.free_port()
        self.url = f"http://127.0.0.1:{self.port}/services/{SECRET}"
        self.received: List[Dict[str, Any]] = []
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def late_hook() -> Iterator[LateHook]:
    hook = LateHook()
    yield hook
    hook.stop()


def pending(db: Path) -> List[tuple]:
    return query(db, "SELECT kind, device, attempts FROM notifications")


def test_undelivered_notifications_wait_in_the_database_until_the_webhook_is_back(
        broker, tmp_path, central_factory, listeners, late_hook, caplog) -> None:
    caplog.set_level(logging.INFO)
    central = central_factory(broker, webhook=late_hook.url, webhook_backoff_s=0.02)
    db = tmp_path / "central.db"
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish(f"{P}/cam-a/alerts", json.dumps(make_alert(1, device="cam-a")))
    # Far more failed attempts than the old fixed five, and the notification still waits.
    wait(lambda: [a for _, _, a in pending(db)] and pending(db)[0][2] >= 8,
               what="eight failed attempts")
    assert pending(db)[0][:2] == ("alert", "cam-a")
    assert central.status()["webhook_failing"] is True
    late_hook.start()
    wait(lambda: len(late_hook.received) == 1, what="delivered once the webhook is back")
    wait(lambda: pending(db) == [], what="delivered notification removed")
    assert late_hook.received[0]["alert"]["id"] == "a0001"
    assert central.status()["webhook_sent"] == 1
    logs = caplog.text
    assert "webhook http://127.0.0.1:" in logs and "failing" in logs
    assert SECRET not in logs  # the URL's token never reaches the log


def test_notifications_expire_when_the_webhook_stays_down(
        broker, tmp_path, central_factory, listeners, late_hook, caplog) -> None:
    central = central_factory(broker, webhook=late_hook.url, webhook_backoff_s=0.05,
                              notify_expire_s=0.5)
    db = tmp_path / "central.db"
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish(f"{P}/cam-a/alerts", json.dumps(make_alert(1, device="cam-a")))
    wait(lambda: central.status()["webhook_expired"] == 1, what="expired")
    assert pending(db) == []
    assert "1 notification(s) undelivered for 0 s expired" in caplog.text
    assert SECRET not in caplog.text


def test_device_offline_and_back_online_reach_the_webhook(
        broker, tmp_path, central_factory, listeners, webhook) -> None:
    webhook.fail_first = 0
    central_factory(broker, webhook=webhook.url)
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish(f"{P}/cam-a/heartbeat", json.dumps(heartbeat("cam-a", 1)))  # first sighting
    pub.publish(f"{P}/cam-a/status", "offline", retain=True)  # its last will
    pub.publish(f"{P}/cam-a/heartbeat", json.dumps(heartbeat("cam-a", 2)))
    got = webhook.wait_for(2)
    assert [b["text"] for b in got] == ["[OFFLINE] cam-a: last will or clean shutdown",
                                        "[ONLINE] cam-a: heartbeat"]
    assert got[0]["device"]["state"] == "offline" and got[1]["device"]["state"] == "online"
    wait(lambda: pending(tmp_path / "central.db") == [], what="delivered ones removed")


def test_overdue_heartbeat_reaches_the_webhook(broker, tmp_path, central_factory, listeners,
                                               webhook) -> None:
    webhook.fail_first = 0
    central_factory(broker, webhook=webhook.url, offline_after=0.5)
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish(f"{P}/cam-a/heartbeat", json.dumps(heartbeat("cam-a", 1)))
    got = webhook.wait_for(1)
    assert got[0]["text"] == "[OFFLINE] cam-a: heartbeat overdue (> 0 s)"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "htps://hooks.example/x", "ftp://h/x",
                                 "hooks.example/x", "http:///nohost", "http://h:99999/x"])
def test_webhook_url_must_be_http_or_https(url: str) -> None:
    with pytest.raises(ConfigError, match="must be an http:// or https:// URL"):
        check_url(url)


def test_redact_keeps_scheme_host_and_port_only() -> None:
    assert redact(f"https://hooks.slack.com:8443/services/{SECRET}?x=1") == \
        "https://hooks.slack.com:8443/…"
    assert check_url("https://hooks.example/x") == "https://hooks.example/x"


def test_a_storm_of_devices_going_dark_is_one_webhook_call(broker, tmp_path, central_factory,
                                                            listeners, webhook) -> None:
    webhook.fail_first = 0
    n = 40
    central = central_factory(broker, webhook=webhook.url, group_wait_s=3.0)
    pub = listeners(broker, [])
    pub.wait_connected()
    for i in range(n):  # first sightings: online, nothing to tell
        pub.publish(f"{P}/cam-{i:02d}/heartbeat", json.dumps(heartbeat(f"cam-{i:02d}", 1)))
    wait(lambda: central.status()["heartbeats"] == n, what="every device seen")
    for i in range(n):  # dusk: every last will at once
        pub.publish(f"{P}/cam-{i:02d}/status", "offline")
    [body] = webhook.wait_for(1)
    wait(lambda: pending(tmp_path / "central.db") == [], what="the group delivered")
    assert len(webhook.received) == 1
    assert body["group"] == "device/offline" and body["count"] == n
    assert body["devices"] == [f"cam-{i:02d}" for i in range(n)]
    assert body["text"].splitlines()[0].startswith(f"[OFFLINE] {n} devices: cam-00, cam-01")
    assert "(+20 more)" in body["text"].splitlines()[0]
    status = central.status()
    assert (status["webhook_sent"], status["webhook_notifications_sent"]) == (1, n)
