"""Webhook formats chosen per webhook (json, slack, generic), each delivered on its own."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import central_helpers
import pytest
from helpers import make_alert, wait

from agent.central import Central
from agent.central.config import load_central_config
from agent.central.formats import GENERIC_KEYS, generic_body, slack_body
from agent.central.notify import parse_webhook, webhook_targets
from agent.central.store import CentralStore
from agent.cli import main
from agent.errors import ConfigError

central_factory = central_helpers.central_factory


class Receiver:
    """A local HTTP server keeping the JSON bodies POSTed to it; fails the first ``fail``."""

    def __init__(self, fail: int = 0) -> None:
        self.bodies: List[Any] = []
        self.fail, self.attempts = fail, 0
        self.cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.cond:
                    receiver.attempts += 1
                    ok = receiver.attempts > receiver.fail
                    if ok:
                        receiver.bodies.append(json.loads(body))
                        receiver.cond.notify_all()
                self.send_response(200 if ok else 503)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 15.0) -> List[Any]:
        """The first ``n`` bodies, waiting for them."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.bodies) >= n, timeout), self.bodies
            return list(self.bodies)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Any]:
    """``make(fail=0)``: a started :class:`Receiver`, closed after the test."""
    made: List[Receiver] = []

    def make(fail: int = 0) -> Receiver:
        made.append(Receiver(fail))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _alert(seq: int, **kw: Any) -> Dict[str, Any]:
    return {**make_alert(seq, device="cam-7", **kw), "message": "brightness <http://x|moved>"}


def test_each_webhook_gets_its_format_and_a_failing_one_holds_up_no_other(
        broker, listeners, central_factory, receivers) -> None:
    plain, slack, generic = receivers(), receivers(fail=2), receivers()
    central = central_factory(broker, webhook=plain.url,
                              webhooks=[f"slack={slack.url}", f"generic={generic.url}"],
                              webhook_backoff_s=0.05)
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/cam-7/alerts", json.dumps(_alert(1)))
    [body] = plain.wait_for(1)
    assert body["alert"]["id"] == "a0001" and body["text"].startswith("[WARNING] cam-7/cam0")
    [event] = generic.wait_for(1)[0]["events"]
    assert list(event) == list(GENERIC_KEYS)
    assert (event["event"], event["status"], event["device"], event["alert_id"]) == (
        "alert", "firing", "cam-7", "a0001")
    assert event["what"] == "data drift on brightness: psi 0.4 (threshold 0.25)"
    assert event["starts_at"] == "2023-11-14T22:13:21Z" and event["ends_at"] is None
    [message] = slack.wait_for(1)  # after two failures, retried on its own
    text = message["text"]
    lines = text.splitlines()
    assert lines[0] == "*[WARNING] data drift on brightness* on cam-7/cam0 (firing)"
    assert lines[1] == "brightness &lt;http://x|moved&gt;"  # the device's own sentence
    assert "Measured: psi 0.4 (threshold 0.25)" in lines
    assert "Expected: mean 120" in text and "Timeframe: 60 s (600 frames)" in text
    assert "<" not in text and "&lt;http://x|moved&gt;" in text  # a device cannot link
    assert message["blocks"][0]["text"]["text"] == text
    assert slack.attempts == 3 and len(plain.bodies) == len(generic.bodies) == 1
    assert [w["format"] for w in central.status()["webhooks"]] == ["json", "slack", "generic"]


def test_a_group_is_one_call_in_every_format(broker, listeners, central_factory,
                                             receivers) -> None:
    slack, generic = receivers(), receivers()
    central_factory(broker, webhooks=[f"slack={slack.url}", f"generic={generic.url}"],
                    group_wait_s=1.0)
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/cam-7/alerts", json.dumps(_alert(1)))
    pub.publish("edgewatch/v1/cam-7/alerts",
                json.dumps(_alert(1, fingerprint="ffee", alert_id="b0001")))
    [body] = generic.wait_for(1)
    assert body["count"] == 2 and body["group"] == "alert/firing/data_drift"
    assert sorted(e["alert_id"] for e in body["events"]) == ["a0001", "b0001"]
    [message] = slack.wait_for(1)
    assert message["text"].startswith("[FIRING] data_drift: 2 alerts on 1 devices: cam-7")


def test_device_offline_in_the_flat_format() -> None:
    body = {"text": "[OFFLINE] cam-3: last will", "device": {
        "device": "cam-3", "state": "offline", "reason": "last will", "ts": 1700000000.0}}
    [event] = generic_body("device/offline", [body])["events"]
    assert {k: v for k, v in event.items() if v is not None} == {
        "event": "device", "status": "offline", "device": "cam-3", "reason": "last will",
        "ts": 1700000000.0, "starts_at": "2023-11-14T22:13:20Z",
        "summary": "[OFFLINE] cam-3: last will"}
    text = slack_body(None, [body])["text"]
    assert text == "*[OFFLINE]* cam-3: last will (at 2023-11-14 22:13:20 UTC)"


@pytest.mark.parametrize("text, fmt, url", [
    ("https://hooks.slack.com/services/T/B/X", "json", "https://hooks.slack.com/services/T/B/X"),
    ("slack=https://hooks.slack.com/services/T/B/X", "slack",
     "https://hooks.slack.com/services/T/B/X"),
    ("generic=http://h/x?a=b", "generic", "http://h/x?a=b"),
    ("http://h/x?format=slack", "json", "http://h/x?format=slack"),
])
def test_format_equals_url(text: str, fmt: str, url: str) -> None:
    target = parse_webhook(text)
    assert (target.format, target.url) == (fmt, url)


@pytest.mark.parametrize("texts, message", [
    (["xml=http://h/x"], "--webhook has an unknown format 'xml' in FORMAT=URL (valid: json, "
                         "slack, generic)"),
    (["slack=ftp://h/x"], "--webhook must be an http:// or https:// URL"),
    (["http://h/x", "slack=http://h/x"], "--webhook gives the same URL http://h/… twice"),
])
def test_bad_webhooks_are_one_line_naming_the_flag(texts: List[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        webhook_targets(texts)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_config_file_and_cli(tmp_path: Path) -> None:
    good = tmp_path / "central.toml"
    good.write_text('[central]\nwebhook = "slack=https://hooks.example/a"\n'
                    'webhooks = ["generic=https://b.example/x", "https://c.example/y"]\n')
    central = load_central_config(str(good)).central
    assert central.webhook == "slack=https://hooks.example/a" and len(central.webhooks) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[central]\nwebhooks = ["teams=https://b.example/x"]\n')
    with pytest.raises(ConfigError, match="bad.toml: central.webhook: has an unknown format 'teams'"):
        load_central_config(str(bad))
    assert main(["central", "--db", str(tmp_path / "c.db"), "--webhook", "xml=http://h/"]) != 0
    with pytest.raises(ConfigError, match="unknown format"):
        Central("127.0.0.1", 1, str(tmp_path / "c.db"), webhooks=["xml=http://h/"])


def test_fleet_shows_each_output_and_which_is_failing(broker, listeners, central_factory,
                                                      receivers, tmp_path: Path, capsys) -> None:
    good = receivers()
    central_factory(broker, webhooks=[f"slack={good.url}"], alertmanager="http://127.0.0.1:9/",
                    alertmanager_interval_s=0.2)
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish("edgewatch/v1/cam-7/alerts", json.dumps(_alert(1)))
    good.wait_for(1)

    def shown() -> str:
        assert main(["fleet", "--db", str(tmp_path / "central.db")]) == 0
        return str(capsys.readouterr().out)

    # The running central saves its status every few seconds: wait for one after a failure.
    out = wait(lambda: next((o for o in [shown()] if "FAILING" in o), ""), timeout=20,
               what="the saved status shows the failing Alertmanager")
    port = good.url.split(":")[2].split("/")[0]
    assert f"  webhook http://127.0.0.1:{port}/… (slack): 1 sent\n" in out
    assert "  alertmanager http://127.0.0.1:9/…: 0 sent, FAILING (" in out


def test_a_notification_queued_before_several_webhooks_goes_to_the_first(
        broker, central_factory, receivers, tmp_path: Path) -> None:
    store = CentralStore(str(tmp_path / "central.db"))
    with store.transaction():  # as an older central queued it: no target
        store.enqueue("device", "device/offline", "cam-1", {"text": "[OFFLINE] cam-1: x"},
                      time.time())
    store.close()
    first, second = receivers(), receivers()
    central_factory(broker, webhooks=[first.url, f"generic={second.url}"])
    assert first.wait_for(1) == [{"text": "[OFFLINE] cam-1: x"}]
    assert second.bodies == []
