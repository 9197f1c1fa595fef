"""The device's link against a real Mosquitto that refuses: PUBACK reason codes, packet size.

The broker runs with the example ACL of configs/mosquitto/acl; nothing is mocked.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from broker import make_password_file
from helpers import link_config, make_alert, outbox_depth, put_alerts, wait

from agent.alerts import AlertManager
from agent.mqtt import MqttLink
from agent.store import Store

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ACL = REPO / "configs" / "mosquitto" / "acl"

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path):
    """A started real Store, closed at teardown."""
    s = Store(str(tmp_path / "agent.db"), flush_interval_s=0.2).start()
    yield s
    s.close()


def test_refused_publishes_keep_the_outbox_rows_are_logged_once_and_counted(
        broker_factory, tmp_path, store, caplog) -> None:
    pw = make_password_file(tmp_path / "passwd", {"cam-a": "pa", "camera-1": "pb"})
    secure = broker_factory(password_file=pw, acl_file=EXAMPLE_ACL)
    # The username does not match the device id: the example ACL lets it write nothing.
    link = MqttLink(link_config(secure, device="cam-a", username="camera-1", password="pb"),
                    store)
    caplog.set_level(logging.ERROR, logger="agent.mqtt")
    link.start()
    try:
        wait(lambda: link.connected, what="link connected")
        put_alerts(store, [make_alert(i, device="cam-a") for i in (1, 2, 3)], device="cam-a")
        wait(lambda: link.status()["refused"] >= 6, what="six PUBACKs refused")
        status = link.status()
        assert outbox_depth(store) == 6  # every row kept: refused is not delivered
        assert status["published"] == 0
        assert status["last_refusal"]["code"] == 135
        assert "authori" in status["last_refusal"]["reason"].lower()
        assert status["refused_pending"] == 6
        lines = [r.getMessage() for r in caplog.records if "refused outbox row" in r.getMessage()]
        assert len(lines) == 1, lines  # one line for the reason, not one per row
        assert "135" in lines[0] and "username must equal the device id 'cam-a'" in lines[0]
        # Persisting refusals raise a device_health alert (the heartbeat worker feeds it).
        fired = []
        alerts = AlertManager(device="cam-a", camera="cam", model={}, emit=fired.append)
        first = status["last_refusal"]["ts"]
        assert alerts.update([link.refusal_observation(first + 1)], first + 1) == []
        alerts.update([link.refusal_observation(first + 61)], first + 61)
        assert [(r.kind, r.feature, r.state) for r in fired] == [
            ("device_health", "mqtt_refused", "firing")]
        assert "username is the device id 'cam-a'" in fired[0].message
    finally:
        link.close()

    # The same rows, sent by a link whose username is the device id, go through.
    good = MqttLink(link_config(secure, device="cam-a", username="cam-a", password="pa"), store)
    good.start()
    try:
        wait(lambda: outbox_depth(store) == 0, what="outbox delivered with the right username")
        assert good.status()["refused"] == 0
    finally:
        good.close()


_AGENT_LINK = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from agent.mqtt import MqttConfig, MqttLink
    from agent.store import Store
    store = Store({db!r}).start()
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port={port}, device_id="cam-a",
                     max_payload_kb=64)
    link = MqttLink(cfg, store, command_handler=lambda verb, payload: {{"verb": verb,
                    "ok": True, "size": len(payload)}})
    link.start()
    print("ready", flush=True)
    sys.stdin.read()
    link.close()
    store.close()
""")


def _rss_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for pid {pid}")


def test_a_huge_command_never_reaches_the_agent(broker, tmp_path, listeners) -> None:
    script = _AGENT_LINK.format(repo=str(REPO), db=str(tmp_path / "a.db"), port=broker.port)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        broker.wait_suback("cam-a")
        listener = listeners(broker, ["edgewatch/v1/cam-a/cmd/result"])
        listener.wait_connected()
        before = _rss_kb(proc.pid, "VmRSS")
        listener.publish("edgewatch/v1/cam-a/cmd/ping", b"x" * (60 * 1024 * 1024), qos=0)
        listener.publish("edgewatch/v1/cam-a/cmd/ping", b"{}", qos=1)
        msgs = listener.wait_for(lambda ms: len(ms) >= 1, timeout=60)
        # Had the big one reached the agent, its answer would come first (the broker keeps
        # order): the broker dropped it, since the agent announced its Maximum Packet Size.
        assert b'"size":2' in msgs[0].payload, msgs[0].payload[:200]
        peak = _rss_kb(proc.pid, "VmHWM")
        assert peak - before < 20 * 1024, f"agent grew from {before} kB to {peak} kB"
    finally:
        proc.kill()
        proc.communicate(timeout=10)
