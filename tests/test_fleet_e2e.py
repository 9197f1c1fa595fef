"""The fleet workflow end to end: two agents, a central, a webhook, an operator's ack.

Real parts only: two ``edgewatch run`` processes on the real model with black emulated
cameras (camera_fault fires within seconds), a real Mosquitto, the central writing its
SQLite file and posting to a local HTTP receiver, and the CLIs an operator runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import central_helpers
import pytest
from central_helpers import query
from helpers import wait

from agent.cli import main

central_factory = central_helpers.central_factory
webhook = central_helpers.webhook

pytestmark = pytest.mark.integration

DEVICES = ("cam-a", "cam-b")


def _start_agent(tmp_path: Path, write_config: Any, broker: Any, device: str
                 ) -> subprocess.Popen[bytes]:
    cfg = write_config(tmp_path / f"{device}.toml",
                       device={"id": device},
                       source={"uri": "emulated:black?seed=1&size=160x120&onset=0", "fps": 15},
                       store={"path": tmp_path / f"{device}.db", "flush_interval_s": 0.2},
                       rules={"black_for_s": 0.5, "window_s": 1.0},
                       drift={"eval_interval_s": 0.5},
                       mqtt={"enabled": True, "host": broker.host, "port": broker.port,
                             "device_id": device, "heartbeat_interval_s": 2.0})
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _out(capsys: Any, argv: List[str], code: int = 0) -> str:
    assert main(argv) == code, capsys.readouterr().err
    captured = capsys.readouterr()
    return str(captured.out + captured.err)


def _firing(db: Path) -> Dict[str, str]:
    rows = query(db, "SELECT device, id FROM alerts WHERE state='firing' AND "
                     "feature='black_frames'") if db.exists() else []
    return {str(d): str(i) for d, i in rows}


def test_an_alert_fires_reaches_the_webhook_is_acked_from_the_central_and_every_view_agrees(
        broker, tmp_path, write_config, central_factory, webhook, listeners, capsys) -> None:
    webhook.fail_first = 0
    central_factory(broker, webhook=webhook.url)
    db = tmp_path / "central.db"
    agents = [_start_agent(tmp_path, write_config, broker, d) for d in DEVICES]
    try:
        ids = wait(lambda: (lambda f: f if len(f) == 2 else None)(_firing(db)), timeout=60,
                   what="camera_fault firing on both devices, at the central")
        bodies = wait(lambda: [b for b in webhook.received if "cam-a" in json.dumps(b)
                               and "black" in json.dumps(b)], timeout=20,
                      what="the webhook told about cam-a's camera fault")
        assert bodies
        short = ids["cam-a"][:12]  # as fleet alerts and alerts list show it
        listed = _out(capsys, ["fleet", "alerts", "--db", str(db)])
        assert short in listed and ids["cam-b"][:12] in listed

        broker_args = ["--broker", broker.host, "--port", str(broker.port), "--timeout", "10"]
        # cam-a's id sent to cam-b: a clear answer, not a list of features.
        err = _out(capsys, ["fleet", "snooze", "cam-b", short, *broker_args], code=7)
        assert f"no firing alert with id '{short}' on cam-b" in err and "brightness" not in err
        answer = _out(capsys, ["fleet", "ack", "cam-a", short, "--by", "ops@desk",
                               *broker_args])
        assert f"acknowledged {short}" in answer and "by ops@desk" in answer

        # Every view shows it acknowledged, by whom.
        def device_view() -> bool:
            out = _out(capsys, ["alerts", "list", "--db", str(tmp_path / "cam-a.db")])
            return "ops@desk" in out and short in out
        wait(device_view, timeout=15, what="edgewatch alerts list on cam-a shows the ack")

        late = listeners(broker, ["edgewatch/v1/cam-a/alerts/state/#"])
        states = late.wait_for(lambda ms: any(json.loads(m.payload).get("acknowledged_by")
                                              for m in ms if m.payload), timeout=15)
        [state] = [json.loads(m.payload) for m in states if m.retain and m.payload
                   and json.loads(m.payload)["id"] == ids["cam-a"]][-1:]
        assert (state["acknowledged"], state["acknowledged_by"]) == (True, "ops@desk")
        assert state["acknowledged_at"] is not None

        def fleet_view() -> List[Dict[str, Any]]:
            rows = json.loads(_out(capsys, ["fleet", "alerts", "--db", str(db), "--json"]))
            return [r for r in rows if r["acknowledged"]]
        [acked] = wait(fleet_view, timeout=15, what="fleet alerts shows the ack")
        assert (acked["device"], acked["id"], acked["acknowledged_by"]) == (
            "cam-a", ids["cam-a"], "ops@desk")
        table = _out(capsys, ["fleet", "alerts", "--db", str(db)])
        [line_a] = [ln for ln in table.splitlines() if ln.startswith("cam-a")]
        [line_b] = [ln for ln in table.splitlines() if ln.startswith("cam-b")]
        assert "ops@desk" in line_a and "ops@desk" not in line_b
        commands = _out(capsys, ["fleet", "commands", "--db", str(db)])
        assert "ops@desk" in commands and "ack" in commands
    finally:
        for proc in agents:
            proc.terminate()
        for proc in agents:
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
