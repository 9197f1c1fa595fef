"""``edgewatch alerts``: against a running agent (commands table) and with no agent (offline)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.store import open_db


@pytest.mark.integration
def test_alerts_cli_talks_to_the_running_agent(tmp_path: Path, write_config: Any,
                                               capsys: Any) -> None:
    db = tmp_path / "live.db"
    cfg = write_config(tmp_path / "live.toml",
                       source={"uri": "emulated:black?seed=1&size=320x240&onset=0", "fps": 30},
                       store={"path": db, "flush_interval_s": 0.2},
                       rules={"black_for_s": 0.5, "window_s": 1.0},
                       drift={"eval_interval_s": 0.5})
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        alert_id = None
        while time.time() < deadline and alert_id is None:
            time.sleep(0.5)
            if db.exists():
                conn = sqlite3.connect(db)
                try:
                    row = conn.execute("SELECT id FROM alerts WHERE feature = 'black_frames' "
                                       "AND state = 'firing'").fetchone()
                except sqlite3.OperationalError:
                    row = None
                conn.close()
                alert_id = row[0] if row else None
        assert alert_id, "the black camera should have fired camera_fault/black_frames"
        assert main(["alerts", "list", "--db", str(db)]) == 0
        assert alert_id[:12] in capsys.readouterr().out
        assert main(["alerts", "ack", alert_id[:12], "--db", str(db)]) == 0
        out = capsys.readouterr().out
        assert '"ok": true' in out and alert_id in out and "not answering" not in out
        assert main(["alerts", "ack", "nope", "--db", str(db)]) == 1
        assert "no firing alert" in capsys.readouterr().out
        assert main(["alerts", "disable", "brightness", "--db", str(db)]) == 0
        assert main(["alerts", "set", "contrast", "0.5", "--db", str(db)]) == 0
        assert main(["alerts", "snooze", "anomaly", "--for", "30m", "--db", str(db)]) == 0
        capsys.readouterr()
        assert main(["alerts", "list", "--db", str(db), "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        controls = {(c["kind"], c["target"]) for c in listed["controls"]}
        assert {("ack", listed["alerts"][0]["fingerprint"]), ("disable", "brightness"),
                ("threshold", "contrast"), ("snooze", "anomaly")} <= controls
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_alerts_cli_without_an_agent_saves_controls(tmp_path: Path, capsys: Any) -> None:
    db = tmp_path / "off.db"
    open_db(str(db)).close()
    assert main(["alerts", "snooze", "data_drift", "--for", "1h", "--db", str(db)]) == 0
    assert "agent not answering" in capsys.readouterr().out
    conn = sqlite3.connect(db)
    (until,) = conn.execute("SELECT until FROM controls WHERE kind = 'snooze' AND "
                            "target = 'data_drift'").fetchone()
    assert 3500 < until - time.time() <= 3600
    assert conn.execute("SELECT count(*) FROM commands").fetchone()[0] == 0  # withdrawn
